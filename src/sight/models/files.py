"""Model files: where each one comes from (a local path, an ``http(s)`` URL pinned by sha256, a Hugging Face
file), where it lives here, and fetching the missing ones once.

A download is verified (size and sha256) and written atomically (temp file in the target folder, fsync,
rename), so a model file either is complete and verified or is not there. Concurrent callers for one file
share one download (single flight) and wait for it with their own timeout; a failure is remembered for
``retry_seconds`` so a burst of items cannot start a burst of downloads.

>>> files = ModelFiles(settings.models, settings.models_dir)
>>> source = ModelSource.parse(model_url)          # e.g. https://host/yolo11n.onnx#sha256=<64 hex>
>>> path = files.ensure("yolo11n", source, timeout=300)   # downloaded once, verified, then found here
>>> path.parent.name, path.name.endswith("-yolo11n.onnx")  # URL files land in downloads/, named by hash
('downloads', True)
>>> files.state(source).state
'present'
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import anyio

from sight.errors import ModelUnavailableError, StageTimeoutError
from sight.models.official import OFFICIAL, official_for_url
from sight.models.sources import ModelSource, license_line

if TYPE_CHECKING:
    import httpx

    from sight.config import ModelsSettings

log = logging.getLogger(__name__)

CHUNK = 1 << 20
Progress = Callable[[int, int | None], None]  # (bytes so far, total or None)
FileStateName = Literal["present", "missing", "downloading", "failed"]


class DownloadError(Exception):
    """Why one download failed, in words for the user (wrapped in ``ModelUnavailableError`` at the edge)."""


@dataclass(slots=True)
class FileState:
    """What a model file is doing now: for ``GET /v1/models``, ``/readyz`` and the start banner."""

    state: FileStateName
    path: Path | None = None
    done: int = 0
    total: int | None = None
    reason: str | None = None


@dataclass
class _Download:
    future: concurrent.futures.Future[Path]
    listeners: list[Progress] = field(default_factory=list)
    done: int = 0
    total: int | None = None
    failed_at: float | None = None


class ModelFiles:
    """The model files of one process: local ones as they are, remote ones fetched once into ``models_dir``
    (official exports as ``<name>.onnx``, other URLs under ``downloads/`` by hash, Hugging Face files in its
    own cache)."""

    def __init__(self, settings: ModelsSettings, models_dir: Path,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self.models_dir = models_dir
        self._transport = transport
        self._lock = threading.Lock()
        self._downloads: dict[str, _Download] = {}
        self._verified: set[Path] = set()  # cached Hugging Face files whose pinned hash was checked once
        self._mismatches: dict[tuple[str, int, int], str | None] = {}  # (path, size, mtime) -> warning

    # -- where files are -------------------------------------------------------------------------------

    def target(self, source: ModelSource) -> Path | None:
        """Where ``source``'s file lives here (None for Hugging Face files: their cache decides)."""
        if source.kind == "path":
            return Path(source.location).expanduser()
        if source.kind == "http":
            official = official_for_url(source.location)
            if official is not None and official.sha256 == source.sha256:
                return self.models_dir / f"{official.name}.onnx"
            name = Path(urlsplit(source.location).path).name or "model.onnx"
            return self.models_dir / "downloads" / f"{source.sha256 and source.sha256[:16]}-{name}"
        return None

    def local(self, source: ModelSource, *, verify: bool = True) -> Path | None:
        """The file, if it is here already (never downloads). A Hugging Face cache entry is checked against its
        pin the first time (hashing the file: blocking) unless ``verify`` is off."""
        if source.kind == "hf":
            return self._hf_cached(source, verify)
        target = self.target(source)
        return target if target is not None and target.is_file() else None

    def state(self, source: ModelSource) -> FileState:
        """Where the file stands. Safe on the event loop: a cached Hugging Face file is not hashed here (its
        load verifies it)."""
        path = self.local(source, verify=False)
        if path is not None:
            return FileState("present", path)
        with self._lock:
            d = self._downloads.get(self._key(source))
        if d is not None and not d.future.done():
            return FileState("downloading", done=d.done, total=d.total or source.size)
        if d is not None and d.future.exception() is not None:
            return FileState("failed", reason=str(d.future.exception()))
        if source.kind == "path":
            return FileState("failed", reason=f"no file at {source.location}")
        if self.settings.offline:
            return FileState("failed", reason="not downloaded, and downloads are off (SIGHT_MODELS__OFFLINE)")
        return FileState("missing", total=source.size)

    def official_mismatch(self, name: str, source: ModelSource) -> str | None:
        """A warning when ``source`` is the models folder's ``<name>.onnx`` for an official name (where its
        download lands) and the file there is not that official export. Hashed once per file version."""
        official = OFFICIAL.get(name)
        path = Path(source.location) if source.kind == "path" else None
        if official is None or path is None or path.resolve() != (self.models_dir / f"{name}.onnx").resolve():
            return None
        try:
            stat = path.stat()
        except OSError:
            return None
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._mismatches:
            same = stat.st_size == official.size and _sha256_file(path) == official.sha256
            self._mismatches[key] = None if same else (
                f"{path} is not the official Ultralytics {name} export (its sha256 differs from the pinned one): "
                f"it is served as {name!r} all the same. Rename the file, or declare it under its own name "
                "(SIGHT_YOLO__MODELS or the registry file)")
        return self._mismatches[key]

    # -- getting them ----------------------------------------------------------------------------------

    def fetch(self, name: str, source: ModelSource, on_progress: Progress | None = None
              ) -> concurrent.futures.Future[Path]:
        """The file's future: done at once if it is here, else the one download in flight (started now if
        none is, or if the last one failed more than ``retry_seconds`` ago). Never blocks."""
        present = self.local(source)
        if present is not None:
            return _resolved(present)
        if source.kind == "path":
            return _failed(ModelUnavailableError(f"model {name!r}: no ONNX file at {source.location}"))
        if self.settings.offline:
            return _failed(ModelUnavailableError(self._offline_message(name, source)))
        key = self._key(source)
        with self._lock:
            d = self._downloads.get(key)
            fresh_failure = d is not None and d.failed_at is not None and (
                time.monotonic() - d.failed_at < self.settings.retry_seconds)
            if d is not None and d.future.done() and d.future.exception() is None:
                return d.future  # it finished since the check above: the file is here
            if d is None or (d.future.done() and not fresh_failure):
                d = self._downloads[key] = _Download(concurrent.futures.Future())
                d.future.set_running_or_notify_cancel()  # a waiter's cancellation never cancels the download
                if on_progress is not None:
                    d.listeners.append(on_progress)
                threading.Thread(target=self._run, args=(name, source, d), name=f"download-{name}",
                                 daemon=True).start()
            elif on_progress is not None and not d.future.done():
                d.listeners.append(on_progress)
        return d.future

    def ensure(self, name: str, source: ModelSource, timeout: float, on_progress: Progress | None = None) -> Path:
        """The file's path, downloading it first if needed. Blocking: call it from a worker thread."""
        future = self.fetch(name, source, on_progress)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError as exc:
            raise self._still_downloading(name, source, timeout) from exc

    async def aensure(self, name: str, source: ModelSource, wait: float) -> Path:
        """``ensure`` for the event loop: waits up to ``wait`` seconds without holding a thread; a cancelled
        or timed-out waiter leaves the download running for the others."""
        if source.kind == "hf":  # looking in its cache may hash a file: not on the event loop
            future = await anyio.to_thread.run_sync(self.fetch, name, source)
        else:
            future = self.fetch(name, source)
        if future.done():
            return future.result()
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), wait)
        except TimeoutError as exc:
            raise self._still_downloading(name, source, wait) from exc

    # -- internals -------------------------------------------------------------------------------------

    @staticmethod
    def _key(source: ModelSource) -> str:
        return str(source) + (f"#{source.sha256}" if source.sha256 else "")

    def _run(self, name: str, source: ModelSource, d: _Download) -> None:
        try:
            path = self._hf(source) if source.kind == "hf" else self._http(name, source, d)
        except DownloadError as exc:
            d.failed_at = time.monotonic()
            log.error("model %s: download from %s failed: %s", name, source, exc)
            d.future.set_exception(ModelUnavailableError(self._failed_message(name, source, str(exc))))
        except Exception as exc:  # a bug or an unforeseen library error: still a clear item error
            d.failed_at = time.monotonic()
            log.exception("model %s: download from %s failed", name, source)
            d.future.set_exception(ModelUnavailableError(self._failed_message(name, source, type(exc).__name__)))
        else:
            d.future.set_result(path)

    def _http(self, name: str, source: ModelSource, d: _Download) -> Path:
        import httpx

        target = self.target(source)
        assert target is not None and source.sha256 is not None
        s = self.settings
        deadline = time.monotonic() + s.download_timeout
        log.info("model %s: downloading %s%s", name, source,
                 f" ({source.size / 1e6:.1f} MB)" if source.size else "")
        if (note := license_line(source)) is not None:
            log.warning("model %s: %s", name, note)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        tmp = Path(tmp_name)
        digest = hashlib.sha256()
        next_log = 0.1
        try:
            with os.fdopen(fd, "wb") as out, httpx.Client(
                follow_redirects=True, max_redirects=s.max_redirects, transport=self._transport,
                timeout=httpx.Timeout(s.read_timeout, connect=s.connect_timeout), trust_env=True,
            ) as client, client.stream("GET", source.location, headers={"Accept-Encoding": "identity"}) as r:
                if r.status_code != 200:
                    raise DownloadError(f"the server answered HTTP {r.status_code}")
                offered = int(r.headers.get("content-length") or 0) or None
                if source.size is not None and offered is not None and offered != source.size:
                    raise DownloadError(f"the server offers {offered} bytes; the pinned file has {source.size}")
                d.total = limit = source.size or offered
                # Whatever each read brings (not fixed 1 MiB chunks): a server that trickles bytes meets the
                # deadline below on its next read instead of holding the download forever.
                for chunk in r.iter_bytes():
                    digest.update(chunk)
                    out.write(chunk)
                    d.done += len(chunk)
                    if d.done > (limit or s.max_download_bytes):
                        raise DownloadError(f"the server sent more than {limit or s.max_download_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise DownloadError(f"not finished within {s.download_timeout:.0f}s "
                                            f"({d.done} of {d.total or '?'} bytes)")
                    for listener in list(d.listeners):
                        try:
                            listener(d.done, d.total)
                        except Exception:  # a waiter's progress display must not fail everyone's download
                            log.exception("model %s: a progress listener failed", name)
                    if d.total and d.done / d.total >= next_log:
                        log.info("model %s: %d%% of %.1f MB", name, 100 * d.done // d.total, d.total / 1e6)
                        next_log += 0.1
                out.flush()
                os.fsync(out.fileno())
            expected = source.size or offered
            if expected is not None and d.done != expected:
                raise DownloadError(f"the download was cut short: {d.done} of {expected} bytes")
            if digest.hexdigest() != source.sha256:
                raise DownloadError(f"sha256 mismatch: got {digest.hexdigest()}, pinned {source.sha256}")
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        except httpx.HTTPError as exc:
            raise DownloadError(_http_reason(exc)) from exc
        finally:
            tmp.unlink(missing_ok=True)
        log.info("model %s: saved %s (%d bytes, sha256 verified)", name, target, d.done)
        return target

    def _hf_module(self) -> Any:
        try:
            import huggingface_hub
        except ImportError as exc:
            raise DownloadError("hf:// sources need the optional extra: pip install 'sight[hf]'") from exc
        return huggingface_hub

    def _hf_cached(self, source: ModelSource, verify: bool = True) -> Path | None:
        try:
            hub = self._hf_module()
        except DownloadError:
            return None
        found = hub.try_to_load_from_cache(source.repo, source.location, revision=source.revision,
                                           cache_dir=self.settings.hf_cache_dir)
        if not isinstance(found, str):
            return None
        return Path(found) if not verify or self._hf_verified(Path(found), source) else None

    def _hf_verified(self, path: Path, source: ModelSource) -> bool:
        if source.sha256 is None or path in self._verified:
            return True
        if _sha256_file(path) != source.sha256:
            return False
        self._verified.add(path)
        return True

    def _hf(self, source: ModelSource) -> Path:
        hub = self._hf_module()
        try:
            found = Path(hub.hf_hub_download(
                source.repo, source.location, revision=source.revision, endpoint=self.settings.hf_endpoint,
                cache_dir=self.settings.hf_cache_dir, local_files_only=self.settings.offline,
                etag_timeout=self.settings.connect_timeout))
        except Exception as exc:  # huggingface_hub's own errors (not found, offline, HTTP): the message says
            raise DownloadError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        if not self._hf_verified(found, source):
            raise DownloadError(f"sha256 of {found} does not match the pinned {source.sha256}")
        return found

    def _failed_message(self, name: str, source: ModelSource, reason: str) -> str:
        where = self.target(source)
        return (f"model {name!r} could not be downloaded from {source}: {reason}. Retry with "
                f"`sight models pull {name}` (it shows progress), put the ONNX file "
                + (f"at {where} " if where else "on disk ")
                + "or point SIGHT_YOLO__MODELS at a local file, or set SIGHT_MODELS__OFFLINE=true to turn "
                "downloads off")

    def _offline_message(self, name: str, source: ModelSource) -> str:
        where = self.target(source)
        return (f"model {name!r} is not on this machine{f' ({where})' if where else ''} and downloads are off "
                f"(SIGHT_MODELS__OFFLINE=true). Run `sight models pull {name}` where there is internet and copy "
                "the file here, or point SIGHT_YOLO__MODELS at a local ONNX file")

    def _still_downloading(self, name: str, source: ModelSource, waited: float) -> StageTimeoutError:
        st = self.state(source)
        progress = f" ({100 * st.done // st.total}%)" if st.total else ""
        return StageTimeoutError(f"model {name!r} is still downloading{progress} after {waited:.0f}s of waiting; "
                                 f"retry shortly, or run `sight models pull {name}` before sending work")


def _resolved(path: Path) -> concurrent.futures.Future[Path]:
    future: concurrent.futures.Future[Path] = concurrent.futures.Future()
    future.set_result(path)
    return future


def _failed(exc: Exception) -> concurrent.futures.Future[Path]:
    future: concurrent.futures.Future[Path] = concurrent.futures.Future()
    future.set_exception(exc)
    return future


def _http_reason(exc: Exception) -> str:
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the connection dropped before the file was complete"
    if isinstance(exc, httpx.TooManyRedirects):
        return "too many redirects"
    if isinstance(exc, httpx.TransportError):
        return f"could not reach the server ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc}"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot open or fsync directories
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
