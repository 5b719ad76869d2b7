"""Engine roles (Protocols) and the plain domain values they exchange. No HTTP here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from sight.schemas.common import Box

if TYPE_CHECKING:
    from PIL import Image

    from sight.answers.replies import Reply
    from sight.answers.schema import ResponseSchema

__all__ = ["Box", "Detection", "DetectOptions", "Detector", "Grounding", "LLMAnswer", "OcrEngine", "OcrLine",
           "OcrText", "VisionLLM", "WideDetector"]

@dataclass(frozen=True, slots=True)
class Detection:
    name: str
    class_id: int
    confidence: float
    box: Box


@dataclass(frozen=True, slots=True)
class DetectOptions:
    conf: float | None = None
    iou: float | None = None
    classes: Sequence[str | int] | None = None


@dataclass(frozen=True, slots=True)
class OcrLine:
    text: str
    confidence: float
    box: Box


@dataclass(frozen=True, slots=True)
class OcrText:
    text: str
    lines: list[OcrLine]


@dataclass(frozen=True, slots=True)
class LLMAnswer:
    answer: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated: bool = False  # the backend stopped at max_tokens, or Sight cut an answer past its byte bound
    structured: str | None = None  # with a response schema: "schema" (response_format) or "prompt"
    reply: Reply | None = None  # with a response schema: the answer read against it


@dataclass(frozen=True, slots=True)
class Grounding:
    """What other stages found on the same image, given to the LLM as context."""

    detections: list[Detection] = field(default_factory=list)
    ocr_text: str | None = None


class Detector(Protocol):
    """Finds objects. ``detect`` blocks: call it from a worker thread."""

    name: str
    version: str

    def detect(self, image: Image.Image, options: DetectOptions) -> list[Detection]: ...


@runtime_checkable
class WideDetector(Detector, Protocol):
    """A detector that can also run over every core, when its caller holds them all (``RunSlots``)."""

    can_run_wide: bool

    def detect(self, image: Image.Image, options: DetectOptions, *, wide: bool = False) -> list[Detection]: ...


class OcrEngine(Protocol):
    """Reads text. ``read`` blocks: call it from a worker thread."""

    def read(self, image: Image.Image) -> OcrText: ...


class VisionLLM(Protocol):
    """Answers a question about an image over the network."""

    async def analyze(
        self, image_jpeg: bytes, query: str, grounding: Grounding, model: str | None = None,
        schema: ResponseSchema | None = None,
    ) -> LLMAnswer:
        """With ``schema``: the answer read against it (``LLMAnswer.reply``), or ``LLMInvalidOutputError``."""
        ...

    async def condense(self, query: str, answers: list[tuple[str, str]], model: str | None = None) -> LLMAnswer: ...

    async def aclose(self) -> None: ...
