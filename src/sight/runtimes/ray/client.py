"""Models on a Ray cluster: the pipeline's calls go to the replicas of Ray Serve deployments
(``sight.runtimes.ray.replicas``, bound into the application by ``sight.serve_app``).

Only encoded bytes cross the network: an item's upload as it came (decoded again next to the model, at the
same ``min_side``, so the pixels are the ones the local runtime would see), or a lossless PNG where only a
decoded picture is at hand. Replicas are called through their typed methods (``replicas.call``). Ray is
imported here only, and only when ``SIGHT_RUNTIME__KIND=ray``.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from sight.errors import EngineUnavailableError, OverloadedError, SightError, StageTimeoutError
from sight.models.states import model_state
from sight.runtimes.base import Picture, Seen, to_original
from sight.runtimes.ray.replicas import (
    LLM_SERVE_DEPLOYMENT,
    OCR_SERVE_DEPLOYMENT,
    DetectorReplica,
    LlmReplica,
    OcrReplica,
    call,
    detector_serve_deployment,
)

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

    from sight.answers.schema import ResponseSchema
    from sight.config import Settings
    from sight.engines.base import Detection, DetectOptions, Grounding, LLMAnswer, OcrText, VisionLLM
    from sight.models.catalog import ModelEntry
    from sight.models.registry import EngineRegistry
    from sight.schemas import ModelState

log = logging.getLogger(__name__)
T = TypeVar("T")

STATUS_TTL = 2.0  # seconds a Serve status answers for the models' states
STATUS_TIMEOUT = 5.0


def serve_deployment_health(serve_deployment: Any) -> tuple[str, int]:
    """A Serve deployment's status as ``serve status`` writes it (HEALTHY, UPDATING, ...) and its running
    replicas."""
    running = sum(n for state, n in serve_deployment.replica_states.items()
                  if getattr(state, "value", state) == "RUNNING")
    return str(getattr(serve_deployment.status, "value", serve_deployment.status)), running


def import_serve() -> Any:
    try:
        from ray import serve
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise EngineUnavailableError("SIGHT_RUNTIME__KIND=ray needs Ray: pip install 'sight[ray]'") from exc
    return serve


def encode(picture: Picture) -> tuple[bytes, int | None]:
    """What to send for ``picture``: its bytes as uploaded, else a lossless PNG of its pixels. Blocking."""
    if picture.data is not None:
        return picture.data, picture.min_side
    assert picture.image is not None, "a picture has its bytes or its pixels"
    out = io.BytesIO()
    picture.image.save(out, format="PNG", compress_level=1)
    return out.getvalue(), None


class RayRuntime:
    """A ``ModelRuntime`` over the Serve deployments of the application ``settings.runtime.app_name``. ``serve``
    is Ray's ``serve`` module (or a stand-in with its ``status``, ``get_deployment_handle`` and
    ``get_replica_context``)."""

    remote = True

    def __init__(self, settings: Settings, serve: Any = None) -> None:
        self.settings = settings
        self._serve = serve if serve is not None else import_serve()
        self._handles: dict[str, DeploymentHandle] = {}
        self._serve_deployments: set[str] = set()  # seen in the application (refreshed on a miss)
        self._status_cache: tuple[float, Any] | None = None
        self._status_lock = anyio.Lock()
        self._replica_states: dict[str, tuple[float, ModelState]] = {}

    def handle(self, name: str) -> DeploymentHandle:
        """The handle of Serve deployment ``name`` (made once)."""
        if name not in self._handles:
            self._handles[name] = self._serve.get_deployment_handle(name, app_name=self.app_name())
        return self._handles[name]

    async def serve_handle(self, name: str, what: str) -> DeploymentHandle:
        """The handle of Serve deployment ``name``; ``EngineUnavailableError`` at once if the application has
        none (a call to a missing Serve deployment would wait for replicas that never come). Serve's status is asked
        as for the models' states: cached, with a timeout."""
        if name not in self._serve_deployments:
            app = self.app_name()
            try:
                status = await self._status()
            except Exception as exc:  # the cluster is gone, unreachable or too slow
                raise EngineUnavailableError(f"{what}: Ray Serve did not answer ({type(exc).__name__})") from exc
            application = status.applications.get(app)
            self._serve_deployments = set(application.deployments) if application is not None else set()
            if name not in self._serve_deployments:
                raise EngineUnavailableError(f"{what} is not deployed in the Ray Serve application {app!r}: "
                                             "declare it and deploy the application again")
        return self.handle(name)

    def app_name(self) -> str:
        """The application whose Serve deployments run the models: inside Serve (the API as the ingress) the one
        this replica belongs to, whatever it was deployed as (`serve run` names it ``default``); elsewhere
        ``runtime.app_name``."""
        from ray.serve.exceptions import RayServeException

        try:
            return str(self._serve.get_replica_context().app_name)
        except RayServeException:
            return self.settings.runtime.app_name

    async def detect(self, engines: EngineRegistry, entry: ModelEntry, picture: Picture,
                     options: DetectOptions, *, alone: bool = False) -> Seen[list[Detection]]:
        data, min_side = await self._encoded(picture)
        handle = await self.serve_handle(detector_serve_deployment(entry), f"model {entry.ref}")
        seen = await self.send(lambda: call(handle, DetectorReplica.detect, data, min_side, options),
                               self.settings.yolo.timeout, "detection")
        if picture.data is None and picture.original not in (None, seen.original):
            # Sent a PNG of reduced pixels: the replica answered in those.
            assert picture.original is not None
            return Seen(to_original(seen.value, seen.original, picture.original), picture.original)
        return seen

    async def shadow_detect(self, engines: EngineRegistry, entry: ModelEntry, picture: Picture,
                            options: DetectOptions) -> list[Detection]:
        return (await self.detect(engines, entry, picture, options)).value

    async def read_text(self, engines: EngineRegistry, picture: Picture) -> Seen[OcrText]:
        data, _min_side = await self._encoded(picture)  # OCR pictures are never reduced: no scale to undo
        handle = await self.serve_handle(OCR_SERVE_DEPLOYMENT, "OCR")
        return await self.send(lambda: call(handle, OcrReplica.read_text, data), self.settings.ocr.timeout, "OCR")

    def llm_client(self, engines: EngineRegistry, entry: ModelEntry | None, ref: str | None
                   ) -> tuple[VisionLLM, str | None]:
        """A client of the LLM Serve deployment, which resolves ``entry`` (by its ref) and ``ref`` as this process
        would and holds the connections to the backends (and, without a base URL, looks for Ollama on its
        node). The backend model name is the replica's to pick: None here."""
        return RemoteVisionLLM(self, entry.ref if entry is not None else None, ref), None

    async def states(self, engines: EngineRegistry, entries: Sequence[ModelEntry]) -> dict[str, ModelState]:
        """Each detector's and OCR's Serve deployment as Serve reports it: ready once a replica runs (a replica
        loads its model as it starts, if the file is on its node; else it downloads it on first use); the LLMs
        as the registry knows them."""
        remote = await self._remote_states(entries)
        return {m.ref: remote.get(m.ref) or model_state(engines, m) for m in entries}

    async def _remote_states(self, entries: Sequence[ModelEntry]) -> dict[str, ModelState]:
        from sight.schemas import ModelState

        app = self.app_name()
        try:
            status = await self._status()
        except Exception as exc:  # the cluster is gone, unreachable or too slow: every remote model is
            down = ModelState(state="unavailable", reason=f"Ray Serve did not answer ({type(exc).__name__})")
            return {entry.ref: down for entry in entries if entry.task in ("detect", "ocr")}
        application = status.applications.get(app)
        serve_deployments = application.deployments if application is not None else {}
        self._serve_deployments = set(serve_deployments)
        states: dict[str, ModelState] = {}

        async def one(entry: ModelEntry) -> None:  # each Serve deployment's replica is asked at once
            name = detector_serve_deployment(entry) if entry.task == "detect" else OCR_SERVE_DEPLOYMENT
            serve_deployment = serve_deployments.get(name)
            if serve_deployment is None:
                states[entry.ref] = ModelState(state="unavailable", reason=f"no Serve deployment {name!r} in the "
                                               f"Ray Serve application {app!r}: declare it and deploy again")
                return
            health, running = serve_deployment_health(serve_deployment)
            if health in ("UNHEALTHY", "DEPLOY_FAILED"):
                states[entry.ref] = ModelState(state="failed", reason=f"Ray Serve deployment {name!r} is "
                                               f"{health}: {serve_deployment.message}")
            elif running:
                seen = await self._replica_state(name)
                states[entry.ref] = seen if seen is not None and seen.state != "ready" else ModelState(
                    state="ready", reason=f"{running} replica(s) of {name!r} running on Ray Serve",
                    provider=seen.provider if seen is not None else None)
            else:
                states[entry.ref] = ModelState(state="not_loaded", reason=f"replicas of {name!r} starting on "
                                               "Ray Serve")

        async with anyio.create_task_group() as tg:
            for entry in entries:
                if entry.task == "detect" or (entry.task == "ocr" and self.settings.ocr.enabled):
                    tg.start_soon(one, entry)
        return states

    async def _status(self) -> Any:
        """``serve.status()``, asked at most once per ``STATUS_TTL`` seconds (``/readyz`` needs no key and may be
        probed often) and given ``STATUS_TIMEOUT`` seconds to answer; concurrent askers share one call."""
        async with self._status_lock:
            if self._status_cache is None or time.monotonic() - self._status_cache[0] > STATUS_TTL:
                with anyio.fail_after(STATUS_TIMEOUT):
                    status = await anyio.to_thread.run_sync(self._serve.status, abandon_on_cancel=True)
                self._status_cache = (time.monotonic(), status)
            return self._status_cache[1]

    async def _replica_state(self, name: str) -> ModelState | None:
        """The model's state as one running replica of Serve deployment ``name`` sees it (a model that failed
        to load, a file still downloading), cached as ``_status``; None if the replica does not answer in time."""
        cached = self._replica_states.get(name)
        if cached is not None and time.monotonic() - cached[0] <= STATUS_TTL:
            return cached[1]
        try:
            with anyio.fail_after(STATUS_TIMEOUT):
                replica = DetectorReplica if name != OCR_SERVE_DEPLOYMENT else OcrReplica
                state = await call(self.handle(name), replica.state)
        except Exception as exc:  # a replica starting or stopping: Serve's own status stands
            log.info("Serve deployment %s did not report its model's state: %s", name, type(exc).__name__)
            return None
        self._replica_states[name] = (time.monotonic(), state)
        return state

    @staticmethod
    async def _encoded(picture: Picture) -> tuple[bytes, int | None]:
        if picture.data is not None:
            return picture.data, picture.min_side
        return await anyio.to_thread.run_sync(encode, picture)

    async def send(self, request: Callable[[], Awaitable[T]], seconds: float | None, what: str) -> T:
        """Make ``request`` (a ``call`` of a replica's method) within ``seconds`` (None: the caller bounds it),
        again (at most ``runtime.retries`` times) when the replica died under it: Serve routes the retry to a live
        replica. Ray's errors become Sight's here, at the edge."""
        from ray import exceptions as ray_errors
        from ray.serve import exceptions as serve_errors

        attempts = self.settings.runtime.retries + 1
        try:
            with anyio.fail_after(math.inf if seconds is None else seconds):
                for attempt in range(1, attempts + 1):
                    try:
                        return await request()
                    except serve_errors.BackPressureError as exc:
                        raise OverloadedError(f"{what} is at capacity; retry later",
                                              self.settings.server.retry_after) from exc
                    except ray_errors.RayTaskError as exc:
                        cause = exc.cause
                        if isinstance(cause, SightError):
                            raise cause from None
                        raise SightError(f"{what} failed on the cluster") from exc
                    except (ray_errors.RayActorError, ray_errors.ActorUnavailableError,
                            serve_errors.ReplicaUnavailableError) as exc:
                        if attempt == attempts:
                            raise EngineUnavailableError(f"{what}: replicas kept failing ({attempts} tries)") from exc
                        log.warning("%s: replica lost (%s); retrying, %d of %d", what, type(exc).__name__,
                                    attempt + 1, attempts)
                    except serve_errors.DeploymentUnavailableError as exc:
                        raise EngineUnavailableError(f"{what}: no such Serve deployment on the cluster") from exc
        except TimeoutError as exc:
            raise StageTimeoutError(f"{what} did not finish within {seconds}s") from exc
        raise AssertionError("unreachable")  # pragma: no cover


