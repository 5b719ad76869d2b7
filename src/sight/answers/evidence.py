"""Where a value stands in Sight's own readings: the OCR lines that hold it (exact, normalised for case and
spacing, or near: one or two confusable characters) and the detections whose class it names.

>>> from sight.schemas import Box
>>> line = OcrLineOut(text="S/N: SN-7KD9-0415-QX", confidence=0.98, box=Box(x1=41, y1=12.5, x2=388, y2=44))
>>> [(e.match, e.text) for e in locate("SN-7KD9-0415-QX", [line], [])]
[('exact', 'S/N: SN-7KD9-0415-QX')]
>>> [e.match for e in locate("sn-7kd9-0415-qx", [line], [])], [e.match for e in locate("SN-7KD9- 0415-QX", [line], [])]
(['normalised'], ['normalised'])
>>> [e.match for e in locate("SN-7KD9-O415-QX", [line], [])]  # O for 0
['near']
>>> locate("SN-7KD9-0415-Q", [line], [])  # a value cut short is not in the line
[]
>>> volts = OcrLineOut(text="230V 50Hz", confidence=0.9, box=Box(x1=0, y1=0, x2=9, y2=9))
>>> [e.match for e in locate(230, [volts], [])], locate(23, [volts], [])
(['exact'], [])
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache

from sight.schemas import DetectionOut, Evidence, OcrLineOut

# The characters OCR and vision LLMs confuse, after case folding: O/0, I/1/l, S/5, B/8, Z/2.
CONFUSABLE = {c: group for group in ("o0", "i1l", "s5", "b8", "z2") for c in group}
DASHES = dict.fromkeys(map(ord, "‐‑‒–—―−"), "-")
MAX_NEAR = 2
MIN_NEAR_LENGTH = 4  # shorter values are too easy to find "near" anywhere
MAX_EVIDENCE = 5
RANK = {"exact": 0, "normalised": 1, "near": 2}
NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")  # a fixed pattern of Sight's own, never a user's


@lru_cache(maxsize=4096)  # each OCR line is normalised once per item, not once per field
def normalise(text: str) -> tuple[str, tuple[int, ...]]:
    """``text`` case-folded, NFKC, dashes unified and whitespace removed; and, per character kept, its index in
    ``text`` (so a match found here has its place in the original)."""
    out: list[str] = []
    where: list[int] = []
    for i, ch in enumerate(text):
        if ch.isspace():
            continue
        for c in unicodedata.normalize("NFKC", ch).translate(DASHES).casefold():
            if not c.isspace():
                out.append(c)
                where.append(i)
    return "".join(out), tuple(where)


def value_text(value: object) -> str | None:
    """The text a value would be printed as, or None for what is not looked for (booleans, objects, null)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float | str):
        return str(value).strip() or None
    return None


def _bounded(text: str, start: int, end: int, value: str) -> bool:
    """Whether ``text[start:end]`` stands as a whole token: no letter or digit runs on from either side of an
    alphanumeric end (``SN-7KD9-0415-Q`` is not in ``SN-7KD9-0415-QX``). A number may touch a unit's letters
    (``230`` in ``230V``), not more digits."""
    def joins(ch: str, end_of_value: str) -> bool:
        if not end_of_value.isalnum():
            return False
        return ch.isdigit() or ch == "." if NUMBER.fullmatch(value) else ch.isalnum()

    before = start > 0 and joins(text[start - 1], value[0])
    after = end < len(text) and joins(text[end], value[-1])
    return not (before or after)


def _exact(value: str, text: str) -> bool:
    start = text.find(value)
    while start != -1:
        if _bounded(text, start, start + len(value), value):
            return True
        start = text.find(value, start + 1)
    return False


def _normalised(value: str, text: str, *, near: bool) -> bool:
    """``value`` in ``text`` once both are normalised; with ``near``, up to ``MAX_NEAR`` characters may differ,
    each for one it is confused with."""
    want, _ = normalise(value)
    have, where = normalise(text)
    size = len(want)
    if not size or size > len(have) or (near and size < MIN_NEAR_LENGTH):
        return False
    for start in range(len(have) - size + 1):
        window = have[start:start + size]
        if near:
            differ = [(a, b) for a, b in zip(want, window, strict=True) if a != b]
            if not differ or len(differ) > MAX_NEAR or any(a not in CONFUSABLE or CONFUSABLE[a] != CONFUSABLE.get(b)
                                                           for a, b in differ):
                continue
        elif window != want:
            continue
        if _bounded(text, where[start], where[start + size - 1] + 1, value):
            return True
    return False


def match_line(value: str, text: str) -> str | None:
    """How ``value`` stands in the OCR line ``text``: ``exact``, ``normalised``, ``near``, or None."""
    if _exact(value, text):
        return "exact"
    if _normalised(value, text, near=False):
        return "normalised"
    if _normalised(value, text, near=True):
        return "near"
    return None


def line_evidence(line: OcrLineOut, match: str) -> Evidence:
    return Evidence(source="ocr", match=match, text=line.text, confidence=line.confidence, box=line.box)


def locate(value: object, lines: Sequence[OcrLineOut], detections: Iterable[DetectionOut],
           cited: Iterable[int] = ()) -> list[Evidence]:
    """Evidence for ``value``, best first: matches by kind (exact, normalised, near), then the lines the model
    cited (1-based OCR line numbers; a citation of a line that does not hold the value counts for nothing),
    then in reading order; detections whose class name the value is."""
    text = value_text(value)
    if text is None:
        return []
    cited_lines = set(cited)
    found: list[tuple[int, int, int, Evidence]] = []
    for number, line in enumerate(lines, start=1):
        match = match_line(text, line.text)
        if match is not None:
            found.append((RANK[match], number not in cited_lines, number, line_evidence(line, match)))
    found.sort(key=lambda f: f[:3])
    evidence = [f[3] for f in found[:MAX_EVIDENCE]]
    want = normalise(text.replace("_", " "))[0]
    for d in detections:
        if normalise(d.name.replace("_", " "))[0] == want and len(evidence) < 2 * MAX_EVIDENCE:
            evidence.append(Evidence(source="detection", match="exact" if d.name == text else "normalised",
                                     name=d.name, confidence=d.confidence, box=d.box))
    return evidence
