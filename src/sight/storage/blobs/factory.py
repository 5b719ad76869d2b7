"""Which blob store ``SIGHT_BLOBS__URL`` names, opened.

>>> blobs = open_blob_store(settings)    # SIGHT_BLOBS__URL: file://PATH (the default) or s3://BUCKET/PREFIX
>>> async def round_trip(data: bytes) -> bool:
...     sha = await blobs.put(data)      # the same bytes are one blob, however often they are stored
...     return await blobs.get(sha) == data and sha == await blobs.put(data)
>>> asyncio.run(round_trip(b"an image"))
True
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sight.storage.blobs.base import BlobStore
from sight.storage.blobs.file import FileBlobStore

if TYPE_CHECKING:
    from sight.config import Settings


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
            from sight.storage.blobs.s3 import S3BlobStore
        except ModuleNotFoundError as exc:
            if exc.name != "obstore":
                raise
            raise ModuleNotFoundError(f"SIGHT_BLOBS__URL={url} needs the optional extra: pip install 'sight[s3]'",
                                      name=exc.name) from exc
        # A blob touched within half the grace period is still safe for the other half: no need to write
        # it again (on S3 a touch is an upload).
        return S3BlobStore.from_settings(settings.blobs, refresh_after=settings.jobs.blob_grace_seconds / 2)
    raise ValueError(f"SIGHT_BLOBS__URL must be file://PATH or s3://BUCKET/PREFIX, not {url!r}")
