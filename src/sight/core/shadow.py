"""Shadow models: run beside a primary on the same input, never returned, only compared.

Detectors are compared by IoU-matched precision and recall (the primary's boxes are the reference);
text outputs (OCR, LLM) by exact match. Runs are bounded and never delay the primary's answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from sight.core.metrics import Metrics
from sight.engines.base import Box, Detection

log = logging.getLogger(__name__)
MATCH_IOU = 0.5


def iou(a: Box, b: Box) -> float:
    w = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    h = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = w * h
    union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
    return inter / union if union > 0 else 0.0


def detection_agreement(primary: Sequence[Detection], shadow: Sequence[Detection]) -> tuple[float, float]:
    """(precision, recall) of the shadow's boxes against the primary's: greedy same-class IoU >= 0.5."""
    if not primary and not shadow:
        return 1.0, 1.0
    unmatched = list(primary)
    matched = 0
    for det in sorted(shadow, key=lambda d: -d.confidence):
        best = max((p for p in unmatched if p.class_id == det.class_id), key=lambda p: iou(p.box, det.box),
                   default=None)
        if best is not None and iou(best.box, det.box) >= MATCH_IOU:
            unmatched.remove(best)
            matched += 1
    precision = matched / len(shadow) if shadow else 1.0
    recall = matched / len(primary) if primary else 1.0
    return precision, recall


@dataclass
class Agreement:
    runs: int = 0
    errors: int = 0
    precision_sum: float = 0.0
    recall_sum: float = 0.0
    exact: int = 0

    def summary(self) -> dict[str, float | int]:
        ok = self.runs - self.errors
        return {
            "runs": self.runs,
            "errors": self.errors,
            "precision": round(self.precision_sum / ok, 4) if ok else 0.0,
            "recall": round(self.recall_sum / ok, 4) if ok else 0.0,
            "exact_match": round(self.exact / ok, 4) if ok else 0.0,
        }


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
            precision, recall = detection_agreement(reference, output)  # type: ignore[arg-type]
            stats.precision_sum += precision
            stats.recall_sum += recall
            stats.exact += int(precision == recall == 1.0)
        else:
            same = output == reference
            stats.exact += int(same)
            stats.precision_sum += float(same)
            stats.recall_sum += float(same)
        self.metrics.shadow_runs.labels(primary, shadow, "ok").inc()
        summary = stats.summary()
        for metric in ("precision", "recall", "exact_match"):
            self.metrics.shadow_agreement.labels(primary, shadow, metric).set(summary[metric])

    def for_model(self, name: str) -> list[dict[str, object]]:
        return [{"primary": p, "shadow": s, **a.summary()} for (p, s), a in self.stats.items()
                if p.partition(":")[0] == name or s.partition(":")[0] == name]

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
