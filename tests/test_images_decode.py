from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

import sight
import sight.errors
from sight.config import ImageSettings
from sight.errors import ImageTooLargeError, InvalidImageError
from sight.images.decode import decode_base64, decode_image, encode_jpeg
from tests.helpers import image_bytes, png_bytes


def _encoded(fmt: str, mode: str = "RGB", size: tuple[int, int] = (32, 24), **kw: object) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, "red").save(out, format=fmt, **kw)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_decode_accepts_allowed_formats(fmt: str) -> None:
    image = decode_image(_encoded(fmt), ImageSettings())
    assert image.mode == "RGB" and image.size == (32, 24)


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA", "PCX"])
def test_decode_refuses_formats_outside_the_allow_list(fmt: str) -> None:
    with pytest.raises(InvalidImageError):
        decode_image(_encoded(fmt), ImageSettings())


def test_decode_limits_bytes_and_pixels() -> None:
    with pytest.raises(ImageTooLargeError):
        decode_image(image_bytes("coffee.png"), ImageSettings(max_bytes=1000))
    with pytest.raises(ImageTooLargeError):
        decode_image(png_bytes(Image.new("L", (3000, 3000))), ImageSettings(max_pixels=1_000_000))


def test_decode_first_gif_frame_and_alpha() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue", "green")]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    image = decode_image(out.getvalue(), ImageSettings())
    assert image.getpixel((0, 0))[0] > 200  # red: the first frame
    assert decode_image(_encoded("PNG", "RGBA"), ImageSettings()).mode == "RGB"


def test_base64_raw_data_uri_and_garbage() -> None:
    raw = image_bytes("coffee.png")
    b64 = base64.b64encode(raw).decode()
    assert decode_base64(b64, 10**7) == raw
    assert decode_base64("data:image/png;base64," + b64, 10**7) == raw
    with pytest.raises(InvalidImageError):
        decode_base64("%%%", 10**7)
    with pytest.raises(ImageTooLargeError):
        decode_base64(b64, 1000)


def test_encode_jpeg_downscales_for_the_llm() -> None:
    big = Image.new("RGB", (4000, 1000))
    out = Image.open(io.BytesIO(encode_jpeg(big, 1000)))
    assert out.format == "JPEG" and out.size == (1000, 250)


def test_public_names_are_explicit() -> None:
    assert sight.__all__ == ["__version__"]
    assert all(hasattr(sight.errors, name) for name in sight.errors.__all__)
    assert all(code.islower() for code in {getattr(sight.errors, n).code for n in sight.errors.__all__
                                           if n.endswith("Error")})


def test_malformed_gif_found_by_the_fuzzer_is_an_invalid_image() -> None:
    # Pillow's GIF parser raised IndexError on this input (atheris found it): it must be invalid_image.
    crash = base64.b64decode("R0lGODdhCAAAAAAA/wAAAAAAAAAAACwAACwAAAAACAAGAAAACA4sAAAuCBxIsKDBgwgTDgwIADs=")
    with pytest.raises(InvalidImageError):
        decode_image(crash, ImageSettings())


def test_decode_scaled_uses_jpeg_draft_and_reports_the_original_size() -> None:
    from sight.images.decode import decode_scaled

    big = io.BytesIO()
    Image.new("RGB", (4000, 3000), "green").save(big, format="JPEG")
    image, original = decode_scaled(big.getvalue(), ImageSettings(), 640)
    assert original == (4000, 3000)
    assert image.size == (1000, 750), "1/4 scale: the smallest DCT scale whose long side is still >= 640"
    full, same = decode_scaled(big.getvalue(), ImageSettings(), None)
    assert full.size == same == (4000, 3000)
    png = png_bytes(Image.new("RGB", (4000, 3000)))
    assert decode_scaled(png, ImageSettings(), 640)[0].size == (4000, 3000), "only JPEG has a draft mode"
