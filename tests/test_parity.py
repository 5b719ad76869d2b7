"""Sight's detections are Ultralytics': the same images, through Sight's API and through Ultralytics' own
predictor (``tests/ultralytics_reference.py``, in a subprocess), give the same boxes, classes and scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import IMAGES, ROOT, nudenet_path
from tests.helpers import v1_request

BATCH = "/api/v1/inference/predict/batch"
CONF = 0.02  # low: many boxes each, NMS and thresholds included


def _variants(folder: Path) -> list[Path]:
    """The shared photos, and the cases preprocessing can get wrong: a 12 MP JPEG, EXIF orientation 6,
    greyscale, an alpha channel."""
    bus = Image.open(IMAGES / "bus.jpg").convert("RGB")
    paths = sorted(p for p in IMAGES.iterdir() if p.suffix in (".jpg", ".png"))
    big = folder / "bus_big.jpg"
    bus.resize((3000, 4000), Image.Resampling.BICUBIC).save(big, quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = folder / "bus_exif6.jpg"
    bus.transpose(Image.Transpose.ROTATE_90).save(turned, quality=92, exif=exif.tobytes())
    grey = folder / "bus_grey.jpg"
    bus.convert("L").save(grey, quality=92)
    alpha = folder / "astronaut_rgba.png"
    Image.open(IMAGES / "astronaut.png").convert("RGBA").save(alpha)
    return [*paths, big, turned, grey, alpha]


def _reference(images: list[Path], config_dir: Path) -> dict[str, list[list]]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "stand_ins"), str(ROOT)]),
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(config_dir),  # Ultralytics writes its settings there
    }
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "ultralytics_reference.py"),
            str(nudenet_path()),
            str(CONF),
            *map(str, images),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.slow
def test_sight_detects_what_the_ultralytics_predictor_detects(client: TestClient, api_key: str, tmp_path: Path) -> None:
    images = _variants(tmp_path)
    reference = _reference(images, tmp_path)
    files = [(p.name, p.read_bytes()) for p in images]
    meta = [{"is_yolo": True, "conf": CONF}] * len(files)
    items = client.post(BATCH, **v1_request(files, meta, api_key=api_key)).json()["result"]["items"]
    compared = 0
    for path, item in zip(images, items, strict=True):
        ours = [
            [d["name"], d["confidence"], *(d["box"][k] for k in ("x1", "y1", "x2", "y2"))]
            for d in item["yolo"]["detections"]
        ]
        theirs = reference[path.name]
        assert len(ours) == len(theirs), (path.name, ours, theirs)
        for want in theirs:
            same = [got for got in ours if got[0] == want[0]]
            best = max(same, key=lambda got: _iou(got[2:], want[2:]), default=None)
            assert best is not None and _iou(best[2:], want[2:]) >= 0.98, (path.name, want, ours)
            assert abs(best[1] - want[1]) <= 0.02, (path.name, want, best)
            compared += 1
    assert compared >= 40, compared  # the comparison covers many boxes, not two or three
    assert sum(1 for found in reference.values() for box in found if box[1] >= 0.25) >= 3
