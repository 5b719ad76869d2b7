"""Where each model of this process stands (ready, not loaded, downloading, failed and why): one answer for
``GET /v1/models``, ``/readyz`` and the ``sight serve`` start banner. Models that run elsewhere (Ray Serve
deployments) are reported by their runtime (``ModelRuntime.states``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict

from sight.engines.wheels import install_problems
from sight.models.catalog import ModelEntry
from sight.models.registry import EngineRegistry
from sight.models.sources import redact
from sight.schemas import LLMPublic, ModelList, ModelPublic, ModelState


def model_state(engines: EngineRegistry, entry: ModelEntry) -> ModelState:
    if entry.task == "llm":
        status = engines.llm_status(entry)
        return ModelState(state=status.state, reason=status.reason)
    if entry.task == "ocr" and not engines.settings.ocr.enabled:
        return ModelState(state="unavailable", reason="OCR is disabled (SIGHT_OCR__ENABLED=false)")
    if engines.is_loaded(entry):
        return ModelState(state="ready", provider=engines.provider(entry), precision=engines.precision(entry))
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


def model_public(engines: EngineRegistry, entry: ModelEntry, state: ModelState) -> ModelPublic:
    source = shown_source(entry.source)
    loaded = engines.is_loaded(entry) if entry.task == "llm" else state.state == "ready"
    return ModelPublic(name=entry.name, version=str(entry.version), task=entry.task,
                       aliases=engines.catalog.aliases_of(entry), loaded=loaded,
                       state=state, source=source, shadow_of=entry.shadow_of, warning=engines.warning(entry))


def model_list(engines: EngineRegistry, states: Mapping[str, ModelState]) -> ModelList:
    """Every model of ``engines``' catalog, each with its state from ``states`` (by ref), and the default LLM."""
    status = asdict(engines.llm_status())
    status["base_url"] = status["base_url"] and redact(status["base_url"])
    llm = LLMPublic.model_validate(status)
    return ModelList(models=[model_public(engines, m, states[m.ref]) for m in engines.catalog.all_models()],
                     llm=llm, warnings=list(install_problems()))
