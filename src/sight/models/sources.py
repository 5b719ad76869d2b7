"""Where a model file comes from: a local path, an ``http(s)`` URL pinned by sha256, or a Hugging Face file.

>>> ModelSource.parse("hf://acme/helmets@v2/yolo11s.onnx").repo
'acme/helmets'
>>> str(ModelSource.parse("https://user:secret@models.internal/parts.onnx?token=x#sha256=" + "0" * 64))
'https://models.internal/parts.onnx'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from sight.errors import InvalidInputError
from sight.models.official import LICENSE, LICENSE_NOTE, official_for_url

SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where a model file comes from. ``parse`` takes what settings and the registry file hold:

    - a local path: ``/models/yolo11n.onnx``
    - a URL pinned by its hash: ``https://host/yolo11n.onnx#sha256=<64 hex>`` (operator-configured, so
      loopback and private mirrors are allowed, unlike users' image URLs)
    - a Hugging Face file: ``hf://owner/repo/path/model.onnx``, ``hf://owner/repo@revision/model.onnx``
      (optionally ``#sha256=<hex>``), through ``pip install 'sight[hf]'``
    """

    kind: Literal["path", "http", "hf"]
    location: str  # the path, the URL without its fragment, or the file's path inside the repo
    sha256: str | None = None
    size: int | None = None  # known exactly for official models
    license: str | None = None
    repo: str | None = None  # hf: owner/name
    revision: str | None = None  # hf: branch, tag or commit

    @classmethod
    def parse(cls, text: str) -> ModelSource:
        body, _, fragment = text.partition("#")
        sha = parse_qs(fragment).get("sha256", [None])[0]
        if sha is not None and not SHA256.match(sha.lower()):
            raise InvalidInputError(f"model source {redact(body)}: sha256 must be 64 hex digits")
        sha = sha.lower() if sha else None
        if body.startswith(("http://", "https://")):
            if sha is None:
                raise InvalidInputError(
                    f"model URL {redact(body)} must be pinned by its hash: append #sha256=<64 hex digits> "
                    "(sha256sum FILE prints it)")
            official = official_for_url(body)
            exact = official if official is not None and official.sha256 == sha else None
            return cls("http", body, sha, size=exact.size if exact else None,
                       license=official.license if official else None)
        if body.startswith("hf://"):
            parts = body.removeprefix("hf://").split("/")
            if len(parts) < 3 or not all(parts):
                raise InvalidInputError(f"{body}: Hugging Face sources are hf://owner/repo[@revision]/path/file.onnx")
            repo_name, _, revision = parts[1].partition("@")
            return cls("hf", "/".join(parts[2:]), sha, repo=f"{parts[0]}/{repo_name}", revision=revision or None)
        if fragment and sha is None:
            raise InvalidInputError(f"model source {text}: only #sha256=<hex> may follow '#'")
        return cls("path", body, sha)

    def __str__(self) -> str:
        """For messages and logs: a URL without its userinfo, query and fragment (they may hold credentials)."""
        if self.kind == "hf":
            return f"hf://{self.repo}{'@' + self.revision if self.revision else ''}/{self.location}"
        return redact(self.location) if self.kind == "http" else self.location


def redact(text: str) -> str:
    """A URL (or a model source string) without userinfo, query and fragment: safe to show and log."""
    if not text.startswith(("http://", "https://")):
        return text
    parts = urlsplit(text)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}{parts.path}"


def license_line(source: ModelSource) -> str | None:
    """The licence sentence to show once when ``source`` is pulled (None when unknown)."""
    if source.license is None:
        return None
    return LICENSE_NOTE if source.license == LICENSE else f"licensed {source.license}"
