"""Image bytes -> an oriented RGB picture, under size and pixel limits, allowed formats only."""

from __future__ import annotations

import base64
import binascii
import io
import math
from types import ModuleType
from typing import TYPE_CHECKING

from sight.config import ImageSettings
from sight.errors import ImageTooLargeError, InvalidImageError, SightError

if TYPE_CHECKING:
    from PIL import Image

DATA_URI_PREFIX = "data:"


def _pil() -> ModuleType:
    from PIL import Image

    Image.init()  # register every plugin so ``formats=`` can name WebP and TIFF
    # Sight enforces its own, configurable pixel limit before any pixel is decoded; Pillow's global
    # one would only warn (or raise at twice the limit) with a message users cannot act on.
    Image.MAX_IMAGE_PIXELS = None
    return Image


def decode_base64(value: str, max_bytes: int) -> bytes:
    """Raw base64 or a ``data:image/...;base64,`` URI -> bytes, refusing oversize input early."""
    if value.startswith(DATA_URI_PREFIX):
        header, _, value = value.partition(",")
        if ";base64" not in header:
            raise InvalidImageError("data URI must be base64-encoded")
    if len(value) * 3 // 4 > max_bytes + 3:
        raise ImageTooLargeError(f"image is larger than {max_bytes} bytes")
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImageError("image_base64 is not valid base64") from exc


def decode_image(data: bytes, settings: ImageSettings) -> Image.Image:
    """Decode ``data`` to RGB with EXIF orientation applied. Blocking: call it from a worker thread."""
    return decode_scaled(data, settings)[0]


def decode_scaled(
    data: bytes, settings: ImageSettings, min_side: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Like :func:`decode_image`, but a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (DCT draft mode, far
    cheaper than decoding in full and resizing) while its long side stays at least ``min_side``. Returns the
    picture and the (width, height) of the full-size oriented original, for mapping results back. Other
    formats come back in full: see :func:`open_image` for reducing them too."""
    pending = open_image(data, settings, min_side, reduce=False)
    return pending.decode(), pending.original


# Modes whose box-filter reduction is a plain average per channel; others (palette, 1-bit, alpha, 16-bit)
# are converted to RGB first.
_REDUCIBLE = frozenset({"L", "RGB", "RGBX", "CMYK", "YCbCr", "I", "F"})
_ORIENTATION = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
                7: "TRANSVERSE", 8: "ROTATE_90"}


class PendingDecode:
    """A checked image header, not yet decoded: how many pixels its decode will hold, then the decode.

    ``pixels`` is what the decode holds at its peak: the picture as decoded, twice when it is converted to
    RGB at that size (both copies live for a moment). ``original`` is the full-size oriented original, for
    mapping results back. :meth:`decode` (blocking) may be called once.
    """

    def __init__(self, image: Image.Image, reduce_by: int, original: tuple[int, int] | None) -> None:
        self._image = image
        self._reduce_by = reduce_by
        self._original = original
        one_copy = image.mode == "RGB" or (reduce_by > 1 and image.mode in _REDUCIBLE)
        self.pixels = image.width * image.height * (1 if one_copy else 2)

    @property
    def original(self) -> tuple[int, int]:
        assert self._original is not None, "known once decoded"
        return self._original

    @property
    def known_original(self) -> tuple[int, int] | None:
        """``original`` if the header told it (a JPEG's does), before any decode; else None."""
        return self._original

    def close(self) -> None:
        self._image.close()

    def decode(self) -> Image.Image:
        """The RGB picture, EXIF orientation applied. Blocking: call it from a worker thread."""
        PILImage = _pil()
        image = self._image
        try:
            image.load()
            # After load: a PNG's EXIF may follow its pixels, and asking before would decode them twice.
            orientation = image.getexif().get(0x0112, 1)
            if self._original is None:
                width, height = image.size
                self._original = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
            if self._reduce_by > 1:
                if image.mode not in _REDUCIBLE:
                    image = _replace(image, image.convert("RGB"))
                # Box-filter the full-size decode down at once, so only the small picture is kept.
                image = _replace(image, image.reduce(self._reduce_by))
            if method := _ORIENTATION.get(orientation):
                image = _replace(image, image.transpose(PILImage.Transpose[method]))
            if image.mode != "RGB":
                image = _replace(image, image.convert("RGB"))
        except Exception as exc:  # Pillow's parsers raise IndexError, KeyError, struct.error... on hostile input
            image.close()
            raise InvalidImageError(f"corrupt or truncated image ({type(exc).__name__}: {exc})") from exc
        return image


def _replace(old: Image.Image, new: Image.Image) -> Image.Image:
    """``new``, with ``old``'s pixels freed now rather than whenever the last reference goes."""
    if new is not old:
        old.close()
    return new


def open_image(data: bytes, settings: ImageSettings, min_side: int | None = None, *, reduce: bool = True
               ) -> PendingDecode:
    """Check ``data``'s header (format, bytes, pixels, frames) without decoding a pixel, and plan the decode:
    with ``min_side``, a JPEG at 1/2, 1/4 or 1/8 DCT scale and, with ``reduce``, any other format decoded in
    full and at once box-filtered by an integer factor, the long side staying at least ``min_side``.
    Blocking (it may walk an animation's frames): call it from a worker thread."""
    PILImage = _pil()
    from PIL import UnidentifiedImageError

    if not data:
        raise InvalidImageError("empty file")
    if len(data) > settings.max_bytes:
        raise ImageTooLargeError(f"image is {len(data)} bytes; the limit is {settings.max_bytes}")
    try:
        image = PILImage.open(io.BytesIO(data), formats=settings.formats)
    except UnidentifiedImageError as exc:
        raise InvalidImageError(f"not a supported image; accepted formats: {', '.join(settings.formats)}") from exc
    except Exception as exc:  # any parser failure on the header is the file's fault
        raise InvalidImageError(f"unreadable image header ({type(exc).__name__}: {exc})") from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidImageError("image has no pixels")
    if width * height > settings.max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {settings.max_pixels}"
        )
    try:
        # Counting frames walks the file (bounded by max_bytes); only the first frame is ever decoded.
        frames = image.n_frames if getattr(image, "is_animated", False) else 1
        if frames > settings.max_frames:
            raise ImageTooLargeError(f"animation has {frames} frames; the limit is {settings.max_frames}")
        reduce_by, original = 1, None
        if image.format == "JPEG":
            swapped = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # a JPEG's EXIF is in its header
            original = (height, width) if swapped else (width, height)
            if min_side and max(width, height) > 2 * min_side:
                scale = min_side / max(width, height)
                image.draft("RGB", (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))))
        elif reduce and min_side and max(width, height) >= 2 * min_side:
            reduce_by = max(width, height) // min_side
    except SightError:
        image.close()
        raise
    except Exception as exc:
        image.close()
        raise InvalidImageError(f"corrupt or truncated image ({type(exc).__name__}: {exc})") from exc
    return PendingDecode(image, reduce_by, original)


def encode_jpeg(image: Image.Image, max_side: int, quality: int = 90) -> bytes:
    """JPEG bytes of ``image`` no larger than ``max_side`` on its long edge (what the LLM gets)."""
    PILImage = _pil()

    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), PILImage.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()
