"""``sight predict`` as a subprocess against ``sight serve``: tables, JSON, annotated images, exit status."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from tests.conftest import IMAGES
from tests.processes import SIGHT, SightServer, sight_env
from tests.servers import ImageServer

pytestmark = pytest.mark.slow  # starts `sight` subprocesses

ASTRONAUT = IMAGES / "astronaut.png"
LABEL = IMAGES / "serial-label.png"


@dataclass
class Served:
    url: str
    key: str
    workdir: Path

    def predict(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**sight_env(self.workdir), "SIGHT_CLIENT__URL": self.url, "SIGHT_CLIENT__API_KEY": self.key,
               "COLUMNS": "120"}
        return subprocess.run([*SIGHT, "predict", *args], cwd=self.workdir, env=env, capture_output=True,
                              text=True, timeout=90)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("predict-cli")
    # Loopback may be fetched here (the image_server fixture serves ../shared/images on it).
    server = SightServer(workdir, sight_env(workdir, SIGHT_FETCH__ALLOW_NETWORKS='["127.0.0.0/8"]'))
    try:
        key = server.first_key()
        assert key, server.output()
        yield Served(server.url, key, workdir)
    finally:
        server.stop()


@pytest.fixture
def corrupt(tmp_path: Path) -> Path:
    path = tmp_path / "corrupt.png"
    path.write_bytes(LABEL.read_bytes()[:300])  # a PNG header and then nothing
    return path


def test_predict_cli_prints_a_table_per_image_and_exits_1_when_one_failed(served: Served, corrupt: Path) -> None:
    done = served.predict(str(ASTRONAUT), str(LABEL), str(corrupt), "--ocr")
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "astronaut.png" in out and "FACE_FEMALE" in out and "detections (nudenet:1)" in out
    assert "Serial No: SN-4X7Q-2291-B" in out
    assert "corrupt.png" in out and "error (invalid_image)" in out
    assert "2 of 3 done, 1 failed" in out


def test_predict_cli_json_is_the_batch_answer_and_urls_work(served: Served, corrupt: Path,
                                                             image_server: ImageServer) -> None:
    done = served.predict(f"{image_server.url}/astronaut.png", str(LABEL), str(corrupt), "--no-yolo", "--ocr",
                          "--json")
    assert done.returncode == 1, done.stderr
    answer = json.loads(done.stdout)
    assert answer["code"] == 1 and answer["result"]["summary"] == {"total": 3, "done": 2, "error": 1}
    astronaut, label, bad = answer["result"]["items"]
    assert astronaut["filename"] == "astronaut.png" and astronaut["yolo"] is None and astronaut["ocr"] is not None
    assert "Serial No: SN-4X7Q-2291-B" in label["ocr"]["text"]
    assert bad["status"] == "error" and bad["error"]["code"] == "invalid_image"
    assert "/astronaut.png" in image_server.hits, "the server fetched the URL itself"


def test_predict_cli_saves_annotated_images_and_json_and_exits_0_when_all_succeed(served: Served,
                                                                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = served.predict(str(ASTRONAUT), "--save", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["astronaut.json", "astronaut.png"]
    item = json.loads((out / "astronaut.json").read_text())
    face = item["yolo"]["detections"][0]
    assert face["name"] == "FACE_FEMALE"

    original = Image.open(ASTRONAUT).convert("RGB")
    drawn = Image.open(out / "astronaut.png").convert("RGB")
    assert drawn.size == original.size
    box = face["box"]
    left_edge = (round(box["x1"]), round((box["y1"] + box["y2"]) / 2))
    bottom_edge = (round((box["x1"] + box["x2"]) / 2), round(box["y2"]) - 1)
    for xy in (left_edge, bottom_edge):
        assert drawn.getpixel(xy) != original.getpixel(xy), f"a box edge is drawn at {xy}"
    changed = ImageChops.difference(original, drawn).getbbox()
    assert changed is not None
    x1, y1, x2, y2 = changed
    assert x1 >= box["x1"] - 5 and x2 <= box["x2"] + 300 and y2 <= box["y2"] + 5, "only the box and its label"


def test_predict_cli_saves_json_only_for_an_image_that_failed(served: Served, corrupt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = served.predict(str(corrupt), str(LABEL), "--no-yolo", "--ocr", "--save", str(out))
    assert done.returncode == 1, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["corrupt.json", "serial-label.json", "serial-label.png"]
    assert json.loads((out / "corrupt.json").read_text())["error"]["code"] == "invalid_image"
    label = Image.open(LABEL).convert("RGB")
    assert ImageChops.difference(label, Image.open(out / "serial-label.png").convert("RGB")).getbbox(), \
        "the OCR lines are boxed"


def test_predict_cli_saves_what_worked_for_an_image_whose_other_stage_failed(served: Served, tmp_path: Path) -> None:
    """Detection fails (no such model), OCR read the label: the JSON holds both, the picture has the text boxed."""
    out = tmp_path / "out"
    done = served.predict(str(LABEL), "--model", "ghost", "--ocr", "--save", str(out))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "error (model_not_found)" in done.stdout and "Serial No: SN-4X7Q-2291-B" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["serial-label.json", "serial-label.png"]
    item = json.loads((out / "serial-label.json").read_text())
    assert item["error"]["code"] == "model_not_found" and "SN-4X7Q-2291-B" in item["ocr"]["text"]
    label = Image.open(LABEL).convert("RGB")
    assert ImageChops.difference(label, Image.open(out / "serial-label.png").convert("RGB")).getbbox()


def test_annotate_draws_boxes_in_the_frame_of_the_decoded_picture(tmp_path: Path) -> None:
    from sight.cli.annotate import annotated
    from sight.schemas import ItemResult
    from tests.helpers import exif_rotated_jpeg

    upright, sideways = exif_rotated_jpeg(IMAGES / "astronaut.png")
    path = tmp_path / "sideways.jpg"
    path.write_bytes(sideways)  # stored sideways, EXIF turns it upright: boxes are in the upright frame
    # The server reported a half-size frame (as if it decoded at reduced scale): boxes scale by 2.
    item = ItemResult.model_validate({
        "index": 0, "filename": "sideways.jpg", "status": "done", "image": {"width": 256, "height": 256},
        "yolo": {"model": "m", "model_version": "1", "detections": [
            {"name": "thing", "class": 0, "confidence": 0.9, "box": {"x1": 100, "y1": 150, "x2": 200, "y2": 240}}]}})
    picture = annotated(path, item)
    assert picture is not None and picture.size == (512, 512)
    original = Image.open(io.BytesIO(upright)).convert("RGB")
    changed = ImageChops.difference(original, picture).point(lambda v: 255 if v > 60 else 0).getbbox()
    assert changed is not None
    x1, y1, x2, y2 = changed
    assert (x1, x2) == (200, 401) and y2 == 481, "the box drawn at 2x the reported coordinates, label above it"
    assert y1 < 300, "the label sits above the box"
    assert annotated(tmp_path / "missing.png", item) is None


def test_save_into_the_images_own_folder_keeps_the_original(tmp_path: Path) -> None:
    from PIL import Image

    from sight.cli.annotate import save_annotated

    for suffix in (".png", ".jpg"):
        source = tmp_path / f"photo{suffix}"
        Image.new("RGB", (8, 8), "white").save(source)
        before = source.read_bytes()
        written = save_annotated(Image.new("RGB", (8, 8), "red"), source, tmp_path, "photo")
        assert written == tmp_path / f"photo.annotated{suffix}" and source.read_bytes() == before


def test_predict_cli_finds_a_field_by_pattern_with_no_llm_and_draws_its_evidence(served: Served,
                                                                                tmp_path: Path) -> None:
    out = tmp_path / "out"
    pattern = "SN-[A-Z0-9]{4}-[0-9]{4}-[A-Z0-9]{1,2}"
    done = served.predict(str(LABEL), "--field", f"serial_number={pattern}", "--field", "year=20[0-9]{2}",
                          "--save", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "serial_number" in done.stdout and "SN-4X7Q-2291-B" in done.stdout and "unchecked" in done.stdout
    item = json.loads((out / "serial-label.json").read_text())
    assert item["fields"] == {"serial_number": "SN-4X7Q-2291-B", "year": "2024"}
    assert item["verified"] == {"serial_number": None, "year": None}
    box = item["evidence"]["serial_number"][0]["box"]
    drawn = Image.open(out / "serial-label.png").convert("RGB")
    edge = (round((box["x1"] + box["x2"]) / 2), round(box["y2"]) - 1)  # the bottom edge of the evidence box
    assert drawn.getpixel(edge) == (255, 0, 200), "evidence in its own colour"

    as_json = json.loads(served.predict(str(LABEL), "--no-yolo", "--field", f"serial_number={pattern}",
                                        "--json").stdout)
    assert as_json["result"]["fields"] == {"serial_number": "SN-4X7Q-2291-B"}
    assert as_json["result"]["evidence"]["serial_number"][0]["filename"] == "serial-label.png"
    bad = served.predict(str(LABEL), "--field", "x=(a)\\1")
    assert bad.returncode != 0 and "invalid_schema" in bad.stdout + bad.stderr
