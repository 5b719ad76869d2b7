"""Content-addressed image bytes on disk: each distinct image is stored once, named by its SHA-256."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from sight.errors import NotFoundError


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, sha: str) -> Path:
        return self.root / sha[:2] / sha

    def put(self, data: bytes) -> str:
        """Store ``data`` (atomically, durably) and return its SHA-256. Blocking."""
        sha = hashlib.sha256(data).hexdigest()
        path = self._path(sha)
        if path.exists():
            return sha
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return sha

    def get(self, sha: str) -> bytes:
        try:
            return self._path(sha).read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError("the stored image of this request is gone") from exc

    def delete_except(self, keep: Iterable[str], candidates: Iterable[str]) -> int:
        """Delete ``candidates`` not in ``keep``; returns how many were removed. Blocking."""
        keep_set = set(keep)
        removed = 0
        for sha in set(candidates) - keep_set:
            try:
                self._path(sha).unlink()
                removed += 1
            except FileNotFoundError:
                pass
        return removed
