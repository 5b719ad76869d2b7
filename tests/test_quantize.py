"""`sight models quantize` on the real YOLOv8n in the nudenet wheel: calibrated on the shared photos, checked
on crops of them, the parity gate passing it; a solid-colour calibration set that the gate must catch; the
INT8 file served by its stem, with no onnx in the serving process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageOps
from typer.testing import CliRunner

from sight.api.app import create_app
from sight.cli import app as cli
from sight.config import Settings, YoloSettings
from sight.engines.base import DetectOptions
from sight.engines.onnx_yolo import OnnxYoloDetector, letterbox, to_tensor
from sight.errors import EngineUnavailableError
from sight.models.parity import compare
from sight.models.quantize import decode_nodes, quantize, sha256_of
from sight.models.rewrites import decompose_dfl, take_pixels
from tests.conftest import IMAGES, YOLO11N_UNTRAINED, nudenet_path
from tests.helpers import image_bytes, v1_request

BATCH = "/api/v1/inference/predict/batch"


def _photos(folder: Path) -> Path:
    """The shared photos and their mirror images: 14 (fewer than 32: the command warns)."""
    folder.mkdir()
    for path in sorted(IMAGES.iterdir()):
        if path.suffix in (".jpg", ".png"):
            image = Image.open(path).convert("RGB")
            image.save(folder / f"{path.stem}.png")
            ImageOps.mirror(image).save(folder / f"{path.stem}-mirror.png")
    return folder


def _crops(folder: Path) -> Path:
    """A check set with enough boxes to judge: 70 % crops of the two photos with people, on a 3x3 grid, mirrored
    too (36 images, about 44 FP32 boxes at 0.25), and the photos where the model finds nothing."""
    folder.mkdir()
    for name in ("astronaut.png", "bus.jpg"):
        image = Image.open(IMAGES / name).convert("RGB")
        w, h = image.size
        for i in range(3):
            for j in range(3):
                x, y = i * w * 15 // 100, j * h * 15 // 100
                crop = image.crop((x, y, x + w * 7 // 10, y + h * 7 // 10))
                crop.save(folder / f"{Path(name).stem}-{i}{j}.png")
                ImageOps.mirror(crop).save(folder / f"{Path(name).stem}-{i}{j}-mirror.png")
    for name in ("coffee.png", "chelsea.png"):
        Image.open(IMAGES / name).convert("RGB").save(folder / name)
    return folder


@dataclass
class Quantized:
    models: Path
    int8: Path
    output: str
    exit_code: int


def _quantize(models: Path, *args: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    monkeypatch.setenv("SIGHT_YOLO__MODELS_DIR", str(models))
    done = CliRunner().invoke(cli, ["models", "quantize", str(nudenet_path()), *args], terminal_width=200)
    return done.exit_code, done.output


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quantized]:
    root = tmp_path_factory.mktemp("quantize")
    with pytest.MonkeyPatch.context() as mp:
        code, out = _quantize(root / "models", "--calibration", str(_photos(root / "calib")), "--check",
                              str(_crops(root / "check")), monkeypatch=mp)
    yield Quantized(root / "models", root / "models" / "320n-int8.onnx", out, code)


def test_quantize_writes_an_int8_model_that_keeps_the_fp32_boxes(quantized: Quantized) -> None:
    assert quantized.exit_code == 0, quantized.output
    assert "14 calibration images; 32 or more calibrate better" in quantized.output
    assert "parity" in quantized.output and "all" in quantized.output
    assert sorted(p.name for p in quantized.models.iterdir()) == ["320n-int8.onnx"]  # no temporary file left
    source = ort.InferenceSession(str(nudenet_path()), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(quantized.int8), providers=["CPUExecutionProvider"])
    src_meta, meta = source.get_modelmeta().custom_metadata_map, int8.get_modelmeta().custom_metadata_map
    for key in ("names", "imgsz", "stride", "task"):
        assert meta[key] == src_meta[key], key
    assert meta["sight.precision"] == "int8" and meta["sight.source_sha256"] == sha256_of(nudenet_path())
    assert len(meta["sight.calibration_sha256"]) == 64 and meta["sight.calibration_images"] == "14"
    assert meta["sight.calibration"] == "percentile 99.999"  # not the MinMax fallback
    assert meta["sight.dfl"] == "decomposed" and meta["sight.input"] == "uint8 NHWC RGB"
    assert int8.get_inputs()[0].type == "tensor(uint8)" and int8.get_inputs()[0].shape[3] == 3
    assert not [n for n in _graph(quantized.int8).node if n.op_type == "Softmax" and "dfl" in n.name]
    parity = json.loads(meta["sight.parity"])
    assert parity["passed"] and parity["fp32_matched"] >= 0.95 and parity["int8_matched"] >= 0.95
    assert parity["mean_iou"] >= 0.9 and parity["fp32_boxes"] >= 20
    # Really INT8: the QDQ graph runs in quantized kernels and is smaller than the FP32 file.
    assert quantized.int8.stat().st_size < 0.5 * nudenet_path().stat().st_size


def test_the_int8_model_finds_what_fp32_finds_on_a_held_out_photo(quantized: Quantized) -> None:
    fp32 = OnnxYoloDetector.load("fp32", nudenet_path())
    int8 = OnnxYoloDetector.load("int8", quantized.int8)
    assert (fp32.precision, int8.precision) == ("fp32", "int8")
    image = Image.open(IMAGES / "astronaut.png").convert("RGB").rotate(8, expand=True)  # never calibrated on
    options = DetectOptions(conf=0.1)
    found = compare(fp32.detect(image, options), int8.detect(image, options), Settings().quantize)
    assert found.fp32 >= 1 and found.fp32_matched == found.fp32 and found.mean_iou > 0.85


def test_a_calibration_set_of_solid_colours_is_caught_by_the_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for n, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0), (90, 90, 90)]):
        Image.new("RGB", (640, 480), colour).save(bad / f"{n}.png")
    models = tmp_path / "models"
    code, out = _quantize(models, "--calibration", str(bad), "--check", str(_crops(tmp_path / "check")),
                          monkeypatch=monkeypatch)
    assert code == 1, out
    assert "parity check failed" in out and "Nothing written" in out
    assert list(models.iterdir()) == []  # not even a temporary file


def test_too_few_images_and_a_thin_check_set_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    few = tmp_path / "few"
    few.mkdir()
    for name in ("bus.jpg", "astronaut.png", "coffee.png"):
        (few / name).write_bytes((IMAGES / name).read_bytes())
    code, out = _quantize(tmp_path / "models", "--calibration", str(few), monkeypatch=monkeypatch)
    assert code != 0 and "at least 4" in out, out
    thin = tmp_path / "thin"
    thin.mkdir()
    for name in ("bus.jpg", "astronaut.png", "coffee.png", "chelsea.png"):
        (thin / name).write_bytes((IMAGES / name).read_bytes())
    code, out = _quantize(tmp_path / "models", "--calibration", str(thin), monkeypatch=monkeypatch)
    assert code == 1 and "too thin to judge" in out, out
    assert not (tmp_path / "models" / "320n-int8.onnx").exists()
    code, out = _quantize(tmp_path / "models", "--calibration", str(thin), "--force", monkeypatch=monkeypatch)
    assert code == 0 and "written anyway (--force)" in out, out


def test_the_int8_file_is_served_by_its_stem_with_its_precision(quantized: Quantized, settings: Settings) -> None:
    cfg = settings.model_copy(update={"yolo": YoloSettings(models_dir=quantized.models, default_model="320n-int8")})
    with TestClient(create_app(cfg)) as client:
        key = client.portal.call(client.app.state.services.keys.create_key, "q")[0]  # type: ignore[union-attr]
        meta = [{"is_yolo": True, "yolo_model": "320n-int8"}]
        item = client.post(BATCH, **v1_request([("a.png", image_bytes("astronaut.png"))], meta, api_key=key)
                           ).json()["result"]["items"][0]
        assert item["yolo"]["model"] == "320n-int8"
        assert [d["name"] for d in item["yolo"]["detections"]] == ["FACE_FEMALE"]
        listing = client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["models"]
        state = next(m["state"] for m in listing if m["name"] == "320n-int8")
        assert state["precision"] == "int8" and state["provider"] == "CPU"


def test_serving_an_int8_model_needs_no_onnx(quantized: Quantized) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from PIL import Image\n"
        "from sight.engines.base import DetectOptions\n"
        "from sight.engines.onnx_yolo import OnnxYoloDetector\n"
        f"d = OnnxYoloDetector.load('q', Path({str(quantized.int8)!r}))\n"
        f"found = d.detect(Image.open({str(IMAGES / 'astronaut.png')!r}), DetectOptions())\n"
        "print(d.precision, [x.name for x in found], 'onnx' in sys.modules,"
        " 'onnxruntime.quantization' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["int8", "['FACE_FEMALE']", "False", "False"], done.stderr[-2000:]


def test_the_decode_nodes_are_the_detect_heads_after_its_last_convolutions() -> None:
    import onnx

    for path, prefix in ((nudenet_path(), "/model.22/"), (YOLO11N_UNTRAINED, "/model.23/")):
        found = decode_nodes(path)
        graph = onnx.load(str(path), load_external_data=False).graph
        by_name = {n.name: n for n in graph.node}
        assert found and all(n.startswith(prefix) for n in found if by_name[n].op_type not in ("Constant",))
        assert not any("/cv2." in n or "/cv3." in n for n in found), "the head's own convolutions stay INT8"
        assert any("dfl" in n for n in found) and any(by_name[n].op_type == "Sigmoid" for n in found)
        output = graph.output[0].name
        assert any(output in by_name[n].output for n in found), "the output concat stays FP32"


def _graph(path: Path) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph


@pytest.mark.parametrize("source", [nudenet_path(), YOLO11N_UNTRAINED], ids=["yolov8n", "yolo11n"])
def test_the_dfl_decomposed_gives_the_exported_model_its_numbers(source: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model.onnx"
    shutil.copyfile(source, copy)
    assert decompose_dfl(copy) == 1 and decompose_dfl(copy) == 0  # found by structure, once
    softmaxes = [n for n in _graph(copy).node if n.op_type == "Softmax"]
    assert all("attn" in n.name for n in softmaxes)  # YOLO11's attention keeps its own; the DFL's is gone
    images = [Image.open(IMAGES / name).convert("RGB") for name in ("astronaut.png", "bus.jpg")]
    exported, decomposed = (OnnxYoloDetector.load(p.stem, p) for p in (source, copy))
    for image in images:
        tensor = to_tensor([letterbox(image, exported.imgsz, exported.stride)[0]])
        want = exported.session.run(None, {exported.input_name: tensor})[0]
        got = decomposed.session.run(None, {decomposed.input_name: tensor})[0]
        assert got.shape == want.shape and np.allclose(got, want, rtol=1e-5, atol=1e-3)
    if source != YOLO11N_UNTRAINED:  # trained: the same boxes, to float rounding
        options = DetectOptions(conf=0.1)
        for image in images:
            want, got = exported.detect(image, options), decomposed.detect(image, options)
            assert want and [d.name for d in got] == [d.name for d in want]
            for a, b in zip(want, got, strict=True):
                assert abs(a.confidence - b.confidence) < 1e-4
                assert a.box.iou(b.box) > 0.999


def _dfl_graph(path: Path, opset: int, reshape_to: list[int]) -> np.ndarray:
    """A DFL alone, as Ultralytics exports it: [1, 64, 50] -> [1, 4, 16, 50] -> transposed -> softmax over axis 1
    -> 1x1 convolution by 0..15 -> reshaped by ``reshape_to``. Returns an input for it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = [numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(1, 16, 1, 1), "w"),
               numpy_helper.from_array(np.array([1, 4, 16, 50], dtype=np.int64), "split"),
               numpy_helper.from_array(np.array(reshape_to, dtype=np.int64), "joined")]
    nodes = [helper.make_node("Reshape", ["x", "split"], ["r"], name="dfl/Reshape"),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3], name="dfl/Transpose"),
             helper.make_node("Softmax", ["t"], ["s"], axis=1, name="dfl/Softmax"),
             helper.make_node("Conv", ["s", "w"], ["c"], name="dfl/conv/Conv"),
             helper.make_node("Reshape", ["c", "joined"], ["y"], name="dfl/Reshape_1")]
    graph = helper.make_graph(nodes, "dfl", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 50])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8), str(path))
    return np.random.default_rng(opset).normal(0, 4, (1, 64, 50)).astype(np.float32)


