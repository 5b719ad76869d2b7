"""Blobs as files below a folder (``file://PATH``, the default: ``<SIGHT_DATA_DIR>/blobs``), written atomically
and durably; a touch is ``os.utime``."""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from functools import partial
from pathlib import Path

import anyio

from sight.errors import NotFoundError
from sight.storage.blobs.base import GONE, BlobInfo, blob_key, blob_name, is_blob_key

# Files that are not blobs: half-written ones (.tmp-, a crash mid-put) and ones being removed (.gone-, a crash
# mid-sweep). A put or a removal takes seconds at most, so the listing takes those an hour old for leftovers.
_SCRAP_PREFIXES = (".tmp-", ".gone-")
LEFTOVER_SECONDS = 3600.0


class FileBlobStore:
    """Blobs as files below ``root`` (``root/ab/ab12...``), written atomically and durably; a touch is
    ``os.utime``. Blocking file work runs in worker threads."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"FileBlobStore({str(self.root)!r})"

    def _path(self, sha: str) -> Path:
        return self.root / blob_key(sha)

    async def put(self, data: bytes) -> str:
        return await anyio.to_thread.run_sync(self._put, data)

    def _put(self, data: bytes) -> str:
        sha = blob_name(data)
        path = self._path(sha)
        try:
            os.utime(path)  # already here: in use now, so a sweep does not take it before our rows are committed
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

    async def get(self, sha: str) -> bytes:
        try:
            return await anyio.to_thread.run_sync(self._path(sha).read_bytes)
        except FileNotFoundError as exc:
            raise NotFoundError(GONE) from exc

    async def exists(self, sha: str) -> bool:
        return await anyio.to_thread.run_sync(self._path(sha).is_file)

    async def delete(self, sha: str) -> None:
        await anyio.to_thread.run_sync(partial(self._path(sha).unlink, missing_ok=True))

    async def listing(self) -> AsyncIterator[BlobInfo]:
        """Blobs shard by shard; leftovers an hour old (see ``_SCRAP_PREFIXES``) are removed on the way."""
        for shard in await anyio.to_thread.run_sync(self._shards):
            for blob in await anyio.to_thread.run_sync(self._scan, shard):
                yield blob

    def _shards(self) -> list[str]:
        try:
            with os.scandir(self.root) as entries:
                return sorted(e.path for e in entries if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []

    @staticmethod
    def _scan(shard: str) -> list[BlobInfo]:
        found: list[BlobInfo] = []
        leftover = time.time() - LEFTOVER_SECONDS
        try:
            entries = list(os.scandir(shard))
        except FileNotFoundError:
            return found
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                modified = entry.stat().st_mtime
                if entry.name.startswith(_SCRAP_PREFIXES):
                    if modified < leftover:
                        os.unlink(entry.path)
                elif is_blob_key(os.path.basename(shard), entry.name):
                    found.append(BlobInfo(entry.name, modified))
            except FileNotFoundError:
                continue  # removed meanwhile (by another process's sweep, say)
        return found

    async def remove_untouched(self, shas: Iterable[str], cutoff: float) -> int:
        return await anyio.to_thread.run_sync(self._remove_untouched, set(shas), cutoff)

    def _remove_untouched(self, shas: set[str], cutoff: float) -> int:
        # The file is first renamed away, atomically, and its time checked after: a put that touched it before
        # the rename is seen (the blob is put back), one that comes after finds no file and writes it anew. So
        # a blob an add is storing right now is never lost.
        removed = 0
        for sha in shas:
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
