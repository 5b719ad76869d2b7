"""Blobs in a bucket of any S3-compatible store (AWS S3, MinIO, Cloudflare R2, GCS's XML interop), through
obstore (``pip install 'sight[s3]'``; only ``open_blob_store`` imports this module, and only for ``s3://``).

Same layout and contract as the file store: ``PREFIX/ab/ab12...``, one object per distinct image or result, and
the object's LastModified is the time the sweep's grace period counts from.

S3 has no utime: LastModified changes only when the object is written. So the touch that protects an add in
flight is a write of the same bytes, which ``put`` has in hand: a blob written within ``refresh_after``
seconds is left alone (one HEAD), an older one is uploaded again (same key, same bytes, new LastModified). A
copy of the object onto itself would spare the upload, but S3 refuses a self-copy that replaces no metadata,
and obstore's copy sends no metadata directive.

The sweep removes a blob with a HEAD (still older than the cutoff?) and then a DELETE: two requests, where
the file store renames the file away first and checks after. An add that stores this very image between the
two (an orphan no request referenced for the whole grace period, stored again within one round trip) loses
it, and its request fails with ``not_found`` (a completion storing the same result bytes: that result reads
as gone). That is the race this backend accepts: S3 has no delete conditional on LastModified, and an ETag
condition cannot tell a re-upload of the same bytes apart.

Transient failures (5xx, dropped connections, timeouts) are retried by obstore itself, with exponential
backoff, at most ``retries`` times and never past ``retry_timeout``; what still fails then propagates as
obstore's own error (a logged 500 on the API, a lapsed lease and another attempt in the runner).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import anyio
import obstore
from obstore.store import S3Store

from sight.errors import NotFoundError
from sight.storage.blobs.base import GONE, BlobInfo, blob_key, blob_name, is_blob_key

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config

    from sight.config import BlobSettings

REMOVALS_AT_ONCE = 16  # the sweep's HEAD-then-DELETE pairs in flight


def endpoint_for(endpoint_url: str, bucket: str, path_style: bool) -> str:
    """obstore takes the endpoint as given: for virtual-hosted addressing the bucket goes in front of the host
    (as AWS's own SDKs do), for path style the endpoint stays and the bucket follows in the path."""
    if path_style:
        return endpoint_url
    parts = urlsplit(endpoint_url)
    return urlunsplit(parts._replace(netloc=f"{bucket}.{parts.netloc}"))


class S3BlobStore:
    """Blobs as objects of an ``obstore`` S3 store. Build it with ``open_blob_store(settings)``."""

    def __init__(self, store: S3Store, *, refresh_after: float) -> None:
        self._store = store
        self.refresh_after = refresh_after

    @classmethod
    def from_settings(cls, blobs: BlobSettings, *, refresh_after: float) -> S3BlobStore:
        assert blobs.url is not None
        bucket, _, prefix = blobs.url.removeprefix("s3://").partition("/")
        config: S3Config = {"virtual_hosted_style_request": not blobs.force_path_style}
        client: ClientConfig = {"timeout": timedelta(seconds=blobs.timeout)}
        if blobs.endpoint_url:
            config["endpoint"] = endpoint_for(blobs.endpoint_url, bucket, blobs.force_path_style)
            client["allow_http"] = blobs.endpoint_url.startswith("http://")
        if blobs.region:
            config["region"] = blobs.region
        if blobs.access_key_id:
            config["access_key_id"] = blobs.access_key_id
        if blobs.secret_access_key:
            config["secret_access_key"] = blobs.secret_access_key.get_secret_value()
        retry: RetryConfig = {"max_retries": blobs.retries, "retry_timeout": timedelta(seconds=blobs.retry_timeout)}
        try:
            store = S3Store(bucket, prefix=prefix.strip("/") or None, config=config, client_options=client,
                            retry_config=retry)
        except obstore.exceptions.BaseError as exc:  # a setting missing (a secret key without its id, say)
            raise ValueError(f"SIGHT_BLOBS__* do not describe a usable S3 store: {exc}") from exc
        return cls(store, refresh_after=refresh_after)

    def __repr__(self) -> str:
        return f"S3BlobStore({self._store!r})"

    async def _modified(self, sha: str) -> float | None:
        try:
            meta = await obstore.head_async(self._store, blob_key(sha))
        except FileNotFoundError:
            return None
        return meta["last_modified"].timestamp()

    async def put(self, data: bytes) -> str:
        sha = await anyio.to_thread.run_sync(blob_name, data)
        modified = await self._modified(sha)
        if modified is not None and time.time() - modified < self.refresh_after:
            return sha  # written recently enough: still safe from the sweep for a while
        # New, or old enough to need a touch: (re)write it. Above 5 MiB obstore uploads it in parts.
        await obstore.put_async(self._store, blob_key(sha), data)
        return sha

    async def get(self, sha: str) -> bytes:
        try:
            result = await obstore.get_async(self._store, blob_key(sha))
            return bytes(await result.bytes_async())
        except FileNotFoundError as exc:
            raise NotFoundError(GONE) from exc

    async def exists(self, sha: str) -> bool:
        return await self._modified(sha) is not None

    async def delete(self, sha: str) -> None:
        await obstore.delete_async(self._store, blob_key(sha))

    async def listing(self) -> AsyncIterator[BlobInfo]:
        async for page in obstore.list(self._store, chunk_size=1000):
            for meta in page:
                shard, _, name = meta["path"].partition("/")
                if is_blob_key(shard, name):  # a shared bucket may hold other things below the prefix
                    yield BlobInfo(name, meta["last_modified"].timestamp())

    async def remove_untouched(self, shas: Iterable[str], cutoff: float) -> int:
        removed = 0
        limiter = anyio.CapacityLimiter(REMOVALS_AT_ONCE)

        async def remove(sha: str) -> None:
            nonlocal removed
            async with limiter:
                modified = await self._modified(sha)
                if modified is None or modified >= cutoff:
                    return  # gone already, or touched by an add since the sweep listed it
                await obstore.delete_async(self._store, blob_key(sha))
                removed += 1

        async with anyio.create_task_group() as tg:
            for sha in set(shas):
                tg.start_soon(remove, sha)
        return removed
