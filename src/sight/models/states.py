"""Where each model stands (ready, not loaded, downloading, failed and why): one answer for
``GET /v1/models``, ``/readyz`` and the ``sight serve`` start banner."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from sight.core.catalog import ModelEntry
from sight.engines.downloads import redact
from sight.engines.model_runtime import ModelRuntime
from sight.engines.registry import EngineRegistry
from sight.schemas import LLMPublic, ModelList, ModelPublic, ModelState


def model_state(engines: EngineRegistry, entry: ModelEntry) -> ModelState:
    if entry.task == "llm":
        status = engines.llm_status(entry)
        return ModelState(state=status.state, reason=status.reason)
    if entry.task == "ocr":
        if not engines.settings.ocr.enabled:
            return ModelState(state="unavailable", reason="OCR is disabled (SIGHT_OCR__ENABLED=false)")
        return ModelState(state="ready" if engines.is_loaded(entry) else "not_loaded")
    if engines.is_loaded(entry):
        return ModelState(state="ready")
    if entry.ref in engines.load_errors:
        return ModelState(state="failed", reason=engines.load_errors[entry.ref])
    file = engines.file_state(entry)
    if file is None:
        return ModelState(state="not_loaded")
    if file.state == "present":
        return ModelState(state="not_loaded", reason="loads on first use")
    if file.state == "missing":
        return ModelState(state="not_downloaded", reason="downloads on first use", total_bytes=file.total)
    if file.state == "downloading":
        return ModelState(state="downloading", downloaded_bytes=file.done, total_bytes=file.total)
    return ModelState(state="failed", reason=file.reason)


def shown_source(text: str | None) -> str | None:
    """A model's source as clients may see it: URLs without credentials or query (the pin stays)."""
    if not text or text.startswith("<"):
        return None
    body, _, fragment = text.partition("#")
    return redact(body) + (f"#{fragment}" if fragment.startswith("sha256=") else "")


async def model_states(runtime: ModelRuntime, engines: EngineRegistry,
                       entries: Sequence[ModelEntry] | None = None) -> dict[str, ModelState]:
    """By ref, the state of each of ``entries`` (default: every model): from the runtime for the models that
    run elsewhere (Ray Serve deployments), from the registry for the rest."""
    entries = engines.catalog.all_models() if entries is None else entries
    states = await runtime.states(engines, entries) if runtime.remote else {}
    return {m.ref: states.get(m.ref) or model_state(engines, m) for m in entries}


def model_public(engines: EngineRegistry, entry: ModelEntry, state: ModelState) -> ModelPublic:
    source = shown_source(entry.source)
    loaded = engines.is_loaded(entry) if entry.task == "llm" else state.state == "ready"
    return ModelPublic(name=entry.name, version=str(entry.version), task=entry.task,
                       aliases=engines.catalog.aliases_of(entry), loaded=loaded,
                       state=state, source=source, shadow_of=entry.shadow_of)


async def model_list(runtime: ModelRuntime, engines: EngineRegistry) -> ModelList:
    status = asdict(engines.llm_status())
    status["base_url"] = status["base_url"] and redact(status["base_url"])
    llm = LLMPublic.model_validate(status)
    states = await model_states(runtime, engines)
    return ModelList(models=[model_public(engines, m, states[m.ref]) for m in engines.catalog.all_models()],
                     llm=llm)
