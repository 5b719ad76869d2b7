"""Greedy CTC decoding of the PP-OCR recogniser's output, with Latin word spaces and punctuation kept.

Sight runs the recogniser's session itself and decodes its per-frame probabilities here. The PP-OCRv6
recogniser reads word spaces well on its own (greedy decoding, ``space_odds`` 1); what it still misses is the
space after a colon ("S/N:7590"), which it hears faintly, and it sometimes writes a colon full width
(U+FF1A) inside Latin text. Both are mended here, from the recogniser's own probabilities and only in lines
with no Chinese or Japanese (docs/benchmarks.md, "OCR accuracy").

>>> # one line, five frames of softmax over (blank, a, b, :, space): "a", ":", a faint space, "b"
>>> probs = np.array([[[0, 1, 0, 0, 0], [0, 0, 0, 1, 0], [0.9, 0, 0, 0, 0.1], [0, 0, 1, 0, 0]]], np.float32)
>>> SpacedCtcDecoder(["blank", "a", "b", ":", " "])(probs)
[('a: b', 1.0)]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# How much likelier the CTC blank may be than a space, in the gap between two letters, for the gap to read as
# a word space. 1: the space must win one frame of the gap outright, as in plain greedy decoding. PP-OCRv4
# needed 150 (it hesitated between blank and space between Latin words); on PP-OCRv6 every value from 1 to
# 30 reads the bench's labels the same, and a high one invents spaces in downscaled print ("SN- 7KD9").
SPACE_ODDS = 1.0
# Latin typography: a space follows ":" ";" "," (not between digits: 12:30, 1,000). The recogniser hears the
# space after a colon faintly; this prior restores it (docs/benchmarks.md, "OCR accuracy").
PUNCTUATION_ODDS = 10.0
_SPACE_AFTER = frozenset(":;,")
# Full-width forms of ASCII (U+FF01-U+FF5E) and the ideographic space, as written in Latin lines.
_HALF_WIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


def is_cjk(char: str) -> bool:
    return "\u3040" <= char <= "\u30ff" or "\u3400" <= char <= "\u9fff"


class SpacedCtcDecoder:
    """Greedy CTC decoding that keeps word spaces.

    Between two letters, the gap reads as a space when, in one of its frames, the blank is less than
    ``space_odds`` times likelier than the space (shifted by the punctuation priors above). A letter's frame
    is never overridden. Chinese and Japanese need no word spaces: between two of their characters only a
    space the recogniser prefers outright is kept. ``characters`` is the recogniser's list as PaddleOCR lays
    it out: the CTC blank first, the model's dictionary, the space last.
    """

    def __init__(self, characters: Sequence[str], space_odds: float = SPACE_ODDS) -> None:
        self.character = list(characters)
        self._space = len(self.character) - 1
        self._space_odds = space_odds

    def __call__(self, preds: np.ndarray) -> list[tuple[str, float]]:
        """(text, confidence) per line of ``preds`` (lines x frames x classes, softmax)."""
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
        line = "".join(text)
        if not any(is_cjk(c) for c in line):
            line = line.translate(_HALF_WIDTH)
        # Confidence is the recogniser's, on the letters it read; an inferred space has none of its own.
        return line, sum(read) / len(read) if read else 0.0

    def _odds(self, text: list[str], char: str) -> float:
        before = text[-1]
        if is_cjk(before) and is_cjk(char):
            return 1.0
        odds = self._space_odds
        if before.translate(_HALF_WIDTH) in _SPACE_AFTER and char.isalnum() and not (
                len(text) > 1 and text[-2].isdigit()):
            odds *= PUNCTUATION_ODDS
        return odds