@pytest.mark.parametrize("opset", [12, 13, 17, 18])
def test_the_dfl_is_rewritten_only_where_the_numbers_stay(opset: int, tmp_path: Path) -> None:
    exported = tmp_path / "dfl.onnx"
    x = _dfl_graph(exported, opset, [1, 4, 50])
    rewritten = tmp_path / "rewritten.onnx"
    shutil.copyfile(exported, rewritten)
    # Before opset 13 a softmax over axis 1 normalises over every axis from 1 on: another function, left alone.
    assert decompose_dfl(rewritten) == (opset >= 13)
    want, got = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
                 for p in (exported, rewritten))
    assert got.shape == want.shape == (1, 4, 50) and np.allclose(got, want, rtol=1e-5, atol=1e-5)
    # A reshape that copies a dimension (0) past the first would read the new layout differently: left alone.
    _dfl_graph(exported, opset, [1, 0, 50])
    assert decompose_dfl(exported) == 0


def test_the_int8_file_takes_the_letterboxed_pixels_and_gives_the_same_numbers(tmp_path: Path) -> None:
    fp32 = OnnxYoloDetector.load("fp32", nudenet_path())
    photos = [Image.open(IMAGES / n).convert("RGB") for n in ("astronaut.png", "bus.jpg", "coffee.png", "rocket.jpg")]
    canvases = [letterbox(photo, fp32.imgsz, fp32.stride)[0] for photo in photos]
    floats = tmp_path / "floats.onnx"
    quantize(nudenet_path(), floats, [to_tensor([c]) for c in canvases], keep_fp32=decode_nodes(nudenet_path()))
    pixels = tmp_path / "pixels.onnx"
    shutil.copyfile(floats, pixels)
    assert take_pixels(pixels) and not take_pixels(pixels)  # once: the second finds no float input
    before, after = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (floats, pixels))
    assert after.get_inputs()[0].type == "tensor(uint8)" and after.get_inputs()[0].shape[1:] == ["height", "width", 3]
    for canvas in canvases:
        want = before.run(None, {"images": to_tensor([canvas])})[0]
        assert np.array_equal(after.run(None, {"images": canvas[None]})[0], want)  # the same quantized values
    detector = OnnxYoloDetector.load("int8", pixels)
    assert detector.takes_pixels and detector.rect and detector.imgsz == fp32.imgsz
    # One picture alone, and two of one shape in one batched call.
    options = DetectOptions(conf=0.1)
    alone, *pair = detector.detect_many([photos[0], photos[1], photos[1]], options)
    assert "FACE_FEMALE" in [d.name for d in alone]
    assert pair[0] and pair[0] == pair[1] == detector.detect(photos[1], options)  # batched as found alone
    untouched = tmp_path / "fp32.onnx"
    shutil.copyfile(nudenet_path(), untouched)
    assert not take_pixels(untouched) and untouched.read_bytes() == nudenet_path().read_bytes()


