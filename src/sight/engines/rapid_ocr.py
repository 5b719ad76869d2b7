"""PP-OCR text reading through rapidocr-onnxruntime (the optional ``ocr`` extra)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from sight.engines.base import Box, OcrLine, OcrText
from sight.errors import EngineUnavailableError

if TYPE_CHECKING:
    from PIL import Image


class RapidOcrEngine:
    """Reads text lines with boxes and confidences.

    >>> RapidOcrEngine.load().read(image).text
    'Serial No: SN-4X7Q-2291-B'
    """

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        # RapidOCR keeps per-call state on the object; one call at a time per engine.
        self._lock = threading.Lock()

    @classmethod
    def load(cls) -> RapidOcrEngine:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:
            raise EngineUnavailableError(
                "OCR needs the optional extra: pip install 'sight[ocr]'"
            ) from exc
        return cls(RapidOCR())

    def read(self, image: Image.Image) -> OcrText:
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        with self._lock:
            raw, _elapsed = self._engine(bgr)
        lines: list[OcrLine] = []
        for points, text, score in raw or []:
            pts = np.asarray(points, dtype=np.float64)
            box = Box(*(round(float(v), 2) for v in (*pts.min(axis=0), *pts.max(axis=0))))
            lines.append(OcrLine(text=str(text), confidence=round(float(score), 4), box=box))
        # Reading order: top to bottom, then left to right within a row.
        lines.sort(key=lambda ln: (round(ln.box.y1 / 10), ln.box.x1))
        return OcrText(text="\n".join(ln.text for ln in lines), lines=lines)
