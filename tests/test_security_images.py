"""Hostile images: each gets its own error beside a good sibling, memory stays bounded, and a bounded
atheris run over the decoder finds no crash."""

from __future__ import annotations

import io
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image

from sight.api.app import create_app
from sight.config import ServerSettings, Settings
from sight.models.registry import EngineRegistry
from tests.helpers import image_bytes, v1_request


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares huge dimensions but carries almost no data (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def many_frames_gif(frames: int) -> bytes:
    images = [Image.new("RGB", (4, 4), (i % 256, i * 7 % 256, i * 13 % 256)) for i in range(frames)]
    out = io.BytesIO()
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:], duration=10, optimize=False)
    return out.getvalue()


CORPUS: list[tuple[str, bytes, str]] = [
    ("bomb.png", png_header_only(50_000, 50_000), "image_too_large"),       # 7.5 GB if decoded
    ("frames.gif", many_frames_gif(2000), "image_too_large"),
    ("truncated.jpg", image_bytes("bus.jpg")[:4000], "invalid_image"),
    ("empty.jpg", b"", "invalid_image"),
    ("photoshop.jpg", b"8BPS\x00\x01" + b"\x00" * 6 + struct.pack(">HIIHH", 3, 64, 64, 8, 3) + b"\x00" * 64,
     "invalid_image"),
    ("script.jpg", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n(x) print showpage\n", "invalid_image"),
    ("sky.jpg", b"SIMPLE  =                    T" + b" " * 50 + b"BITPIX  =                    8" + b" " * 2800,
     "invalid_image"),
    ("vector.jpg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>', "invalid_image"),
    ("polyglot.jpg", b"GIF89a/*\x01\x00\x01\x00*/=1;alert(document.domain)//" + b"\x00" * 32, "invalid_image"),
]


def test_hostile_corpus_fails_item_by_item_with_bounded_memory(settings: Settings, engines: EngineRegistry) -> None:
    cfg = settings.model_copy(update={"server": ServerSettings(max_files=32, max_body_bytes=256 * 1024 * 1024)})
    trailing = image_bytes("coffee.png") + b"\0" * (100 * 1024 * 1024)  # a valid PNG and a 100 MB tail
    files = [(name, data) for name, data, _ in CORPUS]
    files += [("tail.png", trailing), ("good.png", image_bytes("astronaut.png"))]
    expected = [code for _, _, code in CORPUS] + ["image_too_large", None]
    with TestClient(create_app(cfg, engines=engines)) as client:
        key, _ = client.portal.call(client.app.state.services.keys.create_key, "t")  # type: ignore[attr-defined]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        r = client.post("/api/v1/inference/predict/batch", **v1_request(files, [{"is_yolo": True}] * len(files),
                                                                         api_key=key))
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert r.status_code == 200, r.text
    items = r.json()["result"]["items"]
    assert [(i["error"] or {}).get("code") for i in items] == expected
    assert items[-1]["yolo"]["detections"][0]["name"] == "FACE_FEMALE"
    # The request itself is ~100 MB (held by the test client too); a decoded bomb alone would be 7.5 GB.
    assert grown_mb < 1024, f"peak RSS grew by {grown_mb:.0f} MB"


def test_atheris_fuzz_of_the_decoder_finds_no_crash(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"):
        out = io.BytesIO()
        Image.new("RGB", (8, 6), "blue").save(out, format=fmt)
        (seeds / f"seed.{fmt.lower()}").write_bytes(out.getvalue())
    harness = Path(__file__).with_name("fuzz_decode.py")
    run = subprocess.run([sys.executable, str(harness), "-runs=3000", "-max_len=4096", "-rss_limit_mb=2048",
                          "-seed=1", str(seeds)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Done 3000 runs" in run.stderr