def test_a_uint8_input_that_is_not_pictures_is_refused_at_load(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([1, 3, 64], dtype=np.int64), "shape")
    nodes = [helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Reshape", ["f", "shape"], ["output0"])]
    graph = helper.make_graph(nodes, "nchw", [helper.make_tensor_value_info("images", TensorProto.UINT8, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 3, 64])], [shape])
    path = tmp_path / "nchw-uint8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    with pytest.raises(EngineUnavailableError, match=r"takes uint8 \[1, 3, 8, 8\]"):
        OnnxYoloDetector.load("nchw", path)


def test_a_fixed_shape_export_takes_fixed_shape_pixels(tmp_path: Path) -> None:
    """Ultralytics exports without dynamic axes by default (the official yolo11n is [1, 3, 640, 640])."""
    import onnx

    model = onnx.load(str(nudenet_path()))
    for value, dims in ((model.graph.input[0], [1, 3, 320, 320]), (model.graph.output[0], [1, 22, 2100])):
        for dim, size in zip(value.type.tensor_type.shape.dim, dims, strict=True):
            dim.ClearField("dim_param")
            dim.dim_value = size
    fixed = tmp_path / "fixed.onnx"
    onnx.save(model, str(fixed))
    photos = [Image.open(IMAGES / n).convert("RGB") for n in ("astronaut.png", "bus.jpg", "coffee.png", "rocket.jpg")]
    int8 = tmp_path / "fixed-int8.onnx"
    tensors = [to_tensor([letterbox(photo, (320, 320))[0]]) for photo in photos]
    quantize(fixed, int8, tensors, keep_fp32=decode_nodes(fixed))
    assert decompose_dfl(int8) == 1 and take_pixels(int8)
    detector = OnnxYoloDetector.load("int8", int8)
    assert detector.session.get_inputs()[0].shape == [1, 320, 320, 3]
    assert detector.takes_pixels and not detector.rect and not detector.dynamic_batch
    assert [d.name for d in detector.detect(photos[0], DetectOptions())] == ["FACE_FEMALE"]


def test_int8_flags_are_read_from_the_cpu_and_a_cpu_without_them_is_warned_about(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sight.models import quantize as q

    zen4 = tmp_path / "cpuinfo"
    zen4.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    old = tmp_path / "old"
    old.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx2\n")
    assert q.int8_flags(zen4) == ["avx512_vnni"] and q.int8_flags(old) == []
    assert q.int8_flags(tmp_path / "missing") is None
    monkeypatch.setattr(q, "int8_flags", lambda: [])
    few = tmp_path / "few"
    few.mkdir()
    for name in ("bus.jpg", "astronaut.png", "coffee.png", "chelsea.png"):
        (few / name).write_bytes((IMAGES / name).read_bytes())
    code, out = _quantize(tmp_path / "models", "--calibration", str(few), monkeypatch=monkeypatch)
    assert "no VNNI or AMX: INT8 may be no faster" in out, out
