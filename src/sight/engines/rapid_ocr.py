"""PP-OCR text reading through rapidocr-onnxruntime (in the base install), with word spaces kept."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sight.engines.base import Box, OcrLine, OcrText
from sight.errors import EngineUnavailableError

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

# rapidocr's default detector limit ("min" side 736) upscales every small image: a label is read three times
# larger, slower, and split into boxes that lose their spaces. "max" leaves images at their own size (rapidocr
# 1.4 rounds to multiples of 32 and shrinks only past 2000 px, whatever the side length says). Measured in
# docs/benchmarks.md, "OCR accuracy".
DETECTOR_OPTIONS: dict[str, Any] = {"det_limit_type": "max", "det_limit_side_len": 960}

# How much likelier the CTC blank may be than a space, in the gap between two letters, for the gap to read as
# a word space. The PP-OCRv4 "ch" recogniser learnt mostly Chinese: between Latin words it hesitates between
# blank and space, and greedy decoding (odds 1) drops the space ("Madein2024"); too high odds read letter gaps
# as spaces. The value is the best of the sweep in docs/benchmarks.md, "OCR accuracy".
SPACE_ODDS = 150.0
# Latin typography: a space follows ":" ";" "," (not between digits: 12:30, 1,000) and never precedes them
# or ".". The recogniser hears the space after a colon faintly; these priors restore it (docs/benchmarks.md).
PUNCTUATION_ODDS = 10.0
_SPACE_AFTER = frozenset(":;,")
_NO_SPACE_BEFORE = frozenset(":;,.")


def _is_cjk(char: str) -> bool:
    return "\u3040" <= char <= "\u30ff" or "\u3400" <= char <= "\u9fff"


class SpacedCtcDecoder:
    """Greedy CTC decoding that keeps word spaces.

    Between two letters, the gap reads as a space when, in one of its frames, the blank is less than
    ``space_odds`` times likelier than the space (shifted by the punctuation priors above). A letter's frame
    is never overridden. Chinese and Japanese need no word spaces: between two of their characters only a
    space the recogniser prefers outright is kept, as in rapidocr's own decoding.

    Call-compatible with rapidocr's ``CTCLabelDecode``, whose place it takes on the recogniser (word boxes
    aside). ``characters`` is rapidocr's list: the CTC blank first, the space last.

    >>> # one line, five frames of softmax over (blank, a, b, space): "a", gap, "b", a faint space, "a"
    >>> probs = np.array([[[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0.6, 0, 0, 0.4], [0, 1, 0, 0]]], np.float32)
    >>> SpacedCtcDecoder(["blank", "a", "b", " "])(probs)
    [('ab a', 1.0)]
    """

    def __init__(self, characters: Sequence[str], space_odds: float = SPACE_ODDS) -> None:
        self.character = list(characters)
        self._space = len(self.character) - 1
        self._space_odds = space_odds

    def __call__(self, preds: np.ndarray, return_word_box: bool = False, **_: Any) -> list[tuple[str, float]]:
        if return_word_box:
            raise NotImplementedError("SpacedCtcDecoder does not compute word boxes")
        ids = preds.argmax(axis=2)
        probs = preds.max(axis=2)
        # Per frame, how much likelier the blank is than a space: 0 where the space wins, inf on a letter.
        odds = preds[:, :, 0] / np.maximum(preds[:, :, self._space], 1e-30)
        odds = np.where(ids == self._space, 0.0, np.where(ids == 0, odds, np.inf))
        return [self._decode(*row) for row in zip(ids.tolist(), probs.tolist(), odds.tolist(), strict=True)]

    def _decode(self, ids: list[int], probs: list[float], odds: list[float]) -> tuple[str, float]:
        text: list[str] = []
        read: list[float] = []
        previous, gap = 0, float("inf")
        for i, prob, frame_odds in zip(ids, probs, odds, strict=True):
            if i == 0 or i == self._space:
                gap = min(gap, frame_odds)
            elif i != previous:  # a new letter (a repeat needs a blank or a space between)
                char = self.character[i]
                if text and gap < self._odds(text, char):
                    text.append(" ")
                text.append(char)
                read.append(prob)
                gap = float("inf")
            previous = i
        # Confidence is the recogniser's, on the letters it read; an inferred space has none of its own.
        return "".join(text), sum(read) / len(read) if read else 0.0

    def _odds(self, text: list[str], char: str) -> float:
        before = text[-1]
        if _is_cjk(before) and _is_cjk(char):
            return 1.0
        odds = self._space_odds
        if before in _SPACE_AFTER and char.isalnum() and not (len(text) > 1 and text[-2].isdigit()):
            odds *= PUNCTUATION_ODDS
        if char in _NO_SPACE_BEFORE:
            odds /= PUNCTUATION_ODDS
        return odds


class RapidOcrEngine:
    """Reads text lines with boxes and confidences, in reading order, with their word spaces.

    >>> RapidOcrEngine.load().read(label).text
    'Serial No: SN-4X7Q-2291-B\\nModel: ZX-900 Made in 2024'
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
                "OCR needs rapidocr-onnxruntime, part of Sight's install: pip install rapidocr-onnxruntime"
            ) from exc
        engine = RapidOCR(**DETECTOR_OPTIONS)
        # rapidocr has no setting for its CTC decoding: replace the recogniser's decoder (as laid out in 1.4).
        decoder = getattr(getattr(engine, "text_rec", None), "postprocess_op", None)
        if characters := getattr(decoder, "character", None):
            engine.text_rec.postprocess_op = SpacedCtcDecoder(characters)
        else:
            log.warning("rapidocr-onnxruntime has no CTC decoder where Sight expects one: OCR may drop spaces")
        return cls(engine)

    def read(self, image: Image.Image) -> OcrText:
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        with self._lock:
            raw, _elapsed = self._engine(bgr)
        found: list[tuple[OcrLine, np.ndarray]] = []
        for points, text, score in raw or []:
            quad = np.asarray(points, dtype=np.float64)
            box = Box(*(round(float(v), 2) for v in (*quad.min(axis=0), *quad.max(axis=0))))
            found.append((OcrLine(text=str(text), confidence=round(float(score), 4), box=box), quad))
        lines = reading_order(found)
        return OcrText(text="\n".join(ln.text for ln in lines), lines=lines)