class RemoteVisionLLM:
    """A ``VisionLLM`` whose calls go to the LLM Serve deployment's replicas (``LlmReplica``). The pipeline bounds
    them as in process (``SIGHT_LLM__DEADLINE``)."""

    def __init__(self, runtime: RayRuntime, entry_ref: str | None, ref: str | None) -> None:
        self.runtime, self.entry_ref, self.ref = runtime, entry_ref, ref

    async def analyze(self, image_jpeg: bytes, query: str, grounding: Grounding, model: str | None = None,
                      schema: ResponseSchema | None = None) -> LLMAnswer:
        handle = await self.runtime.serve_handle(LLM_SERVE_DEPLOYMENT, "the LLM client")
        return await self.runtime.send(
            lambda: call(handle, LlmReplica.analyze, self.entry_ref, self.ref, image_jpeg, query, grounding, schema),
            None, "the LLM")

    async def condense(self, query: str, answers: list[tuple[str, str]], model: str | None = None) -> LLMAnswer:
        handle = await self.runtime.serve_handle(LLM_SERVE_DEPLOYMENT, "the LLM client")
        return await self.runtime.send(
            lambda: call(handle, LlmReplica.condense, self.entry_ref, self.ref, query, answers),
            None, "the LLM")

    async def aclose(self) -> None:
        return None  # the Serve deployment holds the connections
