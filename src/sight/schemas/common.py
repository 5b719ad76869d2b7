"""Wire values every API family shares: checked text, the box, image references, errors."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, StrictStr
from pydantic.dataclasses import dataclass

from sight.errors import InvalidInputError

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


def valid_unicode(value: str) -> str:
    """Refuse text that cannot be written back out as UTF-8 (a lone surrogate such as ``"\\ud800"`` in JSON):
    it would fail the answer, or a log line, long after it was accepted."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (it holds a lone surrogate)") from None
    return value


Text = Annotated[StrictStr, AfterValidator(valid_unicode)]


def reject_invalid_text(value: Any, where: str = "body") -> None:
    """``valid_unicode`` over free-form JSON (deployment arguments): every string and key, at any depth."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                valid_unicode(item)
            except ValueError as exc:
                raise InvalidInputError(f"{where}: {exc}") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


@dataclass(frozen=True, slots=True)
class Box:
    """A box in an image's pixels, top-left (x1, y1) to bottom-right (x2, y2): what engines find and what the
    wire carries (the one box type). A pydantic dataclass: its coordinates are floats whatever an engine hands
    it (ints, NumPy scalars)."""

    x1: float
    y1: float
    x2: float
    y2: float

    def iou(self, other: Box) -> float:
        """Intersection over union with ``other`` (0 for boxes with no area)."""
        w = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        h = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = w * h
        union = (self.x2 - self.x1) * (self.y2 - self.y1) + (other.x2 - other.x1) * (other.y2 - other.y1) - inter
        return inter / union if union > 0 else 0.0


class ImageSize(BaseModel):
    width: int
    height: int


class ImageRef(BaseModel):
    """An image by URL (fetched through the SSRF guard) or as base64 (raw, or a ``data:`` URI): exactly one.

    Every request model that takes an image this way inherits it. The "exactly one" rule is checked by
    ``source()`` when the image is needed, not at parse time, so each family reports it where it reports its
    input errors (an item, a prediction, the request).
    """

    image_url: Text | None = None
    image_base64: Text | None = None

    def source(self) -> tuple[Literal["url", "base64"], str]:
        """Which of the two is given, and its value; ``InvalidInputError`` when neither or both are."""
        if self.image_url is not None and self.image_base64 is None:
            return "url", self.image_url
        if self.image_base64 is not None and self.image_url is None:
            return "base64", self.image_base64
        raise InvalidInputError("give exactly one of image_url and image_base64")


class ErrorInfo(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    """Request-level error body of every family."""

    detail: ErrorInfo


class DeploymentErrorResponse(ErrorResponse):
    """Deployments answer the same ``detail`` plus the ``error`` message Modelbit clients read."""

    error: str


class Health(BaseModel):
    status: str
    checks: dict[str, Any] = Field(default_factory=dict)
