"""The prediction API as clients see it: shapes, per-item isolation, request-level errors."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sight.config import Settings
from tests.conftest import IMAGES
from tests.helpers import image_bytes, key_parts, png_bytes, v1_request
from tests.servers import LiveServer

BATCH = "/api/v1/inference/predict/batch"
BATCH_V2 = "/api/v1/inference/predict/batch/v2"


def test_batch_v1_as_the_public_python_example_sends_it(live: LiveServer, app) -> None:  # type: ignore[no-untyped-def]
    # Built exactly like the public example: httpx, data={api_key, metadata: [json...], query}, files=[...],
    # sent over a real socket to uvicorn.
    api_key, _ = live.call(app.state.services.keys.create_key, "team-a")
    names = ["astronaut.png", "coffee.png"]
    metadata = [{"is_yolo": True, "is_llm": False}, {"is_yolo": True, "is_llm": False}]
    handles = [open(IMAGES / n, "rb") for n in names]  # noqa: SIM115
    try:
        r = httpx.post(
            f"{live.url}{BATCH}",
            data={"api_key": api_key, "metadata": [json.dumps(m) for m in metadata], "query": "what is here?"},
            files=[("files", f) for f in handles],
            timeout=60,
        )
    finally:
        for f in handles:
            f.close()
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["code"] == 0
    items = body["result"]["items"]
    assert [i["index"] for i in items] == [0, 1]
    assert [i["filename"] for i in items] == names
    first = items[0]
    assert first["status"] == "done" and first["error"] is None
    assert first["image"] == {"width": 512, "height": 512}
    assert first["yolo"]["model"] == "nudenet" and first["yolo"]["model_version"] == "1"
    det = first["yolo"]["detections"][0]
    assert set(det) == {"name", "class", "confidence", "box"}
    assert det["name"] == "FACE_FEMALE" and det["class"] == 1
    assert set(det["box"]) == {"x1", "y1", "x2", "y2"}
    assert first["ocr"] is None and first["llm"] is None
    assert set(first["timings_ms"]) == {"fetch", "decode", "yolo", "ocr", "llm"}
    assert first["timings_ms"]["yolo"] > 0 and first["timings_ms"]["decode"] > 0
    assert body["result"]["summary"] == {"total": 2, "done": 2, "error": 0}
    assert body["result"]["answer"] is None
    assert body["result"]["duration_ms"] > 0


def test_batch_reports_bad_items_without_failing_siblings(client: TestClient, api_key: str) -> None:
    bomb = png_bytes(Image.new("L", (10_000, 6_000)))  # 60 Mpx > the 50 Mpx default, tiny on the wire
    truncated = image_bytes("bus.jpg")[:5000]
    files = [
        ("good.png", image_bytes("astronaut.png")),
        ("corrupt.jpg", truncated),
        ("notes.jpg", b"this is plain text, not an image"),
        ("bomb.png", bomb),
        ("empty.jpg", b""),
        ("good2.png", image_bytes("coffee.png")),
    ]
    r = client.post(BATCH, **v1_request(files, [{"is_yolo": True}] * len(files), api_key=api_key))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["code"] == 1
    items = body["result"]["items"]
    codes = [(i["status"], (i["error"] or {}).get("code")) for i in items]
    assert codes == [
        ("done", None),
        ("error", "invalid_image"),
        ("error", "invalid_image"),
        ("error", "image_too_large"),
        ("error", "invalid_image"),
        ("done", None),
    ]
    assert all(i["error"]["message"] for i in items if i["error"])
    assert body["result"]["summary"] == {"total": 6, "done": 2, "error": 4}


def test_batch_v2_base64_and_data_uri(client: TestClient, api_key: str) -> None:
    raw = base64.b64encode(image_bytes("astronaut.png")).decode()
    body = {
        "api_key": api_key,
        "data": [
            {"image_base64": raw, "filename": "a.png", "is_yolo": True, "is_llm": False},
            {"image_base64": "data:image/png;base64," + raw, "is_yolo": True},
            {"image_base64": "!!!not base64!!!", "filename": "bad", "is_yolo": True},
            {"filename": "nothing", "is_yolo": True},
            {"image_base64": raw, "image_url": "https://example.com/a.png", "filename": "both", "is_yolo": True},
        ],
    }
    r = client.post(BATCH_V2, json=body)
    assert r.status_code == 200, r.text
    items = r.json()["result"]["items"]
    assert items[0]["yolo"]["detections"][0]["name"] == "FACE_FEMALE"
    assert items[1]["yolo"]["detections"] == items[0]["yolo"]["detections"]
    assert items[2]["error"]["code"] == "invalid_image"
    # Neither or both image fields: the item's input error (one code on every family), never the request's.
    assert items[3]["error"]["code"] == items[4]["error"]["code"] == "invalid_input"
    assert "exactly one of image_url and image_base64" in items[4]["error"]["message"]


def test_item_options_reach_the_detector(client: TestClient, api_key: str) -> None:
    files = [("a.png", image_bytes("astronaut.png"))] * 5
    meta = [{"is_yolo": True}, {"is_yolo": True, "conf": 0.99}, {"is_yolo": True, "classes": ["FACE_FEMALE"]},
            {"is_yolo": True, "classes": ["FACE_MALE"]}, {"is_yolo": True, "conf": 0.05}]
    items = client.post(BATCH, **v1_request(files, meta, api_key=api_key)).json()["result"]["items"]
    every, strict, faces, men, loose = ([d["name"] for d in i["yolo"]["detections"]] for i in items)
    assert "FACE_FEMALE" in every and strict == []
    assert faces and set(faces) == {"FACE_FEMALE"} and faces == [n for n in every if n == "FACE_FEMALE"]
    assert men == [] and "FACE_MALE" not in every, "the filter keeps only the class asked for (none here)"
    assert len(loose) > len(every), "a lower threshold keeps more boxes"


def test_unknown_model_is_an_item_error(client: TestClient, api_key: str) -> None:
    files = [("a.png", image_bytes("astronaut.png"))] * 2
    meta = [{"is_yolo": True, "yolo_model": "ghost"}, {"is_yolo": True, "yolo_model": "nudenet:1"}]
    items = client.post(BATCH, **v1_request(files, meta, api_key=api_key)).json()["result"]["items"]
    assert items[0]["error"]["code"] == "model_not_found"
    assert items[1]["status"] == "done"


def test_ocr_item_reads_serial_number(client: TestClient, api_key: str) -> None:
    files = [("label.png", image_bytes("serial-label.png"))]
    items = client.post(BATCH, **v1_request(files, [{"is_ocr": True}], api_key=api_key)).json()["result"]["items"]
    assert "SN-4X7Q-2291-B" in items[0]["ocr"]["text"].replace(" ", "")
    assert items[0]["ocr"]["lines"][0]["box"]["x2"] > 0


@pytest.mark.parametrize("size", [(1, 60000), (60000, 1)])
def test_an_image_ocr_cannot_read_is_an_item_error_that_keeps_its_detections(
        client: TestClient, api_key: str, size: tuple[int, int]) -> None:
    out = io.BytesIO()
    Image.new("RGB", size, "white").save(out, format="PNG")
    files = [("thin.png", out.getvalue()), ("label.png", image_bytes("serial-label.png"))]
    meta = [{"is_yolo": True, "is_ocr": True}, {"is_ocr": True}]
    items = client.post(BATCH, **v1_request(files, meta, api_key=api_key)).json()["result"]["items"]
    assert items[0]["status"] == "error" and items[0]["error"]["code"] == "invalid_image", items[0]
    assert "OCR needs an image at least 8 pixels" in items[0]["error"]["message"]
    assert items[0]["yolo"] is not None and items[0]["yolo"]["detections"] == []  # detection ran, found nothing
    assert items[0]["image"] == {"width": size[0], "height": size[1]}
    assert items[1]["status"] == "done" and "SN-4X7Q-2291-B" in items[1]["ocr"]["text"]


def _error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["detail"]["code"] == code
    assert r.json()["detail"]["message"]


def test_request_level_errors_answer_400_not_422(client: TestClient, api_key: str) -> None:
    one = [("a.png", image_bytes("coffee.png"))]
    _error(client.post(BATCH, **v1_request(one * 2, [{"is_yolo": True}], api_key=api_key)), 400, "invalid_input")
    bad_json = {"data": {"api_key": api_key, "metadata": ["{not json"]}, "files": [("files", ("a.png", b"x"))]}
    _error(client.post(BATCH, **bad_json), 400, "invalid_input")
    wrong_type = v1_request(one, [{"is_yolo": "yes"}], api_key=api_key)
    _error(client.post(BATCH, **wrong_type), 400, "invalid_input")
    _error(client.post(BATCH, **v1_request(one, [{"conf": 2}], api_key=api_key)), 400, "invalid_input")
    _error(client.post(BATCH, data={"api_key": api_key, "metadata": []}), 400, "invalid_input")
    _error(client.post(BATCH, json={"api_key": api_key}), 400, "invalid_input")
    _error(client.post(BATCH_V2, json={"api_key": api_key, "data": []}), 400, "invalid_input")
    _error(client.post(BATCH_V2, content=b"{oops", headers={"Content-Type": "application/json"}), 400,
           "invalid_input")
    r = client.post(BATCH_V2, json={"api_key": api_key, "data": [{"is_yolo": "maybe"}]})
    _error(r, 400, "invalid_input")
    assert api_key not in r.text


def test_too_many_files_and_bytes_answer_413(client: TestClient, api_key: str) -> None:
    many = [("a.png", b"x")] * 17  # max_files is 16 in the test settings
    _error(client.post(BATCH, **v1_request(many, [{}] * 17, api_key=api_key)), 413, "payload_too_large")
    big = [("big.png", b"\0" * (41 * 1024 * 1024))]
    _error(client.post(BATCH, **v1_request(big, [{}], api_key=api_key)), 413, "payload_too_large")
    v2 = {"api_key": api_key, "data": [{"image_url": "http://example.com/a.jpg"}] * 17}
    _error(client.post(BATCH_V2, json=v2), 413, "payload_too_large")


def test_auth_header_body_and_failures(client: TestClient, api_key: str, app) -> None:  # type: ignore[no-untyped-def]
    one = [("a.png", image_bytes("coffee.png"))]
    ok = v1_request(one, [{"is_yolo": True}])
    assert client.post(BATCH, headers={"Authorization": f"Bearer {api_key}"}, **ok).status_code == 200
    assert client.post(BATCH, headers={"Authorization": api_key}, **ok).status_code == 200
    _error(client.post(BATCH, **ok), 401, "unauthorized")
    _error(client.post(BATCH, **v1_request(one, [{}], api_key="sk-sight-garbage")), 401, "unauthorized")
    forged = api_key[: api_key.rindex("-") + 1] + "A" * 43
    _error(client.post(BATCH, **v1_request(one, [{}], api_key=forged)), 401, "unauthorized")
    other, _ = client.portal.call(app.state.services.keys.create_key, "team-b")
    conflict = v1_request(one, [{}], api_key=api_key)
    r = client.post(BATCH, headers={"Authorization": f"Bearer {other}"}, **conflict)
    _error(r, 400, "invalid_input")
    assert api_key not in r.text and other not in r.text
    key_id, _ = key_parts(other)
    client.portal.call(app.state.services.keys.revoke, key_id)
    _error(client.post(BATCH, headers={"Authorization": f"Bearer {other}"}, **ok), 401, "unauthorized")
    v2 = {"data": [{"image_base64": base64.b64encode(image_bytes("coffee.png")).decode()}]}
    _error(client.post(BATCH_V2, json=v2), 401, "unauthorized")
    assert client.post(BATCH_V2, json={**v2, "api_key": api_key}).status_code == 200


def test_exif_orientation_is_applied_before_detection(client: TestClient, api_key: str) -> None:
    from tests.helpers import exif_rotated_jpeg

    _upright, sideways = exif_rotated_jpeg(IMAGES / "astronaut.png")
    assert Image.open(io.BytesIO(sideways)).getexif()[0x0112] == 6
    item = client.post(BATCH, **v1_request([("s.jpg", sideways)], [{"is_yolo": True}], api_key=api_key)).json()
    det = item["result"]["items"][0]["yolo"]["detections"]
    face = next(d for d in det if d["name"] == "FACE_FEMALE")
    assert 150 < face["box"]["x1"] < face["box"]["x2"] < 300 and 50 < face["box"]["y1"] < face["box"]["y2"] < 210


def test_health_ready_metrics_and_openapi(client: TestClient, api_key: str) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"
    client.post(BATCH, **v1_request([("a.png", image_bytes("coffee.png"))], [{"is_yolo": True}], api_key=api_key))
    metrics = client.get("/metrics").text
    assert 'sight_items_total{code="",status="done"}' in metrics
    assert 'sight_stage_seconds_bucket{le="0.001",stage="yolo"}' in metrics
    spec = client.get("/openapi.json").json()
    for path in (BATCH, BATCH_V2, "/api/v1/inference/predict/stream", "/api/v1/inference/predict/stream/v2"):
        assert path in spec["paths"]
    assert "multipart/form-data" in spec["paths"][BATCH]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


def test_large_jpeg_is_decoded_at_reduced_scale_with_boxes_in_original_pixels(client: TestClient, api_key: str) -> None:
    from tests.helpers import jpeg_bytes

    small = Image.open(IMAGES / "astronaut.png").convert("RGB")
    big = small.resize((4096, 4096), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = jpeg_bytes(big.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes())
    files = [("small.jpg", jpeg_bytes(small)), ("big.jpg", jpeg_bytes(big)), ("sideways.jpg", sideways)]
    items = client.post(BATCH, **v1_request(files, [{"is_yolo": True}] * 3, api_key=api_key)).json()["result"]["items"]
    assert [i["image"] for i in items] == [{"width": 512, "height": 512}] + [{"width": 4096, "height": 4096}] * 2
    face = [next(d for d in i["yolo"]["detections"] if d["name"] == "FACE_FEMALE")["box"] for i in items]
    for k in ("x1", "y1", "x2", "y2"):
        assert abs(face[1][k] - 8 * face[0][k]) < 8 * 8, (k, face)
        assert abs(face[2][k] - face[1][k]) < 8 * 8, (k, face)


def test_yolo_result_is_the_same_whatever_else_the_item_asks(client: TestClient, api_key: str, llm) -> None:  # type: ignore[no-untyped-def]
    """Detection sees the picture decoded in full whatever other stages run (a reduced decode would give other
    pixels, and other boxes): the same boxes, scores equal to 1e-4, alone, with OCR, with the LLM."""
    import io

    from PIL import Image

    bus = Image.open(io.BytesIO(image_bytes("bus.jpg")))
    big = io.BytesIO()
    bus.resize((3000, 4000)).save(big, format="JPEG", quality=92)  # large enough for any reduced decode
    for name, data in (("bus.jpg", image_bytes("bus.jpg")), ("big.jpg", big.getvalue()),
                       ("astronaut.png", image_bytes("astronaut.png"))):
        meta = [{"is_yolo": True}, {"is_yolo": True, "is_ocr": True}, {"is_yolo": True, "is_llm": True},
                {"is_yolo": True, "is_ocr": True, "is_llm": True}]
        r = client.post(BATCH, **v1_request([(name, data)] * len(meta), meta, api_key=api_key))
        items = r.json()["result"]["items"]
        assert all(i["status"] == "done" for i in items), items
        found = [[(d["name"], d["box"], d["confidence"]) for d in i["yolo"]["detections"]] for i in items]
        for other in found[1:]:
            assert [(n, b) for n, b, _ in other] == [(n, b) for n, b, _ in found[0]], name
            assert all(abs(c - c0) <= 1e-4 for (_, _, c), (_, _, c0) in zip(other, found[0], strict=True))


def test_yolo_on_bus_matches_ultralytics_predictor_figures(client: TestClient, api_key: str) -> None:
    """nudenet's YOLOv8n at its 320 on bus.jpg: what Ultralytics' own predictor finds (rect letterbox for a
    dynamic export, full decode, iou 0.7): two FEET_COVERED boxes at 0.264 and 0.252 (tests/test_parity.py runs
    the predictor itself on every shared photo)."""
    r = client.post(BATCH, **v1_request([("bus.jpg", image_bytes("bus.jpg"))], [{"is_yolo": True}], api_key=api_key))
    found = r.json()["result"]["items"][0]["yolo"]["detections"]
    assert [d["name"] for d in found] == ["FEET_COVERED", "FEET_COVERED"]
    assert [round(d["confidence"], 3) for d in found] == [0.264, 0.252]


def test_a_detector_put_into_the_models_folder_is_served_without_a_reload(
    client: TestClient, api_key: str, settings: Settings
) -> None:
    from tests.conftest import nudenet_path

    meta = [{"is_yolo": True, "yolo_model": "dropped"}]
    files = [("a.png", image_bytes("astronaut.png"))]
    missing = client.post(BATCH, **v1_request(files, meta, api_key=api_key)).json()["result"]["items"][0]
    assert missing["error"]["code"] == "model_not_found"
    assert "known: nudenet" in missing["error"]["message"] and str(settings.models_dir) in missing["error"]["message"]
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    (settings.models_dir / "dropped.onnx").symlink_to(nudenet_path())
    found = client.post(BATCH, **v1_request(files, meta, api_key=api_key)).json()["result"]["items"][0]
    assert found["status"] == "done", found["error"]
    assert found["yolo"]["model"] == "dropped" and found["yolo"]["detections"][0]["name"] == "FACE_FEMALE"
