"""Engine values -> wire results: the one place a detection, an OCR reading or an LLM answer becomes JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sight.engines.base import Detection, LLMAnswer, OcrText
from sight.models.catalog import ModelEntry
from sight.schemas import (
    DetectionOut,
    ItemResult,
    LlmResult,
    LlmUsage,
    OcrLineOut,
    OcrResult,
    Summary,
    YoloResult,
)


def detection_out(d: Detection) -> DetectionOut:
    """One detection as the wire has it (Ultralytics' keys: ``name``, ``class``, ``confidence``, ``box``)."""
    return DetectionOut(name=d.name, class_id=d.class_id, confidence=d.confidence, box=d.box)


def detections_json(found: Sequence[Detection]) -> list[dict[str, Any]]:
    """Detections as JSON-ready dicts (deployments and multi-model predict answer these)."""
    return [detection_out(d).model_dump(mode="json", by_alias=True) for d in found]


def yolo_result(entry: ModelEntry, found: Sequence[Detection]) -> YoloResult:
    return YoloResult(model=entry.name, model_version=str(entry.version),
                      detections=[detection_out(d) for d in found])


def ocr_result(text: OcrText) -> OcrResult:
    return OcrResult(text=text.text,
                     lines=[OcrLineOut(text=ln.text, confidence=ln.confidence, box=ln.box) for ln in text.lines])


def llm_result(answer: LLMAnswer) -> LlmResult:
    usage = LlmUsage(prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens)
    return LlmResult(answer=answer.answer, model=answer.model, usage=usage, truncated=answer.truncated,
                     structured=answer.structured)


def kept_stages(item: ItemResult) -> bool:
    """Whether a stage of ``item`` produced a result: a failed item carries those beside its error."""
    return item.yolo is not None or item.ocr is not None or item.llm is not None or item.fields is not None


def summarize(results: Sequence[ItemResult]) -> Summary:
    done = sum(r.status == "done" for r in results)
    return Summary(total=len(results), done=done, error=len(results) - done)
