"""atheris harness for the image-decoding entry point: any exception but a SightError is a bug.

    python tests/fuzz_decode.py -runs=5000 -max_len=8192 SEED_DIR
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from sight.config import ImageSettings
    from sight.errors import SightError
    from sight.images.decode import decode_image

# Small limits keep every input cheap; the point is the decoder's error paths.
SETTINGS = ImageSettings(max_bytes=64_000, max_pixels=4_000_000, max_frames=50)


def test_one(data: bytes) -> None:
    with contextlib.suppress(SightError):
        decode_image(data, SETTINGS)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()
