"""The blob stores' one contract, on a folder and on a real S3 API on loopback: content addressing, reads,
listing, removal, the touch that protects an add in flight; S3 retries and addressing; the optional extra."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sight.config import BlobSettings, Settings
from sight.errors import NotFoundError
from sight.storage.blobs import BlobStore, FileBlobStore, open_blob_store
from sight.storage.blobs.base import blob_key
from tests.helpers import image_bytes

both_stores = pytest.mark.parametrize("blob_settings", ["file", "s3"], indirect=True)


@pytest.fixture
def settings(settings: Settings, blob_settings: BlobSettings) -> Settings:
    return settings.model_copy(update={"blobs": blob_settings})


@pytest.fixture
def store(settings: Settings) -> BlobStore:
    return open_blob_store(settings)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _set_modified(settings: Settings, sha: str, seconds_ago: float) -> None:
    when = time.time() - seconds_ago
    if settings.blobs.url is None:
        os.utime(settings.data_dir / "blobs" / blob_key(sha), (when, when))
        return
    # S3 lets no client set LastModified: the loopback server's record of the object is changed instead.
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    bucket, _, prefix = settings.blobs.url.removeprefix("s3://").partition("/")
    key = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].get_object(bucket, f"{prefix}/{blob_key(sha)}")
    assert key is not None
    key.last_modified = datetime.fromtimestamp(when, UTC).replace(tzinfo=None)  # moto keeps naive UTC


@both_stores
@pytest.mark.anyio
async def test_blob_store_keeps_one_copy_per_content(store: BlobStore) -> None:
    coffee, bus = image_bytes("coffee.png"), image_bytes("bus.jpg")
    assert await store.put(coffee) == _sha(coffee)
    assert await store.put(coffee) == _sha(coffee), "storing again is harmless"
    assert await store.put(bus) == _sha(bus)
    assert await store.get(_sha(coffee)) == coffee and await store.get(_sha(bus)) == bus
    listed = [blob async for blob in store.listing()]
    assert sorted(b.sha for b in listed) == sorted([_sha(coffee), _sha(bus)])
    assert all(abs(b.modified - time.time()) < 60 for b in listed), "modified times are wall-clock seconds"
    assert await store.exists(_sha(bus))

    await store.delete(_sha(bus))
    await store.delete(_sha(bus))  # gone already: fine
    assert not await store.exists(_sha(bus))
    with pytest.raises(NotFoundError, match="gone"):
        await store.get(_sha(bus))
    assert [b.sha async for b in store.listing()] == [_sha(coffee)]


@both_stores
@pytest.mark.anyio
async def test_blob_store_round_trips_an_image_larger_than_one_upload_part(store: BlobStore) -> None:
    data = os.urandom(6 * 1024 * 1024 + 17)  # above obstore's 5 MiB part size: a multipart upload on S3
    sha = await store.put(data)
    assert sha == _sha(data) and await store.get(sha) == data


@both_stores
@pytest.mark.anyio
async def test_blob_store_removes_only_blobs_untouched_since_the_cutoff(store: BlobStore, settings: Settings) -> None:
    old, new = image_bytes("coffee.png"), image_bytes("bus.jpg")
    await store.put(old)
    await store.put(new)
    _set_modified(settings, _sha(old), 7200)
    cutoff = time.time() - 3600
    assert await store.remove_untouched([_sha(old), _sha(new), "f" * 64], cutoff) == 1
    assert [b.sha async for b in store.listing()] == [_sha(new)]


@both_stores
@pytest.mark.anyio
async def test_storing_a_blob_again_touches_it_only_when_it_is_getting_old(
    store: BlobStore, settings: Settings
) -> None:
    data = image_bytes("coffee.png")
    sha = await store.put(data)
    _set_modified(settings, sha, 600)  # ten minutes: well inside the hour's grace
    await store.put(data)
    (blob,) = [b async for b in store.listing()]
    if settings.blobs.url:  # on S3 a touch is an upload: skipped while half the grace period is left
        assert time.time() - blob.modified == pytest.approx(600, abs=5)
    else:  # a file's touch is a utime, as cheap as the check: always done
        assert time.time() - blob.modified < 5
    _set_modified(settings, sha, 7200)
    await store.put(data)
    (blob,) = [b async for b in store.listing()]
    assert time.time() - blob.modified < 5


@both_stores
@pytest.mark.anyio
async def test_blob_listing_skips_what_is_not_a_blob(settings: Settings) -> None:
    store = open_blob_store(settings)
    sha = await store.put(image_bytes("coffee.png"))
    if settings.blobs.url is None:
        stray = settings.data_dir / "blobs" / "notes.txt"
        stray.write_text("not a blob")
        (settings.data_dir / "blobs" / sha[:2] / ("0" * 64)).write_bytes(b"in the wrong shard")
    else:
        import obstore
        from obstore.store import S3Store

        # The bucket is shared: other objects below (or beside) the prefix are none of the store's business.
        url = settings.blobs.url
        root = S3Store(url.removeprefix("s3://").partition("/")[0], config={
            "endpoint": settings.blobs.endpoint_url or "", "region": "us-east-1", "access_key_id": "testing",
            "secret_access_key": "testing"}, client_options={"allow_http": True})
        prefix = url.removeprefix("s3://").partition("/")[2]
        for key in (f"{prefix}/notes.txt", f"{prefix}/{sha[:2]}/{'0' * 64}", f"{prefix}x/{blob_key(sha)}",
                    f"{prefix}/{sha[:2]}/{sha}.bak"):
            await obstore.put_async(root, key, b"not a blob")
    assert [b.sha async for b in store.listing()] == [sha]


@pytest.mark.anyio
async def test_s3_blob_stores_are_confined_to_their_prefix(s3_server: str) -> None:
    def s3(prefix: str) -> BlobStore:
        return open_blob_store(Settings(_env_file=None, blobs=BlobSettings(
            url=f"s3://sight-test/{prefix}", endpoint_url=s3_server, region="us-east-1", access_key_id="testing",
            secret_access_key="testing", force_path_style=True)))

    token = os.urandom(4).hex()
    a, ab = s3(f"{token}/a"), s3(f"{token}/ab")
    await a.put(image_bytes("coffee.png"))
    await ab.put(image_bytes("bus.jpg"))
    assert [b.sha async for b in a.listing()] == [_sha(image_bytes("coffee.png"))]
    assert [b.sha async for b in ab.listing()] == [_sha(image_bytes("bus.jpg"))]
    assert not await a.exists(_sha(image_bytes("bus.jpg")))


class _FailingS3(ThreadingHTTPServer):
    """An S3 endpoint on loopback whose first ``failures`` answers are 503, then 404 (no such object)."""

    def __init__(self, failures: int) -> None:
        self.failures, self.requests = failures, 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:  # noqa: N802
                server.requests += 1
                self.send_response(503 if server.requests <= server.failures else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    def __enter__(self) -> _FailingS3:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    def store(self, retries: int) -> BlobStore:
        return open_blob_store(Settings(_env_file=None, blobs=BlobSettings(
            url="s3://sight-test/blobs", endpoint_url=f"http://127.0.0.1:{self.server_address[1]}",
            region="us-east-1", access_key_id="testing", secret_access_key="testing",
            force_path_style=True, retries=retries)))


@pytest.mark.anyio
async def test_s3_blob_store_retries_transient_errors_a_bounded_number_of_times() -> None:
    with _FailingS3(failures=2) as server:
        assert await server.store(retries=2).exists("a" * 64) is False
        assert server.requests == 3, "two 503s retried, then the answer"
    with _FailingS3(failures=100) as server:
        with pytest.raises(Exception, match="503"):
            await server.store(retries=1).exists("a" * 64)
        assert server.requests == 2, "one try and one retry, then the error"


@pytest.mark.parametrize(("url", "expected"), [
    (None, "data/blobs"), ("file://./sight-data/blobs", "sight-data/blobs"), ("file:///srv/blobs", "/srv/blobs"),
])
def test_file_blob_urls_name_a_folder(tmp_path: Path, url: str | None, expected: str) -> None:
    store = open_blob_store(Settings(_env_file=None, data_dir=Path("data"), blobs=BlobSettings(url=url)))
    assert isinstance(store, FileBlobStore) and store.root == Path(expected)


@pytest.mark.parametrize("url", ["s3://", "s3:///prefix", "file://", "gs://bucket/x", "/srv/blobs"])
def test_blob_urls_that_name_no_store_fail_at_start(url: str) -> None:
    with pytest.raises(ValueError, match="SIGHT_BLOBS__URL must be file://PATH or s3://BUCKET/PREFIX"):
        open_blob_store(Settings(_env_file=None, blobs=BlobSettings(url=url)))


def test_s3_virtual_hosted_addressing_puts_the_bucket_in_the_host() -> None:
    from sight.storage.blobs.s3 import endpoint_for

    assert endpoint_for("https://minio.internal:9000", "images", path_style=True) == "https://minio.internal:9000"
    assert endpoint_for("https://minio.internal:9000", "images", path_style=False) == "https://images.minio.internal:9000"


def test_without_the_s3_extra_nothing_imports_obstore_and_s3_urls_say_how_to_get_it(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys
        from sight.api.app import create_app
        from sight.config import BlobSettings, Settings
        from sight.storage.blobs import open_blob_store

        open_blob_store(Settings(_env_file=None, data_dir={str(tmp_path)!r}))
        assert "obstore" not in sys.modules, "the file store imported obstore"
        sys.modules["obstore"] = None  # as if the extra were not installed
        try:
            open_blob_store(Settings(_env_file=None, blobs=BlobSettings(url="s3://bucket/prefix")))
        except ModuleNotFoundError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "SIGHT_BLOBS__URL=s3://bucket/prefix needs the optional extra: pip install 'sight[s3]'"