def reading_order(found: list[tuple[OcrLine, np.ndarray]]) -> list[OcrLine]:
    """Rows top to bottom, left to right within a row, for lines with their detector quads (top-left,
    top-right, bottom-right, bottom-left). Two lines share a row when the middle of one's left edge lies on
    the other extended along its slope: fields side by side on a tilted label share a row, which sorting boxes
    by their top cannot tell (docs/benchmarks.md, "OCR accuracy")."""
    rows: list[tuple[_Band, list[_Band]]] = []  # (the row's longest line, its lines)
    for band in sorted((_Band(line, quad) for line, quad in found), key=lambda b: b.middle):
        for i, (anchor, members) in enumerate(rows):
            if anchor.holds(band) or band.holds(anchor):
                members.append(band)
                rows[i] = (max(anchor, band, key=lambda b: b.length), members)
                break
        else:
            rows.append((band, [band]))
    left = min((anchor.x for anchor, _ in rows), default=0.0)
    rows.sort(key=lambda row: row[0].y_at(left))
    return [band.line for _, members in rows for band in sorted(members, key=lambda b: b.x)]


class _Band:
    """A detected line as a slanted band: the middle of its left edge, its slope, length and half height."""

    def __init__(self, line: OcrLine, quad: np.ndarray) -> None:
        self.line = line
        self.x, self.y = (float(v) for v in (quad[0] + quad[3]) / 2)
        dx, dy = (float(v) for v in quad[1] - quad[0])
        self.slope = dy / dx if dx > 0 else 0.0
        self.length = float(np.hypot(dx, dy))
        self.half_height = float(np.linalg.norm(quad[3] - quad[0])) / 2
        self.middle = float(quad[:, 1].mean())

    def y_at(self, x: float) -> float:
        return self.y + self.slope * (x - self.x)

    def holds(self, other: _Band) -> bool:
        return abs(other.y - self.y_at(other.x)) < self.half_height
