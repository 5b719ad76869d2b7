from __future__ import annotations

from sight.config import ImageSettings
from sight.core.images import decode_image
from sight.engines.base import OcrEngine
from tests.helpers import image_bytes


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
