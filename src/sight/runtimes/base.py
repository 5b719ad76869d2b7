"""Where models run: the one seam between the pipeline and its detectors, OCR and LLM clients.

The pipeline resolves *which* model an item wants (catalog, aliases, splits) and asks a ``ModelRuntime`` to
run it. ``LocalRuntime`` runs it in this process (run slots, gathered batches); ``RayRuntime`` sends the same
call to a Ray Serve deployment's replica. Routes and batch jobs see neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from sight.engines.base import Box, Detection

if TYPE_CHECKING:
    from PIL import Image

    from sight.engines.base import DetectOptions, OcrText, VisionLLM
    from sight.models.catalog import ModelEntry
    from sight.models.registry import EngineRegistry
    from sight.schemas import ModelState

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Picture:
    """An image as a runtime gets it.

    ``image``: its pixels, when this process decoded them (at reduced scale where ``min_side`` allowed).
    ``data``: the encoded bytes as uploaded, kept for a remote runtime: decoding them at ``min_side`` next
    to the model gives the same pixels, so this process need not decode at all when no stage of its own
    needs pixels. ``original``: the full-size oriented original's (width, height), once known.
    """

    image: Image.Image | None = None
    data: bytes | None = None
    min_side: int | None = None
    original: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.image is None and self.data is None:
            raise ValueError("a picture needs its pixels or its bytes")

    @property
    def full_size(self) -> tuple[int, int]:
        """The original's size: given, else that of the pixels at hand (decoded in full)."""
        if self.original is not None:
            return self.original
        assert self.image is not None, "a picture known by its bytes only has no size until decoded"
        return self.image.size


@dataclass(frozen=True, slots=True)
class Place:
    """Where a remote runtime ran a call: the replica, its node, its process."""

    replica: str
    node: str
    pid: int


@dataclass(frozen=True, slots=True)
class Seen(Generic[T]):
    """What a runtime found in a picture, in the pixels of the full-size original, and that original's
    (width, height): a remote runtime may be the first to decode the picture, and so to know its size.
    ``place``: where a remote runtime ran it (None in this process)."""

    value: T
    original: tuple[int, int]
    place: Place | None = None


def to_original(found: list[Detection], size: tuple[int, int], original: tuple[int, int]) -> list[Detection]:
    """Detections on a picture of ``size`` (a reduced-scale decode), in the full-size ``original``'s pixels."""
    if size == original:
        return found
    sx, sy = original[0] / size[0], original[1] / size[1]
    return [replace(d, box=Box(round(d.box.x1 * sx, 2), round(d.box.y1 * sy, 2), round(d.box.x2 * sx, 2),
                              round(d.box.y2 * sy, 2))) for d in found]


class ModelRuntime(Protocol):
    """Runs detectors and OCR for the pipeline. Raises ``SightError`` subclasses only. Every answer is in the
    full-size original's pixels, whatever scale the picture was decoded at."""

    #: True when models run out of this process: the pipeline then keeps an item's encoded bytes for it, and
    #: decodes them itself only for a stage of its own (the LLM).
    remote: bool

    async def detect(self, engines: EngineRegistry, entry: ModelEntry, picture: Picture,
                     options: DetectOptions, *, alone: bool = False) -> Seen[list[Detection]]:
        """Detect with ``entry`` on ``picture``."""
        ...

    async def shadow_detect(self, engines: EngineRegistry, entry: ModelEntry, picture: Picture,
                            options: DetectOptions) -> list[Detection]:
        """As ``detect``, for a shadow model: never queued ahead of answers."""
        ...

    async def read_text(self, engines: EngineRegistry, picture: Picture) -> Seen[OcrText]:
        """OCR on ``picture`` (decoded in full: text needs every pixel)."""
        ...

    def llm_client(self, engines: EngineRegistry, entry: ModelEntry | None, ref: str | None
                   ) -> tuple[VisionLLM, str | None]:
        """(client, backend model name) for a catalog ``llm`` entry, or, with none, ``ref`` passed through to
        the default backend (as ``EngineRegistry.llm_client``): in this process, or a client of the
        application's LLM Serve deployment."""
        ...

    async def states(self, engines: EngineRegistry, entries: Sequence[ModelEntry]) -> dict[str, ModelState]:
        """By ref, the state of each of ``entries``: as the registry knows it for models in this process
        (``sight.models.states``), as the place they run reports it for the others."""
        ...
