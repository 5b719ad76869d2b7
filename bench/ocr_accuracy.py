"""How well Sight's OCR reads nameplate labels, next to bare rapidocr, measured in the same run.

    python bench/ocr_accuracy.py                                   # 60 labels, seed 0
    python bench/ocr_accuracy.py --n 100 --seed 7 --misses
    python bench/ocr_accuracy.py --readers sight --save run.json   # keep one reader's reads for a later run
    python bench/ocr_accuracy.py --saved bench/results/ocr-sight-rapidocr-1.4.json

Renders a seeded set of nameplate-like labels (serial and model numbers, lot codes, ratings) in DejaVu
fonts, rotated up to 7 degrees, blurred and JPEG-compressed. Half stand **alone** (14-36 px print, the
label filling the image); half are pasted into **12 MP photos** (the shared photos at 4000x3000 or
3000x4000, 24-60 px print: a phone photo of a machine with its plate). Each JPEG is read by:

- **Sight**: a ``sight serve`` of this checkout, through its HTTP API (``is_ocr`` alone, the JPEG uploaded
  as a user would), so its time includes the upload, the decode and the response;
- **rapidocr 3**: bare ``RapidOCR()`` of the installed ``rapidocr`` with its defaults, on the decoded image;
- **saved** readers (``--saved``): the reads and times of an earlier run of this bench, over the same
  labels (checked), such as Sight on rapidocr-onnxruntime 1.4 before the move to rapidocr 3.

A reference line is **exact** when some OCR line equals it after trimming. **CER** is the edit distance
from each reference line to its closest OCR line, summed, over the summed reference length (text the OCR
finds in the photos around a label costs nothing). The live readers take turns image by image so machine
noise hits all of them; ms/image is the median, and "vs rapidocr 3" the median over images of the reader's
time over bare rapidocr 3's on the same image, in the same run: the figure to read. A saved reader's times
come from another run, so it gets no ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import statistics
import string
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from common import DEFAULT_MODEL, SHARED, spawn_server
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIR = "/usr/share/fonts/truetype/dejavu/"
FONTS = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf", "DejaVuSerif.ttf", "DejaVuSansCondensed.ttf"]
BACKDROPS = ["bus.jpg", "rocket.jpg", "astronaut.png", "coffee.png", "chelsea.png"]
PHOTO_SIZE = (4000, 3000)  # 12 MP, turned to portrait for portrait photos
GROUPS = ("alone", "12 MP photo")
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
    jpeg: bytes
    lines: list[str]
    group: str

    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.jpeg)).convert("RGB")


@dataclass
class Reader:
    name: str
    read: Callable[[Sample], list[str]] | None  # None: a saved reader, whose reads and times are given
    reads: list[list[str]] = field(default_factory=list)
    ms: list[float] = field(default_factory=list)


def render_label(rng: random.Random, lines: list[str], sizes: tuple[int, int]) -> Image.Image:
    font = ImageFont.truetype(FONT_DIR + rng.choice(FONTS), rng.randint(*sizes))
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


def _photo(name: str) -> Image.Image:
    photo = Image.open(SHARED / "images" / name).convert("RGB")
    size = PHOTO_SIZE if photo.width >= photo.height else PHOTO_SIZE[::-1]
    return photo.resize(size, Image.Resampling.BICUBIC)


def make_samples(n: int, seed: int) -> list[Sample]:
    rng = random.Random(seed)
    photos: dict[str, Image.Image] = {}
    samples = []
    for i in range(n):
        lines = [make(rng) for make in rng.sample(LINES, rng.randint(1, 3))]
        if i % 2:  # every other label goes into a 12 MP photo, at a random spot
            label = render_label(rng, lines, (24, 60))
            name = rng.choice(BACKDROPS)
            image = (photos[name] if name in photos else photos.setdefault(name, _photo(name))).copy()
            image.paste(label, (rng.randint(0, image.width - label.width), rng.randint(0, image.height - label.height)))
        else:
            label = render_label(rng, lines, (14, 36))
            margin = rng.randint(0, 40)
            image = Image.new("RGB", (label.width + 2 * margin, label.height + 2 * margin), label.getpixel((0, 0)))
            image.paste(label, (margin, margin))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=rng.randint(40, 92))
        samples.append(Sample(buf.getvalue(), lines, GROUPS[i % 2]))
    return samples


def fingerprint(samples: list[Sample]) -> str:
    """Names the label set: a saved run is comparable only over the same labels."""
    return hashlib.sha256(json.dumps([s.lines for s in samples]).encode()).hexdigest()[:16]


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def bare_rapidocr() -> Callable[[Sample], list[str]]:
    from rapidocr import RapidOCR

    engine = RapidOCR(params={"Global.log_level": "warning"})  # its defaults; only its log quieter

    def read(sample: Sample) -> list[str]:
        out = engine(np.ascontiguousarray(np.asarray(sample.image())[:, :, ::-1]))  # BGR, as rapidocr wants
        return [str(text) for text in out.txts or ()]

    return read


@contextmanager
def sight_over_http() -> Iterator[Callable[[Sample], list[str]]]:
    from sight.client import Client

    with tempfile.TemporaryDirectory() as workdir:
        proc, url, key = spawn_server(DEFAULT_MODEL, Path(workdir))
        try:
            with Client(url, key) as sight:
                def read(sample: Sample) -> list[str]:
                    [item] = sight.predict(sample.jpeg, yolo=False, ocr=True).result.items
                    if item.ocr is None:
                        raise SystemExit(f"Sight failed on a label: {item.error}")
                    return [line.text for line in item.ocr.lines]

                yield read
        finally:
            proc.terminate()
            proc.wait(30)


def load_saved(path: Path, print_: str) -> Reader:
    saved = json.loads(path.read_text())
    if saved["labels"] != print_:
        raise SystemExit(f"{path} read other labels ({saved['labels']}, this run {print_}): use its --n/--seed")
    return Reader(saved["reader"] + " (saved)", None, saved["reads"], saved["ms"])


def score(reader: Reader, samples: list[Sample], group: str) -> tuple[float, float, list[tuple[str, str]]]:
    """Exact-line rate, CER and the missed lines (wanted, closest read) of ``reader`` over ``group``."""
    exact = errors = lines = chars = 0
    misses = []
    for sample, got in zip(samples, reader.reads, strict=True):
        if sample.group != group:
            continue
        got = [text.strip() for text in got]
        for line in sample.lines:
            distance, best = min(((edit_distance(line, text), text) for text in got), default=(len(line), ""))
            exact += line in got
            errors += distance
            lines += 1
            chars += len(line)
            if line not in got:
                misses.append((line, best))
    return exact / max(lines, 1), errors / max(chars, 1), misses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60, help="labels to render")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--readers", default="sight,rapidocr", help="live readers: sight, rapidocr")
    parser.add_argument("--saved", type=Path, action="append", default=[], help="a --save file to add")
    parser.add_argument("--save", type=Path, help="write the first live reader's reads and times here")
    parser.add_argument("--name", help="the name --save gives the reader (e.g. 'Sight on rapidocr 1.4')")
    parser.add_argument("--misses", action="store_true", help="print every line a reader got wrong")
    args = parser.parse_args()

    samples = make_samples(args.n, args.seed)
    labels = fingerprint(samples)
    with ExitStack() as stack:
        live = []
        for name in args.readers.split(","):
            if name == "sight":
                live.append(Reader("Sight (HTTP)", stack.enter_context(sight_over_http())))
            elif name == "rapidocr":
                live.append(Reader("rapidocr 3, bare", bare_rapidocr()))
            else:
                raise SystemExit(f"unknown reader {name!r}")
        for reader in live:  # warm-up: first runs pay for model loads and ONNX Runtime's allocations
            for sample in samples[:2]:
                reader.read(sample)  # type: ignore[misc]
        for i, sample in enumerate(samples):
            for reader in live[i % len(live):] + live[: i % len(live)]:
                start = time.perf_counter()
                reader.reads.append(reader.read(sample))  # type: ignore[misc]
                reader.ms.append((time.perf_counter() - start) * 1000)

    if args.save:
        args.save.write_text(json.dumps({"reader": args.name or live[0].name, "labels": labels, "n": args.n,
                                         "seed": args.seed, "reads": live[0].reads, "ms": live[0].ms}))
    readers = live + [load_saved(path, labels) for path in args.saved]
    bare = next((r for r in live if r.name.startswith("rapidocr 3")), None)

    n_lines = {g: sum(len(s.lines) for s in samples if s.group == g) for g in GROUPS}
    print(f"{len(samples)} labels (seed {args.seed}, set {labels}): "
          + ", ".join(f"{sum(s.group == g for s in samples)} {g} ({n_lines[g]} lines)" for g in GROUPS))
    print(f"{'reader':<30} {'group':<12} {'exact lines':>11} {'CER':>7} {'ms/image':>9} {'vs rapidocr 3':>14}")
    for reader in readers:
        for group in GROUPS:
            exact, cer, _ = score(reader, samples, group)
            picked = [i for i, s in enumerate(samples) if s.group == group]
            ms = statistics.median(reader.ms[i] for i in picked)
            ratio = "-"
            if bare is not None and reader.read is not None and reader is not bare:
                ratio = f"{statistics.median(reader.ms[i] / bare.ms[i] for i in picked):.2f}"
            print(f"{reader.name:<30} {group:<12} {exact:>11.3f} {cer:>7.4f} {ms:>9.0f} {ratio:>14}")
    if args.misses:
        for reader in readers:
            for group in GROUPS:
                misses = score(reader, samples, group)[2]
                print(f"\n{reader.name}, {group}: {len(misses)} missed lines")
                for want, best in misses:
                    print(f"  {want!r:<36} read {best!r}")


if __name__ == "__main__":
    main()
