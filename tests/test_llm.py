"""Vision-LLM stage against a real OpenAI-protocol server on loopback, failures included."""

from __future__ import annotations

import base64

from fastapi.testclient import TestClient

from sight.api.app import create_app
from sight.config import LLMSettings, Settings
from sight.models.registry import EngineRegistry
from tests.helpers import image_bytes, v1_request, wait_until
from tests.servers import FakeLLMServer

BATCH = "/api/v1/inference/predict/batch"


def test_llm_gets_data_uri_query_and_grounding(client: TestClient, api_key: str, llm: FakeLLMServer) -> None:
    files = [("label.png", image_bytes("serial-label.png")), ("astro.png", image_bytes("astronaut.png"))]
    meta = [{"is_ocr": True, "is_llm": True}, {"is_yolo": True, "is_llm": True}]
    query = "find me the serial number from the images"
    body = client.post(BATCH, **v1_request(files, meta, api_key=api_key, query=query)).json()
    items = body["result"]["items"]
    assert [i["status"] for i in items] == ["done", "done"]
    assert items[0]["llm"]["answer"] == "The serial number is SN-4X7Q-2291-B."
    assert items[0]["llm"]["model"] == "fake-vl"
    assert items[0]["llm"]["usage"] == {"prompt_tokens": 100, "completion_tokens": 7}
    assert items[0]["timings_ms"]["llm"] > 0

    per_image = [r["body"] for r in llm.requests if FakeLLMServer.image_urls(r["body"])]
    assert len(per_image) == 2
    for req in per_image:
        assert req["model"] == "fake-vl"
        text = FakeLLMServer.user_text(req)
        assert query in text
        (url,) = FakeLLMServer.image_urls(req)
        assert url.startswith("data:image/jpeg;base64,")
        assert base64.b64decode(url.split(",", 1)[1])[:3] == b"\xff\xd8\xff"
    texts = sorted(FakeLLMServer.user_text(r) for r in per_image)
    assert any("SN-4X7Q-2291-B" in t.replace(" ", "") and "OCR" in t for t in texts)
    assert any("FACE_FEMALE" in t and "detector" in t for t in texts)

    # Two LLM items and a query: one more call condenses their answers into the batch answer.
    condense = [r["body"] for r in llm.requests if not FakeLLMServer.image_urls(r["body"])]
    assert len(condense) == 1
    assert body["result"]["answer"].startswith("CONDENSED:")
    assert "label.png" in body["result"]["answer"] and "astro.png" in body["result"]["answer"]


def test_single_llm_item_answer_is_the_batch_answer(client: TestClient, api_key: str, llm: FakeLLMServer) -> None:
    files = [("label.png", image_bytes("serial-label.png")), ("c.png", image_bytes("coffee.png"))]
    meta = [{"is_ocr": True, "is_llm": True}, {"is_yolo": True}]
    result = client.post(BATCH, **v1_request(files, meta, api_key=api_key, query="serial?")).json()["result"]
    assert result["answer"] == "The serial number is SN-4X7Q-2291-B."
    assert len(llm.requests) == 1


def test_llm_failures_are_item_errors_that_end(client: TestClient, api_key: str, llm: FakeLLMServer) -> None:
    files = [("a.png", image_bytes("astronaut.png"))]
    expect = {"429": "llm_error", "500": "llm_error", "malformed": "llm_error", "slow": "timeout"}
    for mode, code in expect.items():
        llm.reset()
        llm.mode, llm.delay = mode, 10.0  # the client's timeout is 2 s with one retry
        r = client.post(BATCH, **v1_request(files, [{"is_yolo": True, "is_llm": True}], api_key=api_key))
        item = r.json()["result"]["items"][0]
        assert r.status_code == 200
        assert item["status"] == "error" and item["error"]["code"] == code, (mode, item["error"])
        assert item["yolo"]["detections"], "the other stages of the item still return"
        if mode in {"429", "500"}:
            assert len(llm.requests) == 2, "retried once, then gave up"
        if mode == "slow":  # each attempt gave up on its answer (hung up) before the server's 10 s were over
            wait_until(lambda: len(llm.held) == 2, "both attempts ended")
            assert llm.held == ["hangup", "hangup"]


