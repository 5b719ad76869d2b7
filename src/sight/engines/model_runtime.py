"""Where models run: the one seam between the pipeline and its detectors and OCR.

The pipeline resolves *which* model an item wants (catalog, aliases, splits) and asks a ``ModelRuntime`` to
run it. ``LocalRuntime`` runs it in this process (run slots, gathered batches); ``RayRuntime`` sends the same
call to a Ray Serve deployment. Routes and jobs see neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from PIL import Image

    from sight.core.catalog import ModelEntry
    from sight.engines.base import Detection, DetectOptions, OcrText
    from sight.engines.registry import EngineRegistry


@dataclass(frozen=True, slots=True)
class Picture:
    """A decoded image and, when at hand, the encoded bytes it was decoded from and the ``min_side`` of that
    decode: decoding ``data`` again at ``min_side`` gives the same pixels (so a remote runtime sends the bytes
    as uploaded, not the pixels)."""

    image: Image.Image
    data: bytes | None = None
    min_side: int | None = None


class ModelRuntime(Protocol):
    """Runs detectors and OCR for the pipeline. Raises ``SightError`` subclasses only."""

    #: True when models run out of this process: the pipeline then keeps an item's encoded bytes for it.
    remote: bool

    async def detect(self, engines: EngineRegistry, entry: ModelEntry, picture: Picture,
                     options: DetectOptions, *, alone: bool = False) -> list[Detection]:
        """Detect with ``entry`` on ``picture``; boxes in ``picture.image``'s pixels."""
        ...

    async def shadow_detect(self, engines: EngineRegistry, entry: ModelEntry, picture: Picture,
                            options: DetectOptions) -> list[Detection]:
        """As ``detect``, for a shadow model: never queued ahead of answers."""
        ...

    def input_side(self, engines: EngineRegistry, entry: ModelEntry) -> int | None:
        """The long side of ``entry``'s input, if known without loading or waiting (safe on the event loop):
        a picture need not be decoded larger for detection."""
        ...

    async def read_text(self, engines: EngineRegistry, picture: Picture) -> OcrText: ...

