"""How well Sight's OCR reads nameplate labels, next to bare rapidocr, measured in the same run.

    python bench/ocr_accuracy.py                  # 60 labels, seed 0
    python bench/ocr_accuracy.py --n 100 --seed 7

Renders a seeded set of nameplate-like labels (serial and model numbers, lot codes, ratings) in DejaVu
fonts at 14-36 px, rotated up to 7 degrees, blurred and JPEG-compressed, some alone and some pasted into
the shared photos, and reads each with:

- **rapidocr, defaults**: ``RapidOCR()`` as it ships (detector limit ``min`` 736);
- **rapidocr, max-960**: ``RapidOCR(det_limit_type="max", det_limit_side_len=960)``;
- **Sight**: ``RapidOcrEngine.load()``.

A reference line is **exact** when some OCR line equals it after trimming. **CER** is the edit distance
from each reference line to its closest OCR line, summed, over the summed reference length (text the OCR
finds in the photos around a label costs nothing). The three readers take turns image by image so machine
noise hits all of them; ms/image is the median, and "time vs max-960" the median over images of each
reader's time over max-960's on the same image: the figure to read.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from common import SHARED
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIR = "/usr/share/fonts/truetype/dejavu/"
FONTS = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf", "DejaVuSerif.ttf", "DejaVuSansCondensed.ttf"]
BACKDROPS = ["bus.jpg", "rocket.jpg", "astronaut.png", "coffee.png", "chelsea.png"]
# Serial alphabets leave out I and O, as most manufacturers do: they cannot be told from 1 and 0.
CODE = "ABCDEFGHJKLMNPRSTUVWXYZ"
ALNUM = CODE + string.digits


def _code(rng: random.Random, pattern: str) -> str:
    """``A`` a letter, ``9`` a digit, ``X`` either; anything else is kept."""
    pick = {"A": CODE, "9": string.digits, "X": ALNUM}
    return "".join(rng.choice(pick[c]) if c in pick else c for c in pattern)


LINES: list[Callable[[random.Random], str]] = [
    lambda r: f"Serial No: {_code(r, 'AA-9XXA-9999-A')}",
    lambda r: f"S/N: {_code(r, '9XX9-9999-AA')}",
    lambda r: f"LOT {_code(r, '99A-9999')}",
    lambda r: f"Made in {r.randint(2015, 2026)}",
    lambda r: f"Made in {r.choice(['Germany', 'Japan', 'Italy', 'Poland', 'Korea', 'Mexico'])}",
    lambda r: f"Model: {_code(r, 'AA-999')}",
    lambda r: f"Type {_code(r, 'AA 9999')}",
    lambda r: f"P/N {_code(r, '9999-9999')}",
    lambda r: f"Part No. {_code(r, 'A9-9999')}",
    lambda r: f"{r.choice([110, 120, 220, 230, 240])}V {r.choice([50, 60])}Hz {r.choice([0.5, 1.2, 2.5, 6])}A",
    lambda r: f"Input: {r.choice([100, 110, 220])}-240V AC",
    lambda r: f"Output: {r.choice([5, 9, 12, 19, 24])}V DC {r.choice([1.5, 2, 3.42])}A",
    lambda r: f"Power {r.choice([40, 60, 150, 750, 2200])} W",
    lambda r: f"Rated current {r.choice([6, 10, 16, 32])} A",
    lambda r: f"MFG Date: {r.randint(2015, 2026)}-{r.randint(1, 12):02d}",
    lambda r: f"IP{r.choice([44, 54, 65, 67])} Class {r.choice(['I', 'II'])}",
    lambda r: f"Max load {r.choice([50, 120, 250, 500])} kg",
    lambda r: f"REF {_code(r, '9999-99')}",
]


@dataclass
class Sample:
    image: Image.Image
    lines: list[str]
    where: str


@dataclass
class Reader:
    name: str
    read: Callable[[Image.Image], list[str]]
    exact: int = 0
    exact_alone: int = 0
    errors: int = 0
    ms: list[float] = field(default_factory=list)
    misses: list[tuple[str, str]] = field(default_factory=list)


def render_label(rng: random.Random, lines: list[str]) -> Image.Image:
    font = ImageFont.truetype(FONT_DIR + rng.choice(FONTS), rng.randint(14, 36))
    ink = tuple(rng.randint(0, 70) for _ in range(3))
    paper = tuple(rng.randint(185, 255) for _ in range(3))
    if rng.random() < 0.2:  # light print on a dark plate
        ink, paper = paper, ink
    ascent, descent = font.getmetrics()
    step = int((ascent + descent) * rng.uniform(1.3, 1.8))
    widths = [int(font.getlength(line)) for line in lines]
    pad = int(ascent * rng.uniform(0.6, 1.5))
    label = Image.new("RGB", (max(widths) + 2 * pad, step * (len(lines) - 1) + ascent + descent + 2 * pad), paper)
    draw = ImageDraw.Draw(label)
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * step), line, font=font, fill=ink)
    label = label.rotate(rng.uniform(-7, 7), resample=Image.Resampling.BICUBIC, expand=True, fillcolor=paper)
    if (radius := rng.choice([0, 0, 0.5, 0.8, 1.1])) > 0:
        label = label.filter(ImageFilter.GaussianBlur(radius))
    return label


def make_samples(n: int, seed: int) -> list[Sample]:
    rng = random.Random(seed)
    photos = {name: Image.open(SHARED / "images" / name).convert("RGB") for name in BACKDROPS}
    samples = []
    for i in range(n):
        lines = [make(rng) for make in rng.sample(LINES, rng.randint(1, 3))]
        label = render_label(rng, lines)
        where = "alone"
        if i % 2:  # every other label goes into a photo, at a random spot that holds it
            where = rng.choice(BACKDROPS)
            image = photos[where].copy()
            if label.width > image.width or label.height > image.height:
                scale = max(label.width / image.width, label.height / image.height) * 1.1
                image = image.resize((int(image.width * scale), int(image.height * scale)))
            image.paste(label, (rng.randint(0, image.width - label.width), rng.randint(0, image.height - label.height)))
        else:
            margin = rng.randint(0, 40)
            image = Image.new("RGB", (label.width + 2 * margin, label.height + 2 * margin), label.getpixel((0, 0)))
            image.paste(label, (margin, margin))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=rng.randint(40, 92))
        samples.append(Sample(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), lines, where))
    return samples


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def bare_reader(**kwargs: object) -> Callable[[Image.Image], list[str]]:
    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR(**kwargs)

    def read(image: Image.Image) -> list[str]:
        raw, _ = engine(np.ascontiguousarray(np.asarray(image)[:, :, ::-1]))
        return [str(text) for _box, text, _score in raw or []]

    return read


def sight_reader() -> Callable[[Image.Image], list[str]]:
    from sight.engines.rapid_ocr import RapidOcrEngine

    engine = RapidOcrEngine.load()
    return lambda image: [line.text for line in engine.read(image).lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60, help="labels to render")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--misses", action="store_true", help="print every line a reader got wrong")
    args = parser.parse_args()

    samples = make_samples(args.n, args.seed)
    readers = [
        Reader("rapidocr, defaults", bare_reader()),
        Reader("rapidocr, max-960", bare_reader(det_limit_type="max", det_limit_side_len=960)),
        Reader("Sight", sight_reader()),
    ]
    for reader in readers:  # warm-up: first runs pay for ONNX Runtime's allocations
        reader.read(samples[0].image)
    for i, sample in enumerate(samples):
        for reader in readers[i % 3:] + readers[: i % 3]:
            start = time.perf_counter()
            got = [text.strip() for text in reader.read(sample.image)]
            reader.ms.append((time.perf_counter() - start) * 1000)
            for line in sample.lines:
                errors, best = min(((edit_distance(line, text), text) for text in got), default=(len(line), ""))
                reader.exact += line in got
                reader.exact_alone += line in got and sample.where == "alone"
                reader.errors += errors
                if line not in got:
                    reader.misses.append((line, best))

    n_lines = sum(len(s.lines) for s in samples)
    n_alone = sum(len(s.lines) for s in samples if s.where == "alone")
    n_chars = sum(len(line) for s in samples for line in s.lines)
    alone = sum(s.where == "alone" for s in samples)
    print(f"{len(samples)} labels (seed {args.seed}; {alone} alone, {len(samples) - alone} in photos), "
          f"{n_lines} lines, {n_chars} characters")
    print(f"{'reader':<20} {'exact lines':>11} {'alone':>6} {'in photos':>9} {'CER':>7} {'ms/image':>9} "
          f"{'time vs max-960':>16}")
    for reader in readers:
        ms = statistics.median(reader.ms)
        in_photos = (reader.exact - reader.exact_alone) / max(n_lines - n_alone, 1)
        paired = statistics.median(a / b for a, b in zip(reader.ms, readers[1].ms, strict=True))
        print(f"{reader.name:<20} {reader.exact / n_lines:>11.2f} {reader.exact_alone / max(n_alone, 1):>6.2f} "
              f"{in_photos:>9.2f} {reader.errors / n_chars:>7.3f} {ms:>9.0f} {paired:>16.2f}")
    if args.misses:
        for reader in readers:
            print(f"\n{reader.name}: {len(reader.misses)} missed lines")
            for want, best in reader.misses:
                print(f"  {want!r:<36} read {best!r}")


if __name__ == "__main__":
    main()
