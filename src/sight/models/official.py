"""The official model files Sight can provision by name: Ultralytics detection exports, and the PP-OCRv6 sizes
rapidocr publishes beside the small ones its wheel ships. The one place their URLs and hashes live: the
default detector, ``sight models pull``, ``sight serve --pull`` and ``SIGHT_OCR__DETECTOR=medium`` read
these tables.

>>> OFFICIAL["yolo11n"].source
'https://github.com/ultralytics/assets/releases/download/v8.4.0/yolo11n.onnx#sha256=634279b4...'
>>> OCR_FILES["det", "medium"].source
'https://www.modelscope.cn/models/RapidAI/RapidOCR/resolve/v3.10.0/onnx/PP-OCRv6/det/PP-OCRv6_det_medium.onnx#sha256=92078b73...'
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


# rapidocr 3.10's own table (rapidocr/default_models.yaml): the URLs its downloader uses, with their hashes.
OCR_RELEASE = "https://www.modelscope.cn/models/RapidAI/RapidOCR/resolve/v3.10.0/onnx/PP-OCRv6"
OCR_LICENSE = "Apache-2.0"  # PaddleOCR's models, as rapidocr publishes them
OCR_SIZES = ("tiny", "small", "medium")  # small: in rapidocr's wheel, never downloaded


@dataclass(frozen=True, slots=True)
class OcrFile:
    """One PP-OCRv6 file that rapidocr's wheel does not ship: detection or recognition, its size, where it is."""

    part: str  # det or rec
    size: str  # tiny or medium
    url: str
    sha256: str

    @property
    def source(self) -> str:
        return f"{self.url}#sha256={self.sha256}"


OCR_FILES: dict[tuple[str, str], OcrFile] = {
    (f.part, f.size): f
    for f in (
        OcrFile("det", "tiny", f"{OCR_RELEASE}/det/PP-OCRv6_det_tiny.onnx",
                "f42c0fbd294d95eac1a550e131b277dac97462c8025fa4b6c3cec1b7894bd3d5"),
        OcrFile("det", "medium", f"{OCR_RELEASE}/det/PP-OCRv6_det_medium.onnx",
                "92078b7355007ccfffcd4c8cd441a3afd4538904d06881b29a155e1e679907c2"),
        OcrFile("rec", "tiny", f"{OCR_RELEASE}/rec/PP-OCRv6_rec_tiny.onnx",
                "e16e242de5937ad92609223f19bc2aff3727ee40b095f996907c24749bad251b"),
        OcrFile("rec", "medium", f"{OCR_RELEASE}/rec/PP-OCRv6_rec_medium.onnx",
                "eef444829dbbe18d7fea59a3f6eb75647518d2b3a9568d27c92e42940204894b"),
    )
}