def test_a_hung_llm_holds_an_item_no_longer_than_the_llm_deadline(
    settings: Settings, engines: EngineRegistry, llm: FakeLLMServer
) -> None:
    """One deadline for the whole LLM stage, its retries included: a backend that never answers is left at the
    deadline (here 1 s), not after (retries + 1) x timeout (here 4 x 30 s), and no retry starts past it."""
    cfg = settings.model_copy(update={"llm": settings.llm.model_copy(update={"timeout": 30.0, "retries": 3,
                                                                             "deadline": 1.0})})
    app = create_app(cfg, engines=engines)
    llm.mode = "gate"  # held until the test opens the gate, which it never does
    with TestClient(app) as c:
        key, _ = c.portal.call(app.state.services.keys.create_key, "t")
        r = c.post(BATCH, **v1_request([("a.png", image_bytes("astronaut.png"))], [{"is_yolo": True, "is_llm": True}],
                                       api_key=key))
    item = r.json()["result"]["items"][0]
    assert item["error"]["code"] == "timeout" and "within 1s" in item["error"]["message"], item["error"]
    assert item["yolo"]["detections"]
    wait_until(lambda: llm.held, "the held call ended")
    assert llm.held == ["hangup"] and len(llm.requests) == 1, "one attempt, left at the deadline"


def test_unconfigured_or_unreachable_llm_is_llm_unavailable(
    settings: Settings, engines: EngineRegistry, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    import socket

    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    for base_url in (None, dead):
        cfg = settings.model_copy(update={"llm": LLMSettings(base_url=base_url, retries=0, timeout=2,
                                                             discover=False)})
        app = create_app(cfg, engines=EngineRegistry(cfg, detectors={"nudenet": engines.detector("nudenet")}))
        with TestClient(app) as c:
            key, _ = c.portal.call(app.state.services.keys.create_key, "t")
            files = [("a.png", image_bytes("astronaut.png")), ("b.png", image_bytes("coffee.png"))]
            meta = [{"is_yolo": True, "is_llm": True}, {"is_yolo": True}]
            items = c.post(BATCH, **v1_request(files, meta, api_key=key, query="q")).json()["result"]["items"]
        assert items[0]["error"]["code"] == "llm_unavailable", base_url
        assert items[0]["yolo"]["detections"]
        assert items[1]["status"] == "done"


def test_an_answer_past_max_tokens_is_cut_and_marked_truncated(client: TestClient, api_key: str,
                                                              llm: FakeLLMServer) -> None:
    """A backend that ignores max_tokens sends 10 MB: the answer keeps max_tokens x 16 bytes (512 x 16 here),
    cut between characters, and says it was cut; one that stopped at max_tokens says so too."""
    files = [("a.png", image_bytes("astronaut.png"))]
    llm.mode = "huge"
    item = client.post(BATCH, **v1_request(files, [{"is_llm": True}], api_key=api_key)).json()["result"]["items"][0]
    answer = item["llm"]["answer"]
    assert item["status"] == "done" and item["llm"]["truncated"] is True
    assert len(answer.encode()) <= 512 * 16 and answer.startswith("SN-4X7Q-2291-B é SN-4X7Q-2291-B")
    llm.mode = "cut"
    item = client.post(BATCH, **v1_request(files, [{"is_llm": True}], api_key=api_key)).json()["result"]["items"][0]
    assert item["llm"]["truncated"] is True and item["llm"]["answer"] == "I see an image."
    llm.mode = "ok"
    item = client.post(BATCH, **v1_request(files, [{"is_llm": True}], api_key=api_key)).json()["result"]["items"][0]
    assert item["llm"]["truncated"] is False
