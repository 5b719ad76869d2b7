from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sight.config import ImageSettings
from sight.engines.base import DetectOptions, Detector
from sight.engines.onnx_yolo import OnnxYoloDetector, nms
from sight.errors import InvalidInputError, ModelUnavailableError
from sight.images.decode import decode_image
from tests.conftest import IMAGES, YOLO11N_UNTRAINED
from tests.helpers import exif_rotated_jpeg, image_bytes

# The face region of astronaut.png (512x512): the face spans roughly x 170-280, y 70-190.
FACE = (150, 50, 300, 210)


def _decode(data: bytes) -> Image.Image:
    return decode_image(data, ImageSettings())


def _inside(box: object, region: tuple[int, int, int, int]) -> bool:
    x1, y1, x2, y2 = region
    b = box
    return x1 <= b.x1 < b.x2 <= x2 and y1 <= b.y1 < b.y2 <= y2  # type: ignore[attr-defined]


def test_yolo_reads_names_size_and_stride_from_metadata(nudenet_detector: OnnxYoloDetector) -> None:
    assert nudenet_detector.imgsz == (320, 320)
    assert nudenet_detector.stride == 32
    assert nudenet_detector.names[1] == "FACE_FEMALE"
    assert len(nudenet_detector.names) == 18
    assert nudenet_detector.dynamic_batch
    assert "CPUExecutionProvider" in nudenet_detector.providers


def test_yolo_finds_female_face_on_astronaut(nudenet_detector: Detector) -> None:
    found = nudenet_detector.detect(_decode(image_bytes("astronaut.png")), DetectOptions())
    faces = [d for d in found if d.name == "FACE_FEMALE"]
    assert faces, found
    assert faces[0].confidence > 0.6
    assert all(_inside(f.box, FACE) for f in faces)


def test_yolo_finds_nothing_confident_on_coffee(nudenet_detector: Detector) -> None:
    found = nudenet_detector.detect(_decode(image_bytes("coffee.png")), DetectOptions(conf=0.3))
    assert found == []


def test_yolo_boxes_follow_exif_orientation(nudenet_detector: Detector) -> None:
    upright, sideways = exif_rotated_jpeg(IMAGES / "astronaut.png")
    image = _decode(sideways)
    assert image.size == (512, 512)
    raw_sideways = Image.open(io.BytesIO(sideways)).convert("RGB")
    assert not np.array_equal(np.asarray(raw_sideways), np.asarray(image)), "orientation was not applied"
    a = nudenet_detector.detect(_decode(upright), DetectOptions())
    b = nudenet_detector.detect(image, DetectOptions())
    faces_a = [d for d in a if d.name == "FACE_FEMALE"]
    faces_b = [d for d in b if d.name == "FACE_FEMALE"]
    assert faces_a and len(faces_a) == len(faces_b)
    for fa, fb in zip(faces_a, faces_b, strict=True):
        assert _inside(fb.box, FACE)
        for k in ("x1", "y1", "x2", "y2"):
            assert abs(getattr(fa.box, k) - getattr(fb.box, k)) < 6


def test_yolo_honours_conf_and_classes(nudenet_detector: OnnxYoloDetector) -> None:
    image = _decode(image_bytes("astronaut.png"))
    assert nudenet_detector.detect(image, DetectOptions(conf=0.99)) == []
    only_male = nudenet_detector.detect(image, DetectOptions(conf=0.05, classes=["FACE_MALE"]))
    assert all(d.name == "FACE_MALE" for d in only_male)
    by_id = nudenet_detector.detect(image, DetectOptions(classes=[1]))
    assert by_id and all(d.class_id == 1 for d in by_id)
    with pytest.raises(InvalidInputError):
        nudenet_detector.detect(image, DetectOptions(classes=["NO_SUCH_CLASS"]))


def test_yolo_iou_controls_suppression(nudenet_detector: OnnxYoloDetector) -> None:
    image = _decode(image_bytes("astronaut.png"))
    loose = nudenet_detector.detect(image, DetectOptions(conf=0.01, iou=0.95))
    strict = nudenet_detector.detect(image, DetectOptions(conf=0.01, iou=0.05))
    assert len(loose) > len(strict)


def test_nms_is_class_agnostic_over_given_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7], dtype=np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert nms(boxes, scores, 0.9).tolist() == [0, 1, 2]


def test_yolo11n_untrained_loads_and_returns_no_confident_boxes() -> None:
    detector = OnnxYoloDetector.load("yolo11n", YOLO11N_UNTRAINED)
    assert detector.imgsz == (640, 640)
    assert len(detector.names) == 80
    images = [_decode(image_bytes("bus.jpg")), _decode(image_bytes("rocket.jpg"))]
    assert detector.detect_many(images, DetectOptions()) == [[], []]


def test_yolo_missing_file_is_model_unavailable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelUnavailableError):
        OnnxYoloDetector.load("ghost", tmp_path / "ghost.onnx")
