"""Shadow models: run beside a primary on the same input, never returned, only compared.

Detectors are compared by IoU-matched boxes, pooled over every run: precision is matched / shadow boxes,
recall matched / primary boxes (the primary's boxes are the reference), each undefined (None) while its
denominator is zero, and shown with the counts that produced it. Text outputs (OCR, LLM) are compared by
exact match. Runs are bounded and never delay the primary's answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from sight.engines.base import Detection
from sight.metrics import Metrics

log = logging.getLogger(__name__)
MATCH_IOU = 0.5


def matched_boxes(primary: Sequence[Detection], shadow: Sequence[Detection]) -> int:
    """How many of the shadow's boxes match one of the primary's: greedy, same class, IoU >= 0.5."""
    unmatched = list(primary)
    matched = 0
    for det in sorted(shadow, key=lambda d: -d.confidence):
        best = max((p for p in unmatched if p.class_id == det.class_id), key=lambda p: p.box.iou(det.box),
                   default=None)
        if best is not None and best.box.iou(det.box) >= MATCH_IOU:
            unmatched.remove(best)
            matched += 1
    return matched


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


@dataclass
class Agreement:
    runs: int = 0
    errors: int = 0
    exact: int = 0  # runs whose output equals the primary's (for detectors: every box matched, both ways)
    primary_boxes: int = 0
    shadow_boxes: int = 0
    matched_boxes: int = 0
    detections: bool = False  # compared as boxes (else as text)

    def summary(self) -> dict[str, float | int | None]:
        compared = self.runs - self.errors
        out: dict[str, float | int | None] = {
            "runs": self.runs,
            "errors": self.errors,
            "compared": compared,
            "exact_matches": self.exact,
            "exact_match": _ratio(self.exact, compared),
            "precision": None,
            "recall": None,
        }
        if self.detections:
            out.update(primary_boxes=self.primary_boxes, shadow_boxes=self.shadow_boxes,
                       matched_boxes=self.matched_boxes,
                       precision=_ratio(self.matched_boxes, self.shadow_boxes),
                       recall=_ratio(self.matched_boxes, self.primary_boxes))
        return out


class ShadowRunner:
    def __init__(self, metrics: Metrics, concurrency: int) -> None:
        self.metrics = metrics
        self.stats: dict[tuple[str, str], Agreement] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, primary: str, shadow: str, run: Callable[[], Awaitable[object]], reference: object) -> None:
        """Start ``run`` in the background and compare its output with the primary's ``reference``."""
        if self._slots.locked():
            self.metrics.shadow_runs.labels(primary, shadow, "skipped").inc()
            return  # shadows are best effort: never queue up behind real traffic
        task = asyncio.create_task(self._run(primary, shadow, run, reference))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, primary: str, shadow: str, run: Callable[[], Awaitable[object]], reference: object) -> None:
        stats = self.stats.setdefault((primary, shadow), Agreement())
        async with self._slots:
            try:
                output = await run()
            except Exception as exc:  # a broken shadow is a finding, not a failure of the request
                stats.runs += 1
                stats.errors += 1
                self.metrics.shadow_runs.labels(primary, shadow, "error").inc()
                log.info("shadow %s of %s failed: %s", shadow, primary, exc)
                return
        stats.runs += 1
        if isinstance(reference, list):
            found: list[Detection] = output  # type: ignore[assignment]
            matched = matched_boxes(reference, found)
            stats.detections = True
            stats.primary_boxes += len(reference)
            stats.shadow_boxes += len(found)
            stats.matched_boxes += matched
            stats.exact += int(matched == len(reference) == len(found))
        else:
            stats.exact += int(output == reference)
        self.metrics.shadow_runs.labels(primary, shadow, "ok").inc()
        summary = stats.summary()
        for metric in ("precision", "recall", "exact_match"):
            value = summary[metric]
            if value is not None:  # undefined figures are left out, not reported as 0 or 1
                self.metrics.shadow_agreement.labels(primary, shadow, metric).set(value)

    def for_model(self, name: str) -> list[dict[str, object]]:
        return [{"primary": p, "shadow": s, **a.summary()} for (p, s), a in self.stats.items()
                if p.partition(":")[0] == name or s.partition(":")[0] == name]

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
