"""Admission control: a bounded number of items per model may be in the server at once, on every API family.

Past the bound a request is refused at once with 503 and Retry-After, instead of queueing without limit
and answering late for everyone. What a request will ask of each model is known before it runs: ``demands``
for prediction items, ``prediction_demands`` for multi-model predict, ``deployment_demands`` for deployments.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sight.errors import OverloadedError, SightError
from sight.schemas import ItemOptions

if TYPE_CHECKING:
    from sight.models.catalog import Catalog
    from sight.pipeline.deployments import DeploymentCall
    from sight.pipeline.items import WorkItem
    from sight.schemas import PredictInput, PredictionSpec


def _detector(name: str | None, default_detector: str) -> str:
    return f"detect:{(name or default_detector).partition(':')[0]}"


def _options(need: Counter[str], o: ItemOptions, default_detector: str) -> None:
    if o.is_yolo:
        need[_detector(o.yolo_model, default_detector)] += 1
    if o.is_ocr:
        need["ocr"] += 1
    if o.is_llm:
        need["llm"] += 1
    need["images"] += 1


def demands(items: Iterable[WorkItem], default_detector: str) -> Counter[str]:
    """How many items each model (or stage) will be asked for."""
    need: Counter[str] = Counter()
    for item in items:
        _options(need, item.options, default_detector)
    return need


def prediction_demands(catalog: Catalog, shared: PredictInput | None, specs: Sequence[PredictionSpec]
                       ) -> Counter[str]:
    """What a multi-model predict asks of each model: one run per prediction, one image per distinct input.
    A model the catalog does not know asks nothing (its prediction answers BadRequest)."""
    need: Counter[str] = Counter()
    inputs = set()
    for spec in specs:
        inputs.add(id(spec.input or shared))
        try:
            entry = catalog.model(spec.model_name)
        except SightError:
            continue
        need[f"detect:{entry.name}" if entry.task == "detect" else entry.task] += 1
    need["images"] += len(inputs)
    return need


def deployment_demands(call: DeploymentCall, default_detector: str) -> Counter[str]:
    """What a deployment call asks of each model, run by run: the built-ins their stages, a user's function
    its own name."""
    need: Counter[str] = Counter()
    for args in call.arguments():
        options: Any = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
        if call.name == "detect":
            need[_detector(options.get("model") or options.get("yolo_model"), default_detector)] += 1
        elif call.name == "ocr":
            need["ocr"] += 1
        elif call.name == "analyze":
            need["llm"] += 1
        elif call.name == "predict":
            try:
                o = ItemOptions.model_validate(options) if options else ItemOptions(is_yolo=True)
            except ValueError:
                o = ItemOptions()  # the run reports its bad options
            _options(need, o, default_detector)
            continue
        else:
            need[f"deployment:{call.name}"] += 1
            continue
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
