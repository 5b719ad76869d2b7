"""Content-addressed bytes of batch images and large batch results (``SIGHT_JOBS__INLINE_RESULT_BYTES``): each
distinct content is stored once, named by its SHA-256, in a folder (``file://``, here) or in a bucket of any
S3-compatible store (``s3://``, :mod:`sight.jobs.s3_blobs`).

A blob may be shared by many requests, across batches and teams (an image and a result of the same bytes are
one blob), so a store never decides alone what to delete: the sweep (``BatchStore.sweep``) lists blobs
untouched since a cutoff, asks the database which of them no request references, and has the store remove
those still untouched. Storing content that is already here touches it, which is what keeps an add or a
completion in flight (blobs written, rows not yet committed) safe from a concurrent sweep.

>>> blobs = open_blob_store(settings)    # SIGHT_BLOBS__URL: file://PATH (the default) or s3://BUCKET/PREFIX
>>> async def round_trip(data: bytes) -> bool:
...     sha = await blobs.put(data)      # the same bytes are one blob, however often they are stored
...     return await blobs.get(sha) == data and sha == await blobs.put(data)
>>> asyncio.run(round_trip(b"an image"))
True
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import anyio

from sight.errors import NotFoundError

if TYPE_CHECKING:
    from sight.config import Settings

GONE = "the stored image of this request is gone"
# Files that are not blobs: half-written ones (.tmp-, a crash mid-put) and ones being removed (.gone-, a crash
# mid-sweep). A put or a removal takes seconds at most, so the listing takes those an hour old for leftovers.
_SCRAP_PREFIXES = (".tmp-", ".gone-")
LEFTOVER_SECONDS = 3600.0


def blob_name(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_key(sha: str) -> str:
    """Where a blob lives below the store's root, in both backends: ``ab/ab12...`` (the first two hex digits
    shard it, which keeps folders small and spreads S3's per-prefix request rates)."""
    return f"{sha[:2]}/{sha}"


def is_blob_key(shard: str, name: str) -> bool:
    return len(name) == 64 and name.startswith(shard) and len(shard) == 2 and all(c in "0123456789abcdef"
                                                                                    for c in name)


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """One stored blob as a listing sees it."""

    sha: str
    modified: float  # last written or touched, in seconds since the epoch (as ``time.time()``)


class BlobStore(Protocol):
    """Where batch images and large results live, by content. Every method may run in many processes at once."""

    async def put(self, data: bytes) -> str:
        """Store ``data`` unless it is there already, and return its SHA-256. Either way the blob counts as
        touched now, so a sweep running meanwhile keeps it (the add storing it has not committed its rows)."""
        ...

    async def get(self, sha: str) -> bytes:
        """The blob's bytes; ``NotFoundError`` when it is gone."""
        ...

    async def exists(self, sha: str) -> bool: ...

    async def delete(self, sha: str) -> None:
        """Remove the blob whatever its age (one that is not there is fine). The sweep uses
        ``remove_untouched`` instead."""
        ...

    def listing(self) -> AsyncIterator[BlobInfo]:
        """Every blob with the time it was last written or touched, streamed shard by shard or page by page."""
        ...

    async def remove_untouched(self, shas: Iterable[str], cutoff: float) -> int:
        """Remove these blobs unless touched at or after ``cutoff`` (a ``time.time()``); returns how many
        went."""
        ...


def open_blob_store(settings: Settings) -> BlobStore:
    """The store that ``settings.blobs.url`` names: ``file://PATH`` (default: ``file://<data_dir>/blobs``) or
    ``s3://BUCKET/PREFIX``, which needs ``pip install 'sight[s3]'`` (checked here, at start)."""
    url = settings.blobs.url
    if url is None:
        return FileBlobStore(settings.data_dir / "blobs")
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "file" and rest:
        return FileBlobStore(Path(rest))  # file:///srv/blobs, or file://./sight-data/blobs (relative)
    if sep and scheme == "s3" and rest.partition("/")[0]:
        try:
            from sight.jobs.s3_blobs import S3BlobStore
        except ModuleNotFoundError as exc:
            if exc.name != "obstore":
                raise
            raise ModuleNotFoundError(f"SIGHT_BLOBS__URL={url} needs the optional extra: pip install 'sight[s3]'",
                                      name=exc.name) from exc
        # A blob touched within half the grace period is still safe for the other half: no need to write
        # it again (on S3 a touch is an upload).
        return S3BlobStore.from_settings(settings.blobs, refresh_after=settings.jobs.blob_grace_seconds / 2)
    raise ValueError(f"SIGHT_BLOBS__URL must be file://PATH or s3://BUCKET/PREFIX, not {url!r}")


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
