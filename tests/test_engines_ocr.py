from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from sight.config import ImageSettings
from sight.engines.base import OcrEngine
from sight.engines.rapid_ocr import SpacedCtcDecoder
from sight.images.decode import decode_image
from tests.helpers import image_bytes

DEJAVU = Path("/usr/share/fonts/truetype/dejavu")


def test_ocr_reads_serial_number(ocr_engine: OcrEngine) -> None:
    result = ocr_engine.read(decode_image(image_bytes("serial-label.png"), ImageSettings()))
    assert "SN-4X7Q-2291-B" in result.text.replace(" ", "")
    line = next(ln for ln in result.lines if "SN-4X7Q" in ln.text)
    assert line.confidence > 0.8
    assert 0 <= line.box.x1 < line.box.x2 <= 640 and 0 <= line.box.y1 < line.box.y2 <= 240


def test_ocr_reads_printed_page(ocr_engine: OcrEngine) -> None:
    result = ocr_engine.read(decode_image(image_bytes("page.png"), ImageSettings()))
    assert "segmentation" in result.text
    assert len(result.lines) >= 4


def test_ocr_reads_serial_label_with_its_word_spaces(ocr_engine: OcrEngine) -> None:
    result = ocr_engine.read(decode_image(image_bytes("serial-label.png"), ImageSettings()))
    # The label's second row is "Model: ZX-900  Made in 2024" (two spaces): read as one line, one space.
    assert [ln.text for ln in result.lines] == ["Serial No: SN-4X7Q-2291-B", "Model: ZX-900 Made in 2024"]
    assert result.text == "Serial No: SN-4X7Q-2291-B\nModel: ZX-900 Made in 2024"
    assert all(ln.confidence > 0.9 for ln in result.lines)
    assert result.lines[0].box.y2 < result.lines[1].box.y1


def _label(text: str, font: str, size: int, angle: float, quality: int) -> Image.Image:
    face = ImageFont.truetype(str(DEJAVU / font), size)
    ascent, descent = face.getmetrics()
    label = Image.new("RGB", (int(face.getlength(text)) + 2 * size, ascent + descent + 2 * size), (236, 232, 220))
    ImageDraw.Draw(label).text((size, size), text, font=face, fill=(25, 25, 30))
    label = label.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(236, 232, 220))
    out = io.BytesIO()
    label.save(out, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(out.getvalue())).convert("RGB")


def test_ocr_reads_rendered_nameplates_with_their_word_spaces(ocr_engine: OcrEngine) -> None:
    rng = random.Random(12)
    texts = ["S/N: 8RX2-5501-KT", "LOT 23B-0917", "Made in 2024", "Output: 12V DC 2.5A", "Max load 250 kg",
             "Part No. A7-2210"]
    fonts = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf", "DejaVuSerif.ttf",
             "DejaVuSansCondensed.ttf"]
    for i, text in enumerate(texts):
        font = fonts[i % len(fonts)]
        image = _label(text, font, rng.randint(18, 30), rng.uniform(-4, 4), rng.randint(60, 90))
        lines = [ln.text for ln in ocr_engine.read(image).lines]
        assert lines == [text], font


@pytest.mark.parametrize("angle", [-6, 4, 6])
def test_ocr_reads_a_tilted_two_column_label_in_reading_order(ocr_engine: OcrEngine, angle: float) -> None:
    rows = [("Model: ZX-900", "Made in 2024"), ("LOT 23B-0917", "230V 50Hz"), ("S/N: 8RX2-5501-KT", "IP65")]
    face = ImageFont.truetype(str(DEJAVU / "DejaVuSans.ttf"), 22)
    label = Image.new("RGB", (620, 200), "white")
    draw = ImageDraw.Draw(label)
    for i, (left, right) in enumerate(rows):
        draw.text((20, 20 + 55 * i), left, font=face, fill="black")
        draw.text((380, 17 + 55 * i), right, font=face, fill="black")
    # Tilted up to the right, a row's right field sits higher than its left one: sorting by top misorders it.
    label = label.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor="white")
    assert [ln.text for ln in ocr_engine.read(label).lines] == [text for row in rows for text in row]


CHARACTERS = ["blank", "a", "b", ":", "1", " "]


def _frames(*spec: str | tuple[float, float]) -> np.ndarray:
    """CTC output for one line: a letter read at 0.9, or a gap frame's (blank, space) probabilities."""
    rows = []
    for item in spec:
        row = np.zeros(len(CHARACTERS), dtype=np.float32)
        if isinstance(item, str):
            row[CHARACTERS.index(item)], row[0] = 0.9, 0.1
        else:
            row[0], row[-1] = item
        rows.append(row)
    return np.asarray([rows])


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        (("a", (0.98, 0.01), "b"), "a b"),  # the blank only 98x likelier: a word space
        (("a", (0.999, 0.0001), "b"), "ab"),  # 9990x likelier: letters of one word
        (("a", (0.5, 0.4), (0.4, 0.5), (0.9, 0.0), "a"), "a a"),  # one space however many frames
        (("a", (0.1, 0.0), "b", "b", (0.1, 0.0), "b"), "abb"),  # CTC: a repeat needs a blank between
        (("a", ":", (0.99, 0.002), "b"), "a: b"),  # 495x: enough after a colon
        (("a", (0.98, 0.02), ":", "b"), "a:b"),  # 49x: not enough before a colon
        (("1", ":", (0.99, 0.002), "1"), "1:1"),  # 495x between digits (12:30): not enough
        (((0.5, 0.5), "a", (0.5, 0.5)), "a"),  # no leading or trailing space
    ],
)
def test_spaced_ctc_decoder_reads_word_spaces_from_gap_frames(spec: tuple, text: str) -> None:
    assert SpacedCtcDecoder(CHARACTERS)(_frames(*spec))[0][0] == text


def test_spaced_ctc_decoder_never_overrides_a_letter_and_scores_letters_only() -> None:
    preds = _frames("a", (0.98, 0.01), "b")
    preds[0, 2, [2, -1]] = 0.40, 0.38  # the space nearly as likely as the letter: still the letter
    [(text, confidence)] = SpacedCtcDecoder(CHARACTERS)(preds)
    assert text == "a b"
    assert confidence == pytest.approx((0.9 + 0.40) / 2)
    assert SpacedCtcDecoder(CHARACTERS, space_odds=1.0)(preds)[0][0] == "ab"  # rapidocr's greedy decoding
