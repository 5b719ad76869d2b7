"""The official Ultralytics detection exports Sight can provision by name. The one place their URLs and
hashes live: the default detector, ``sight models pull`` and ``sight serve --pull`` all read this table.

>>> OFFICIAL["yolo11n"].source
'https://github.com/ultralytics/assets/releases/download/v8.4.0/yolo11n.onnx#sha256=634279b4...'
"""

from __future__ import annotations

from dataclasses import dataclass

RELEASE = "https://github.com/ultralytics/assets/releases/download/v8.4.0"
LICENSE = "AGPL-3.0"
LICENSE_NOTE = (
    "Ultralytics YOLO weights are licensed AGPL-3.0 (https://www.ultralytics.com/license): serving them in a "
    "product whose source you do not publish needs an Ultralytics Enterprise licence."
)


@dataclass(frozen=True, slots=True)
class OfficialModel:
    """One official ONNX export: where it is, its exact size and sha256, and its licence."""

    name: str
    url: str
    size: int
    sha256: str
    license: str = LICENSE

    @property
    def source(self) -> str:
        """The model source string (``url#sha256=...``) the catalog and settings take."""
        return f"{self.url}#sha256={self.sha256}"


OFFICIAL: dict[str, OfficialModel] = {
    m.name: m
    for m in (
        OfficialModel("yolo11n", f"{RELEASE}/yolo11n.onnx", 10_930_182,
                      "634279b40c07c6391472c51ad45b81ebc48706a9a1fe72dd3396322acd0c053b"),
        OfficialModel("yolo11s", f"{RELEASE}/yolo11s.onnx", 38_051_729,
                      "21d6650c5097610c92c76ce5e4b717976059169eaea4962035b90c6a92c07a8f"),
        OfficialModel("yolo11m", f"{RELEASE}/yolo11m.onnx", 80_673_621,
                      "8a37b5c53ff642831aa454156b548ec2cf2537827445385c3e1c1b276cb666a3"),
    )
}


def official_for_url(url: str) -> OfficialModel | None:
    """The official model a URL (with or without its ``#sha256=`` fragment) downloads, if it is one."""
    bare = url.partition("#")[0]
    return next((m for m in OFFICIAL.values() if m.url == bare), None)
