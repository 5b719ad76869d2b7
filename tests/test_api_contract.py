"""Request-level contract checks: text that cannot be written back out, who is asked for a key first."""

from __future__ import annotations

import base64
import json

from fastapi.testclient import TestClient

from sight.api.streaming import _line
from sight.schemas import ItemResult
from tests.helpers import image_bytes, v1_request

V2 = "/api/v1/inference/predict/batch/v2"
STREAM_V2 = "/api/v1/inference/predict/stream/v2"
LONE = "\ud800"  # a lone surrogate: valid in JSON text, impossible to write out as UTF-8


def _b64(name: str) -> str:
    return base64.b64encode(image_bytes(name)).decode()


def test_lone_surrogate_anywhere_in_a_request_is_a_400_not_a_500(client: TestClient, api_key: str) -> None:
    auth = {"Authorization": f"Bearer {api_key}"}
    good = {"image_base64": _b64("coffee.png"), "filename": "ok.png", "is_yolo": True}
    for bad in ({"filename": LONE}, {"yolo_model": LONE}, {"classes": [LONE]}, {"llm_model": LONE}):
        body = {"data": [{**good, **bad}, good]}
        for path in (V2, STREAM_V2):
            r = client.post(path, content=json.dumps(body), headers={**auth, "Content-Type": "application/json"})
            assert r.status_code == 400, (path, bad, r.text)
            assert r.json()["detail"]["code"] == "invalid_input" and "surrogate" in r.json()["detail"]["message"]
    r = client.post(V2, content=json.dumps({"query": LONE, "data": [good]}),
                    headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 400
    v1 = client.post("/api/v1/inference/predict/batch",
                     **v1_request([("a.png", image_bytes("coffee.png"))], [{"is_yolo": True, "yolo_model": LONE}],
                                  api_key=api_key))
    assert v1.status_code == 400 and "surrogate" in v1.json()["detail"]["message"]
    batch = client.post("/v1/batches", json={"name": "b"}, headers=auth).json()["batch_id"]
    add = client.post(f"/v1/batches/{batch}/requests", headers={**auth, "Content-Type": "application/json"},
                      content=json.dumps({"batch_requests": [{"batch_request_id": LONE, "batch_request": {
                          "vision_predict": {"image_base64": _b64("coffee.png"), "is_yolo": True}}}]}))
    assert add.status_code == 400
    deploy = client.post("/v1/detect/latest", headers={**auth, "Content-Type": "application/json"},
                         content=json.dumps({"data": [_b64("coffee.png"), {LONE: 1}]}))
    assert deploy.status_code == 400 and deploy.json()["detail"]["code"] == "invalid_input"
    # And the server is fine: the valid request still answers.
    r = client.post(V2, json={"data": [good]}, headers=auth)
    assert r.status_code == 200 and r.json()["result"]["items"][0]["status"] == "done"


def test_stream_line_that_cannot_be_serialized_becomes_an_item_error() -> None:
    broken = ItemResult.model_construct(index=3, filename=LONE, status="done", image=None, yolo=None, ocr=None,
                                        llm=None, timings_ms={}, error=None)
    line = json.loads(_line(broken))
    assert line["status"] == "error" and line["index"] == 3 and line["error"]["code"] == "internal"


def test_v2_without_a_key_is_401_before_its_body_is_judged(client: TestClient) -> None:
    for path in (V2, STREAM_V2):
        for body in ({"data": []}, {"data": "nonsense"}, {}):
            r = client.post(path, json=body)
            assert r.status_code == 401, (path, body, r.text)
            assert r.json()["detail"]["code"] == "unauthorized"
        wrong = client.post(path, json={"api_key": "sk-sight-key_000000000000-nope", "data": []})
        assert wrong.status_code == 401


def test_v2_with_a_key_still_validates_its_body(client: TestClient, api_key: str) -> None:
    r = client.post(V2, json={"api_key": api_key, "data": "nonsense"})
    assert r.status_code == 400 and r.json()["detail"]["code"] == "invalid_input"
    r = client.post(V2, json={"data": []}, headers={"Authorization": f"Bearer {api_key}"})
    assert r.status_code in (200, 400)


def test_a_key_that_is_not_valid_unicode_is_401_not_500(client: TestClient) -> None:
    for path in (V2, STREAM_V2):
        r = client.post(path, content=json.dumps({"api_key": LONE, "data": []}),
                        headers={"Content-Type": "application/json"})
        assert r.status_code == 401, r.text
