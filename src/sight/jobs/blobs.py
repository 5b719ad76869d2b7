"""Content-addressed image bytes on disk: each distinct image is stored once, named by its SHA-256.

A blob may be shared by many requests, across batches and teams, so the store never decides alone what to
delete: the caller names blobs no row references, and the store removes those not touched since a cutoff.
Storing an image that is already here touches its file, which is what keeps an add in flight (blobs
written, rows not yet committed) safe from a concurrent sweep.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from collections.abc import Iterable
from pathlib import Path

from sight.errors import NotFoundError

# Files that are not blobs: half-written ones (.tmp-, a crash mid-put) and ones being removed (.gone-).
_SCRAP_PREFIXES = (".tmp-", ".gone-")


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, sha: str) -> Path:
        return self.root / sha[:2] / sha

    def put(self, data: bytes) -> str:
        """Store ``data`` (atomically, durably) and return its SHA-256. Blocking."""
        sha = hashlib.sha256(data).hexdigest()
        path = self._path(sha)
        try:
            # Already here: mark it in use now, so a sweep does not take it before our rows are committed.
            os.utime(path)
            return sha
        except FileNotFoundError:
            pass
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

    def untouched_since(self, cutoff: float) -> list[str]:
        """Blobs last written or stored before ``cutoff`` (a ``time.time()``); scrap files that old are
        removed on the way. Blocking."""
        found: list[str] = []
        if not self.root.is_dir():
            return found
        for shard in os.scandir(self.root):
            if not shard.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(shard.path):
                try:
                    if not entry.is_file(follow_symlinks=False) or entry.stat().st_mtime >= cutoff:
                        continue
                    if entry.name.startswith(_SCRAP_PREFIXES):
                        os.unlink(entry.path)
                    elif len(entry.name) == 64 and entry.name.startswith(shard.name):
                        found.append(entry.name)
                except FileNotFoundError:
                    continue  # removed meanwhile (by another process's sweep, say)
        return found

    def remove_untouched(self, shas: Iterable[str], cutoff: float) -> int:
        """Remove these blobs unless touched at or after ``cutoff``; returns how many went. Blocking.

        The file is first renamed away, atomically, and its time checked after: a ``put`` that touched it
        before the rename is seen (the blob is put back), one that comes after finds no file and writes it
        anew. So a blob an add is storing right now is never lost.
        """
        removed = 0
        for sha in set(shas):
            path = self._path(sha)
            gone = path.with_name(f".gone-{sha}-{secrets.token_hex(4)}")
            try:
                os.rename(path, gone)
            except FileNotFoundError:
                continue
            try:
                if gone.stat().st_mtime >= cutoff:
                    os.replace(gone, path)  # in use again; a put meanwhile wrote the same bytes, if anything
                    continue
                gone.unlink()
            except FileNotFoundError:
                continue  # another sweep took it for a leftover and removed it
            removed += 1
        return removed
