from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from sight.config import ImageSettings
from sight.engines.base import OcrEngine
from sight.engines.spaced_ctc import SpacedCtcDecoder
from sight.errors import InvalidImageError
from sight.images.decode import decode_image
from tests.conftest import IMAGES
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


def _photo_with_label(size: tuple[int, int], at: tuple[int, int], scale: float = 1.0) -> Image.Image:
    photo = Image.open(IMAGES / "bus.jpg").convert("RGB").resize(size, Image.Resampling.BICUBIC)
    label = Image.open(IMAGES / "serial-label.png").convert("RGB")
    if scale != 1.0:
        label = label.resize((round(label.width * scale), round(label.height * scale)), Image.Resampling.BICUBIC)
    photo.paste(label, at)
    return photo


def test_ocr_reads_a_nameplate_in_a_12_megapixel_photo_in_its_pixels(ocr_engine: OcrEngine) -> None:
    """The detector sees the photo reduced (about 1150x870): the label's print, 40 px high here, is 12 px
    there. The closer look and the crops from the original read it exactly, boxes in the original's pixels."""
    photo = _photo_with_label((3000, 4000), (2100, 3300))
    lines = {ln.text: ln for ln in ocr_engine.read(photo).lines}
    assert {"Serial No: SN-4X7Q-2291-B", "Model: ZX-900 Made in 2024"} <= set(lines), list(lines)
    box = lines["Serial No: SN-4X7Q-2291-B"].box
    # serial-label.png holds that line at x 16-514, y 60-103: pasted at (2100, 3300), within a few pixels.
    assert abs(box.x1 - 2116) < 12 and abs(box.y1 - 3360) < 12 and abs(box.x2 - 2614) < 12 and abs(box.y2 - 3403) < 12


def test_ocr_reads_a_small_plate_that_looks_like_one_block_from_afar(ocr_engine: OcrEngine) -> None:
    """A plate a third of its size in a 12 MP photo: from the reduced image the detector sees it as one faint
    block (as bare rapidocr does, which reads nothing there); the closer look finds its lines."""
    photo = _photo_with_label((4000, 3000), (300, 2400), scale=0.6)
    assert "Serial No: SN-4X7Q-2291-B" in [ln.text for ln in ocr_engine.read(photo).lines]


def test_ocr_enlarges_small_print_that_it_would_cut_across_lines(ocr_engine: OcrEngine) -> None:
    """page.png is a photo of a printed page, its print about 12 px high: at its own size the detector boxes
    cut across neighbouring lines and the recogniser reads them as noise."""
    lines = [ln.text for ln in ocr_engine.read(decode_image(image_bytes("page.png"), ImageSettings())).lines]
    assert lines[:6] == [
        "Region-based segmentation",
        "Let us first determine markers of the coins and the",
        "background. These markers are pixels that we can label",
        "unambiguously as either object or background. Here,",
        "the markers are found at the two extreme parts of the",
        "histogram of grey values:",
    ], lines


@pytest.mark.parametrize("size", [(1, 60000), (60000, 1), (7, 400), (4000, 30)])
def test_ocr_refuses_shapes_it_cannot_read_as_invalid_image(ocr_engine: OcrEngine, size: tuple[int, int]) -> None:
    with pytest.raises(InvalidImageError, match="OCR") as raised:
        ocr_engine.read(Image.new("RGB", size, "white"))
    assert raised.value.code == "invalid_image"


def test_ocr_reads_the_widest_and_the_thinnest_shapes_it_accepts(ocr_engine: OcrEngine) -> None:
    face = ImageFont.truetype(str(DEJAVU / "DejaVuSans.ttf"), 20)
    strip = Image.new("RGB", (2400, 24), "white")  # 100:1
    ImageDraw.Draw(strip).text((8, 0), "LOT 23B-0917", font=face, fill="black")
    assert [ln.text for ln in ocr_engine.read(strip).lines] == ["LOT 23B-0917"]
    assert ocr_engine.read(Image.new("RGB", (8, 8), "white")).lines == []


def test_ocr_loading_logs_through_sight_without_info_lines(caplog: pytest.LogCaptureFixture) -> None:
    """rapidocr logs three INFO lines per model load through its own colour handler on stderr; Sight sends its
    records through the application's logging, warnings and errors only."""
    import logging

    from sight.engines.rapid_ocr import RapidOcrEngine

    caplog.set_level(logging.DEBUG, logger="RapidOCR")  # what the RapidOCR logger lets through, Sight's rule set
    caplog.set_level(logging.INFO, logger="sight")
    engine = RapidOcrEngine.load()
    rapidocr = logging.getLogger("RapidOCR")
    assert rapidocr.handlers == [] and rapidocr.propagate
    assert rapidocr.level == logging.WARNING
    assert [r for r in caplog.records if r.name == "RapidOCR" and r.levelno < logging.WARNING] == []
    assert engine.provider == "CPU"
    assert any(r.name == "sight.engines.rapid_ocr" and "PP-OCRv6 detection small, recognition small, on CPU"
               in r.getMessage() for r in caplog.records)


CHARACTERS = ["blank", "a", "b", ":", "1", "\uff1a", "\u4e2d", " "]


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
        (("a", (0.4, 0.6), "b"), "a b"),  # the space wins a frame of the gap: a word space
        (("a", (0.6, 0.4), "b"), "ab"),  # the blank wins every frame: letters of one word
        (("a", (0.5, 0.4), (0.4, 0.6), (0.9, 0.0), "a"), "a a"),  # one space however many frames
        (("a", (0.1, 0.0), "b", "b", (0.1, 0.0), "b"), "abb"),  # CTC: a repeat needs a blank between
        (("a", ":", (0.9, 0.1), "b"), "a: b"),  # 9x: enough after a colon (heard faintly)
        (("a", ":", (0.99, 0.001), "b"), "a:b"),  # 990x: no space heard at all
        (("a", (0.3, 0.7), ":", "b"), "a :b"),  # a space read outright stays: the recogniser's reading
        (("1", ":", (0.9, 0.1), "1"), "1:1"),  # between digits (12:30): the recogniser's own reading
        (("a", "\uff1a", (0.9, 0.1), "b"), "a: b"),  # a full-width colon in a Latin line is a colon
        (("\u4e2d", "\uff1a", "\u4e2d"), "\u4e2d\uff1a\u4e2d"),  # kept full width among Chinese
        (((0.4, 0.6), "a", (0.4, 0.6)), "a"),  # no leading or trailing space
    ],
)
def test_spaced_ctc_decoder_reads_word_spaces_from_gap_frames(spec: tuple, text: str) -> None:
    assert SpacedCtcDecoder(CHARACTERS)(_frames(*spec))[0][0] == text


def test_spaced_ctc_decoder_never_overrides_a_letter_and_scores_letters_only() -> None:
    preds = _frames("a", (0.4, 0.6), "b")
    preds[0, 2, [2, -1]] = 0.40, 0.38  # the space nearly as likely as the letter: still the letter
    [(text, confidence)] = SpacedCtcDecoder(CHARACTERS)(preds)
    assert text == "a b"
    assert confidence == pytest.approx((0.9 + 0.40) / 2)
