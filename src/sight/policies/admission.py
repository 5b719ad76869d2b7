"""Admission control: a bounded number of items per model may be in the server at once.

Past the bound a request is refused at once with 503 and Retry-After, instead of queueing without limit
and answering late for everyone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sight.errors import OverloadedError

if TYPE_CHECKING:
    from sight.pipeline.items import WorkItem


def demands(items: Iterable[WorkItem], default_detector: str) -> Counter[str]:
    """How many items each model (or stage) will be asked for."""
    need: Counter[str] = Counter()
    for item in items:
        o = item.options
        if o.is_yolo:
            need[f"detect:{(o.yolo_model or default_detector).partition(':')[0]}"] += 1
        if o.is_ocr:
            need["ocr"] += 1
        if o.is_llm:
            need["llm"] += 1
        need["images"] += 1
    return need


class Admission:
    def __init__(self, limit: int, retry_after: int) -> None:
        self.limit = limit
        self.retry_after = retry_after
        self.inflight: Counter[str] = Counter()
        self.rejected = 0

    def admit(self, need: Counter[str]) -> Ticket:
        full = [k for k, n in need.items() if self.inflight[k] + n > self.limit]
        if full:
            self.rejected += 1
            raise OverloadedError(f"at capacity for {', '.join(sorted(full))}; retry shortly", self.retry_after)
        self.inflight.update(need)
        return Ticket(self, need)


class Ticket:
    """Admitted work; ``release()`` (idempotent) gives the capacity back."""

    def __init__(self, admission: Admission, need: Counter[str]) -> None:
        self._admission, self._need = admission, need

    def release(self) -> None:
        if self._need:
            self._admission.inflight.subtract(self._need)
            self._need = Counter()
