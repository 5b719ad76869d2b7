"""The blob store contract (``BlobStore``) and what both backends share: names, keys, listings.

Content-addressed bytes of batch images and large batch results (``SIGHT_JOBS__INLINE_RESULT_BYTES``): each
distinct content is stored once, named by its SHA-256, in a folder (``sight.storage.blobs.file``) or in a bucket
of any S3-compatible store (``sight.storage.blobs.s3``). A blob may be shared by many requests, across batches
and teams (an image and a result of the same bytes are one blob), so a store never decides alone what to
delete: the sweep (``sight.batches.sweep``) asks the database first. Storing content that is already here
touches it, which is what keeps an add or a completion in flight (blobs written, rows not yet committed) safe
from a concurrent sweep.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Protocol

GONE = "the stored image of this request is gone"


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
