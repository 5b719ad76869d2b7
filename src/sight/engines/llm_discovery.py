"""Finds the vision LLM to talk to, at start and again on use, and says what it found or what to set.

Which endpoint and model, in order:

1. ``SIGHT_LLM__BASE_URL`` and ``SIGHT_LLM__MODEL``: used as they are; nothing is probed.
2. ``SIGHT_LLM__BASE_URL`` alone: the first model its ``GET /models`` lists (vLLM and llama.cpp list the one
   they serve).
3. Neither, with ``SIGHT_LLM__DISCOVER`` on (the default): a local Ollama at ``SIGHT_LLM__OLLAMA_URL``, through
   its OpenAI-compatible ``/v1``, with ``SIGHT_LLM__MODEL`` when Ollama has it, else the first of its models,
   by name, whose capabilities include vision.

While nothing is found, a later LLM call probes again (at most once per ``SIGHT_LLM__DISCOVER_INTERVAL``;
concurrent calls share one probe), so an Ollama started after Sight is used without a restart::

    llm = DiscoveringVisionLLM(settings.llm)
    await llm.probe()                 # at start: LLMStatus(backend='ollama', model='qwen2.5vl:3b', ...)
    await llm.analyze(jpeg, "what is on the label?", Grounding())
    llm.describe().summary()          # 'ollama qwen2.5vl:3b at http://127.0.0.1:11434/v1'
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio
import httpx

from sight.config import LLMSettings
from sight.engines.base import Grounding, LLMAnswer
from sight.engines.openai_llm import SETUP_HINT, SUGGESTED_OLLAMA_MODEL, OpenAIVisionLLM
from sight.errors import LLMUnavailableError

if TYPE_CHECKING:
    from sight.answers.schema import ResponseSchema

log = logging.getLogger(__name__)

Backend = Literal["ollama", "openai-compatible"]
MAX_OLLAMA_MODELS = 100  # /api/show is asked about at most this many models per probe
LISTED = 5  # model names quoted in a message


@dataclass(frozen=True, slots=True)
class LLMStatus:
    """What the default vision LLM is now. ``ready``: an endpoint and a model are known (not a health check);
    ``unavailable``: ``reason`` says why, and what to set."""

    backend: Backend | None
    base_url: str | None
    model: str | None
    state: Literal["ready", "unavailable"]
    reason: str | None = None

    def summary(self) -> str:
        """One line for the startup banner."""
        if self.state == "ready":
            line = f"{self.backend} {self.model} at {self.base_url}"
            return f"{line} ({self.reason})" if self.reason else line
        return self.reason or "no vision LLM"


class DiscoveringVisionLLM:
    """A ``VisionLLM`` that resolves its endpoint lazily and delegates to an ``OpenAIVisionLLM``."""

    def __init__(self, settings: LLMSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._delegate: OpenAIVisionLLM | None = None
        self._retired: list[OpenAIVisionLLM] = []
        self._lock: anyio.Lock | None = None
        self._probes = 0
        self._probed_at: float | None = None
        self._searches = bool(settings.base_url and not settings.model) or (not settings.base_url and settings.discover)
        if settings.base_url and settings.model:
            self._status = self._use(LLMStatus("openai-compatible", settings.base_url, settings.model, "ready"))
        elif self._searches:
            self._status = LLMStatus(None, None, None, "unavailable", "no vision LLM yet: not looked for")
        else:
            self._status = LLMStatus(None, None, None, "unavailable",
                                     "no vision LLM: Ollama discovery is off (SIGHT_LLM__DISCOVER=false): set "
                                     "SIGHT_LLM__BASE_URL (vLLM, llama.cpp, any OpenAI-compatible server) and "
                                     "SIGHT_LLM__MODEL")

    def describe(self) -> LLMStatus:
        """The status as last found; no I/O (safe in /readyz)."""
        return self._status

    async def probe(self) -> LLMStatus:
        """Look for the LLM now, unless one is found or the last probe was under the interval ago; call it once
        at start. Never raises: an unavailable LLM is a status, not an error."""
        if self._searches and self._delegate is None:
            await self._probe_if_due()
        return self._status

    async def resolve(self) -> OpenAIVisionLLM:
        """The client to call; probes again (rate-limited) while nothing is found. Raises ``LLMUnavailableError``."""
        if self._delegate is None and self._searches:
            await self._probe_if_due()
        if self._delegate is None:
            raise LLMUnavailableError(self._status.reason or "no vision LLM")
        return self._delegate

    async def analyze(
        self, image_jpeg: bytes, query: str, grounding: Grounding, model: str | None = None,
        schema: ResponseSchema | None = None,
    ) -> LLMAnswer:
        llm = await self.resolve()
        try:
            return await llm.analyze(image_jpeg, query, grounding, model, schema)
        except LLMUnavailableError:
            self._lost(llm)
            raise

    async def condense(self, query: str, answers: list[tuple[str, str]], model: str | None = None) -> LLMAnswer:
        llm = await self.resolve()
        try:
            return await llm.condense(query, answers, model)
        except LLMUnavailableError:
            self._lost(llm)
            raise

    async def aclose(self) -> None:
        for llm in [*self._retired, *([self._delegate] if self._delegate else [])]:
            await llm.aclose()
        self._retired, self._delegate = [], None

    # -- finding it ------------------------------------------------------------------------------------

    async def _probe_if_due(self) -> None:
        seen = self._probes
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            # Whoever waited while another call probed takes that probe's answer instead of probing again.
            if self._delegate is not None or self._probes != seen or not self._due():
                return
            try:
                if self.settings.base_url:
                    status = await self._listed_model(self.settings.base_url)
                else:
                    status = await self._ollama(self.settings.ollama_url.rstrip("/"))
            except LLMUnavailableError as exc:
                status = LLMStatus(None, None, None, "unavailable", exc.message)
            except Exception as exc:  # an odd answer (say, /api/show in another shape) is a status, never a crash
                log.warning("looking for a vision LLM failed", exc_info=exc)
                status = LLMStatus(None, None, None, "unavailable",
                                   f"no vision LLM: the search failed ({type(exc).__name__}); set "
                                   "SIGHT_LLM__BASE_URL and SIGHT_LLM__MODEL")
            finally:
                self._probes += 1
                self._probed_at = self._clock()
            if status.state == "ready":
                self._status = self._use(status)
                log.info("vision LLM: %s", self._status.summary())
            else:
                if status.reason != self._status.reason:
                    log.info("%s", status.reason)
                self._status = status

    def _due(self) -> bool:
        return self._probed_at is None or self._clock() - self._probed_at >= self.settings.discover_interval

    def _use(self, found: LLMStatus) -> LLMStatus:
        self._delegate = OpenAIVisionLLM(self.settings.model_copy(update={"base_url": found.base_url,
                                                                          "model": found.model}))
        return found

    def _lost(self, llm: OpenAIVisionLLM) -> None:
        """A found endpoint stopped answering: look again on the next use. Calls still in flight may hold its
        client, so it is closed only at ``aclose``."""
        if not self._searches or llm is not self._delegate:
            return
        old = self._status
        self._retired.append(llm)
        self._delegate, self._probed_at = None, None
        self._status = LLMStatus(None, None, None, "unavailable",
                                 f"no vision LLM: {old.backend} at {old.base_url} stopped answering; looking again "
                                 f"on the next use. To fix: {SETUP_HINT}")
        log.warning("%s", self._status.reason)

    def _client(self, base_url: str, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
        timeout = self.settings.probe_timeout
        return httpx.AsyncClient(base_url=base_url, headers=headers,
                                 timeout=httpx.Timeout(timeout, connect=min(1.0, timeout)), trust_env=False)

    async def _listed_model(self, base_url: str) -> LLMStatus:
        """The first model ``GET <base_url>/models`` lists (OpenAI-compatible)."""
        headers = {}
        if self.settings.api_key is not None:
            headers["Authorization"] = f"Bearer {self.settings.api_key.get_secret_value()}"
        url = base_url.rstrip("/") + "/models"
        fix = "set SIGHT_LLM__MODEL to the backend's model name"
        async with self._client(base_url.rstrip("/") + "/", headers) as http:
            try:
                response = await http.get("models")
                response.raise_for_status()
                ids = [str(m["id"]) for m in response.json()["data"]]
            except httpx.HTTPStatusError as exc:
                raise LLMUnavailableError(f"no vision LLM model: SIGHT_LLM__MODEL is not set and {url} answered "
                                          f"HTTP {exc.response.status_code}: {fix}") from exc
            except httpx.HTTPError as exc:
                raise LLMUnavailableError(f"no vision LLM model: SIGHT_LLM__MODEL is not set and {url} is "
                                          f"unreachable ({type(exc).__name__}): {fix}") from exc
            except (ValueError, KeyError, TypeError) as exc:
                raise LLMUnavailableError(f"no vision LLM model: SIGHT_LLM__MODEL is not set and {url} is not an "
                                          f"OpenAI-compatible model list: {fix}") from exc
        if not ids:
            raise LLMUnavailableError(f"no vision LLM model: SIGHT_LLM__MODEL is not set and {url} lists none: {fix}")
        note = None
        if len(ids) > 1:
            note = f"the first of {len(ids)} models {url} lists; set SIGHT_LLM__MODEL to choose another"
            log.warning("vision LLM: using %s, %s", ids[0], note)
        return LLMStatus("openai-compatible", base_url, ids[0], "ready", note)

    async def _ollama(self, root: str) -> LLMStatus:
        """A model of the Ollama at ``root``: the settings' one if present, else the first vision one by name."""
        wanted = self.settings.model
        pull = f"`ollama pull {wanted or SUGGESTED_OLLAMA_MODEL}`"
        async with self._client(root) as http:
            try:
                response = await http.get("/api/tags")
                response.raise_for_status()
                names = sorted({str(m["name"]) for m in response.json()["models"]})
            except httpx.HTTPError as exc:
                raise LLMUnavailableError(f"no vision LLM: no Ollama at {root} ({type(exc).__name__}); "
                                          f"{SETUP_HINT}") from exc
            except (ValueError, KeyError, TypeError) as exc:
                raise LLMUnavailableError(f"no vision LLM: {root} answers, but not as Ollama does; "
                                          f"{SETUP_HINT}") from exc
            base_url = root + "/v1"
            if wanted and (found := next((n for n in names if n in (wanted, f"{wanted}:latest")), None)):
                return LLMStatus("ollama", base_url, found, "ready")
            for name in names[:MAX_OLLAMA_MODELS]:
                if await self._sees(http, name):
                    note = f"SIGHT_LLM__MODEL={wanted} is not in Ollama: {pull}" if wanted else None
                    return LLMStatus("ollama", base_url, name, "ready", note)
        has = f" (it has {', '.join(names[:LISTED])}{', ...' if len(names) > LISTED else ''})" if names else ""
        raise LLMUnavailableError(f"no vision LLM: Ollama at {root} has no vision model{has}; run {pull}, or set "
                                  "SIGHT_LLM__MODEL to a model it has that reads images")

    @staticmethod
    async def _sees(http: httpx.AsyncClient, name: str) -> bool:
        """Whether Ollama says ``name`` reads images."""
        try:
            response = await http.post("/api/show", json={"model": name})
            response.raise_for_status()
            show: Any = response.json()
        except (httpx.HTTPError, ValueError):
            return False
        if not isinstance(show, dict):
            return False
        capabilities = show.get("capabilities")
        if isinstance(capabilities, list):
            return "vision" in capabilities
        # Ollama before 0.6 lists no capabilities; a vision model there carries an image projector.
        families = (show.get("details") or {}).get("families") or []
        return "projector_info" in show or bool({"clip", "mllama"} & set(families))
