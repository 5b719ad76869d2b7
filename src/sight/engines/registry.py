"""The engines a running server holds: detectors by name (loaded once, lazily), OCR and the LLM."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import anyio

from sight.config import Settings
from sight.engines.base import Detector, OcrEngine, VisionLLM
from sight.errors import ModelNotFoundError


class EngineRegistry:
    """Owns engine lifetimes. Inject ready engines for tests or embedding::

        EngineRegistry(settings, detectors={"toy": my_detector}, llm=my_llm)
    """

    def __init__(
        self,
        settings: Settings,
        *,
        detectors: Mapping[str, Detector] | None = None,
        ocr: OcrEngine | None = None,
        llm: VisionLLM | None = None,
    ) -> None:
        self.settings = settings
        self._paths: dict[str, Path] = settings.detector_paths()
        self._detectors: dict[str, Detector] = dict(detectors or {})
        self._ocr = ocr
        self._llm = llm
        self._load_lock = threading.Lock()
        self._limiters: dict[str, anyio.CapacityLimiter] = {}

    @property
    def detector_names(self) -> list[str]:
        return sorted(set(self._paths) | set(self._detectors))

    @property
    def loaded_detectors(self) -> list[str]:
        return sorted(self._detectors)

    def resolve_name(self, ref: str | None) -> tuple[str, str | None]:
        """``name`` or ``name:version`` (``None``: the default model) -> (name, version)."""
        ref = ref or self.settings.yolo.default_model
        name, _, version = ref.partition(":")
        return name, version or None

    def detector(self, ref: str | None) -> Detector:
        """The detector for ``ref``, loading it on first use. Blocking: call it from a worker thread."""
        name, version = self.resolve_name(ref)
        with self._load_lock:
            detector = self._detectors.get(name)
            if detector is None:
                path = self._paths.get(name)
                if path is None:
                    known = ", ".join(self.detector_names) or "none configured"
                    raise ModelNotFoundError(
                        f"no detection model named {name!r} (known: {known}); configure SIGHT_YOLO__MODELS"
                    )
                from sight.engines.onnx_yolo import OnnxYoloDetector

                y = self.settings.yolo
                detector = OnnxYoloDetector.load(
                    name, path, providers=y.providers, intra_op_threads=y.intra_op_threads,
                    conf=y.conf, iou=y.iou, max_det=y.max_det,
                )
                self._detectors[name] = detector
        if version is not None and version not in {detector.version, "latest"}:
            raise ModelNotFoundError(f"model {name!r} has no version {version!r} (have {detector.version!r})")
        return detector

    def limiter(self, name: str) -> anyio.CapacityLimiter:
        """Bounds concurrent session runs per model so parallel requests do not oversubscribe cores."""
        if name not in self._limiters:
            self._limiters[name] = anyio.CapacityLimiter(self.settings.yolo.concurrency)
        return self._limiters[name]

    def ocr(self) -> OcrEngine:
        """The OCR engine, loaded on first use. Blocking: call it from a worker thread."""
        with self._load_lock:
            if self._ocr is None:
                from sight.engines.rapid_ocr import RapidOcrEngine

                self._ocr = RapidOcrEngine.load()
            return self._ocr

    def ocr_limiter(self) -> anyio.CapacityLimiter:
        if "__ocr__" not in self._limiters:
            self._limiters["__ocr__"] = anyio.CapacityLimiter(self.settings.ocr.concurrency)
        return self._limiters["__ocr__"]

    @property
    def llm(self) -> VisionLLM:
        if self._llm is None:
            from sight.engines.openai_llm import OpenAIVisionLLM

            self._llm = OpenAIVisionLLM(self.settings.llm)
        return self._llm

    async def aclose(self) -> None:
        if self._llm is not None:
            await self._llm.aclose()
