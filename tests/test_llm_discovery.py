"""Finding the vision LLM: a real Ollama-speaking server on loopback, started before, after or never."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient

from sight.api.app import create_app
from sight.config import LLMSettings, Settings
from sight.engines.base import Detector, Grounding
from sight.engines.llm_discovery import DiscoveringVisionLLM, LLMStatus
from sight.errors import LLMUnavailableError
from sight.models.registry import EngineRegistry
from tests.helpers import image_bytes, v1_request
from tests.processes import free_port
from tests.servers import FakeLLMServer, FakeOllamaServer

pytestmark = pytest.mark.anyio

JPEG = b"\xff\xd8\xff\xe0 not decoded by the fake"
VISION = ["completion", "vision"]
TEXT = ["completion", "tools"]


@asynccontextmanager
async def discovering(clock: Any = time.monotonic, **settings: Any) -> AsyncIterator[DiscoveringVisionLLM]:
    base = {"discover_interval": 0, "retries": 0, "timeout": 2.0, "backoff": 0.01}
    llm = DiscoveringVisionLLM(LLMSettings(**{**base, **settings}), clock=clock)
    try:
        yield llm
    finally:
        await llm.aclose()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # a loopback port nobody listens on


async def test_discovery_finds_an_ollama_vision_model_and_calls_it_by_name() -> None:
    with FakeOllamaServer({"llama3.2:1b": TEXT, "qwen2.5vl:3b": VISION}) as ollama:
        async with discovering(ollama_url=ollama.url) as llm:
            status = await llm.probe()
            assert status == LLMStatus("ollama", ollama.url + "/v1", "qwen2.5vl:3b", "ready")
            assert llm.describe() == status
            answer = await llm.analyze(JPEG, "what is this?", Grounding())
            condensed = await llm.condense("what is this?", [("a.jpg", "a cat"), ("b.jpg", "a dog")])
    assert answer.model == "qwen2.5vl:3b" and answer.answer == "I see an image."
    assert condensed.answer.startswith("CONDENSED:")
    assert [r["body"]["model"] for r in ollama.requests] == ["qwen2.5vl:3b", "qwen2.5vl:3b"]
    assert ollama.hits.count("GET /api/tags") == 1, "found once, then used without probing again"
    assert ollama.hits.count("POST /v1/chat/completions") == 2


async def test_ollama_without_a_vision_model_names_the_pull_command() -> None:
    with FakeOllamaServer({"llama3.2:1b": TEXT, "nomic-embed-text:latest": ["embedding"]}) as ollama:
        async with discovering(ollama_url=ollama.url) as llm:
            with pytest.raises(LLMUnavailableError) as caught:
                await llm.analyze(JPEG, "q", Grounding())
    assert caught.value.code == "llm_unavailable"
    message = caught.value.message
    assert f"Ollama at {ollama.url} has no vision model" in message
    assert "llama3.2:1b" in message and "`ollama pull qwen2.5vl:3b`" in message
    assert llm.describe().state == "unavailable" and llm.describe().reason == message
    assert not ollama.requests, "no chat completion is sent to a model that cannot see"


async def test_no_ollama_is_llm_unavailable_at_once_saying_what_to_set() -> None:
    async with discovering(ollama_url=dead_url()) as llm:
        start = time.monotonic()
        status = await llm.probe()
        with pytest.raises(LLMUnavailableError) as caught:
            await llm.analyze(JPEG, "q", Grounding())
        elapsed = time.monotonic() - start
    # A refused connection answers at once: milliseconds. The bound is generous for a busy machine; a probe
    # that waited out its timeouts instead would not meet it.
    assert elapsed < 3.0, f"two probes of a closed port took {elapsed:.2f}s"
    assert status.state == "unavailable" and status.backend is None and status.model is None
    message = caught.value.message
    assert "no Ollama at http://127.0.0.1:" in message
    assert "`ollama pull qwen2.5vl:3b`" in message and "SIGHT_LLM__BASE_URL" in message
    assert "SIGHT_LLM__MODEL" in message
    assert status.summary() == status.reason


async def test_ollama_started_after_sight_is_found_on_a_later_use() -> None:
    port = free_port()
    async with discovering(ollama_url=f"http://127.0.0.1:{port}") as llm:
        assert (await llm.probe()).state == "unavailable"
        with FakeOllamaServer({"qwen2.5vl:3b": VISION}, port=port) as ollama:
            answer = await llm.analyze(JPEG, "q", Grounding())
            assert llm.describe().state == "ready"
    assert answer.model == "qwen2.5vl:3b"
    assert ollama.hits[0] == "GET /api/tags"


async def test_found_ollama_that_stops_is_looked_for_again() -> None:
    port = free_port()
    async with discovering(ollama_url=f"http://127.0.0.1:{port}") as llm:
        with FakeOllamaServer({"qwen2.5vl:3b": VISION}, port=port):
            assert (await llm.probe()).state == "ready"
        with pytest.raises(LLMUnavailableError, match="unreachable"):
            await llm.analyze(JPEG, "q", Grounding())
        assert llm.describe().state == "unavailable"
        assert "stopped answering" in (llm.describe().reason or "")
        with FakeOllamaServer({"llava:7b": VISION}, port=port):
            answer = await llm.analyze(JPEG, "q", Grounding())
    assert answer.model == "llava:7b"


async def test_settings_model_is_preferred_else_the_first_vision_model_by_name() -> None:
    catalog = {"qwen2.5vl:3b": VISION, "llava:7b": VISION, "gemma3:1b": TEXT, "minicpm-v:latest": VISION}
    with FakeOllamaServer(catalog) as ollama:
        picks: dict[str | None, LLMStatus] = {}
        for model in (None, "qwen2.5vl:3b", "minicpm-v", "gemma3:1b", "absent:7b"):
            async with discovering(ollama_url=ollama.url, model=model) as llm:
                picks[model] = await llm.probe()
    assert picks[None].model == "llava:7b" and picks[None].reason is None
    assert picks["qwen2.5vl:3b"].model == "qwen2.5vl:3b"
    assert picks["minicpm-v"].model == "minicpm-v:latest", "an untagged name means :latest, as in Ollama"
    assert picks["gemma3:1b"].model == "gemma3:1b", "a model named in settings is trusted to read images"
    absent = picks["absent:7b"]
    assert absent.model == "llava:7b" and absent.state == "ready"
    assert absent.reason and "`ollama pull absent:7b`" in absent.reason


async def test_base_url_without_model_uses_the_model_the_backend_lists(llm: FakeLLMServer) -> None:
    llm.models = ["Qwen/Qwen2.5-VL-7B-Instruct"]
    async with discovering(base_url=llm.url, ollama_url=dead_url()) as client:
        answer = await client.analyze(JPEG, "q", Grounding())
        status = client.describe()
    assert status == LLMStatus("openai-compatible", llm.url, "Qwen/Qwen2.5-VL-7B-Instruct", "ready")
    assert answer.model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert llm.requests[0]["body"]["model"] == "Qwen/Qwen2.5-VL-7B-Instruct"

    llm.models = ["base-model", "a-lora-adapter"]
    async with discovering(base_url=llm.url) as client:
        status = await client.probe()
    assert status.model == "base-model" and status.reason and "SIGHT_LLM__MODEL" in status.reason

    async with discovering(base_url=llm.origin) as client:  # no /v1: its /models is a 404
        with pytest.raises(LLMUnavailableError) as caught:
            await client.analyze(JPEG, "q", Grounding())
    assert "HTTP 404" in caught.value.message and "set SIGHT_LLM__MODEL" in caught.value.message


async def test_configured_base_url_and_model_are_used_without_probing(llm: FakeLLMServer) -> None:
    async with discovering(base_url=llm.url, model="fake-vl") as client:
        status = client.describe()
        assert await client.probe() == status
        await client.analyze(JPEG, "q", Grounding())
    assert status == LLMStatus("openai-compatible", llm.url, "fake-vl", "ready")
    assert status.summary() == f"openai-compatible fake-vl at {llm.url}"
    assert llm.hits == ["POST /v1/chat/completions"]


async def test_discovery_off_never_probes() -> None:
    with FakeOllamaServer() as ollama:
        async with discovering(ollama_url=ollama.url, discover=False) as llm:
            status = await llm.probe()
            with pytest.raises(LLMUnavailableError, match="SIGHT_LLM__DISCOVER=false"):
                await llm.analyze(JPEG, "q", Grounding())
    assert status.state == "unavailable" and "SIGHT_LLM__BASE_URL" in (status.reason or "")
    assert ollama.hits == []


async def test_concurrent_uses_share_one_probe() -> None:
    errors: list[str] = []

    async def use(llm: DiscoveringVisionLLM) -> None:
        try:
            await llm.analyze(JPEG, "q", Grounding())
        except LLMUnavailableError as exc:
            errors.append(exc.message)

    with FakeOllamaServer({"llama3.2:1b": TEXT}) as ollama:
        async with discovering(ollama_url=ollama.url) as llm, anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(use, llm)
    assert len(errors) == 8 and len(set(errors)) == 1
    assert ollama.hits.count("GET /api/tags") == 1


async def test_probes_while_nothing_is_found_are_rate_limited() -> None:
    now = [100.0]
    with FakeOllamaServer({"llama3.2:1b": TEXT}) as ollama:
        async with discovering(clock=lambda: now[0], ollama_url=ollama.url, discover_interval=5.0) as llm:
            assert (await llm.probe()).state == "unavailable"
            ollama.catalog["qwen2.5vl:3b"] = VISION  # pulled now: seen at the next probe, not before
            now[0] += 1
            with pytest.raises(LLMUnavailableError):
                await llm.analyze(JPEG, "q", Grounding())
            assert ollama.hits.count("GET /api/tags") == 1
            now[0] += 5
            answer = await llm.analyze(JPEG, "q", Grounding())
    assert answer.model == "qwen2.5vl:3b"
    assert ollama.hits.count("GET /api/tags") == 2


def test_an_injected_discovering_llm_answers_items_through_the_app(
    settings: Settings, nudenet_detector: Detector
) -> None:
    with FakeOllamaServer({"qwen2.5vl:3b": VISION}) as ollama:
        cfg = settings.model_copy(update={"llm": LLMSettings(ollama_url=ollama.url, retries=0, timeout=2.0)})
        engines = EngineRegistry(cfg, detectors={"nudenet": nudenet_detector}, llm=DiscoveringVisionLLM(cfg.llm))
        app = create_app(cfg, engines=engines)
        with TestClient(app) as c:
            key, _ = c.portal.call(app.state.services.keys.create_key, "t")
            files = [("a.png", image_bytes("astronaut.png"))]
            body = c.post("/api/v1/inference/predict/batch",
                          **v1_request(files, [{"is_llm": True}], api_key=key, query="q")).json()
    (item,) = body["result"]["items"]
    assert item["status"] == "done", item
    assert item["llm"]["model"] == "qwen2.5vl:3b"
    assert [r["body"]["model"] for r in ollama.requests] == ["qwen2.5vl:3b"]


def test_server_with_no_llm_settings_finds_ollama_and_every_report_agrees(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from sight.cli.banner import printer
    from sight.config import YoloSettings
    from tests.conftest import nudenet_path

    with FakeOllamaServer() as ollama:
        settings = Settings(
            _env_file=None, database_url=f"sqlite+aiosqlite:///{tmp_path / 's.db'}", data_dir=tmp_path / "data",
            yolo=YoloSettings(models={"nudenet": nudenet_path()}, default_model="nudenet"),
            llm=LLMSettings(ollama_url=ollama.url, discover_interval=0),
        )
        out = io.StringIO()
        app = create_app(settings, on_ready=printer(None, Console(file=out, width=300)))
        with TestClient(app) as client:
            banner = out.getvalue()
            assert f"LLM        ollama qwen2.5vl:3b at {ollama.url}/v1" in banner
            key, _ = client.portal.call(app.state.services.keys.create_key, "team")
            auth = {"Authorization": f"Bearer {key}"}
            llm = client.get("/v1/models", headers=auth).json()["llm"]
            assert llm == {"backend": "ollama", "base_url": f"{ollama.url}/v1", "model": "qwen2.5vl:3b",
                           "state": "ready", "reason": None}
            assert client.get("/readyz").json()["checks"]["llm"] == "ready"  # no key: the state alone
            files = [("files", ("label.png", image_bytes("serial-label.png")))]
            r = client.post("/api/v1/inference/predict/batch", headers=auth, files=files,
                            data={"query": "serial?", "metadata": json.dumps({"is_ocr": True, "is_llm": True})})
            item = r.json()["result"]["items"][0]
            assert item["status"] == "done" and item["llm"]["answer"] == "The serial number is SN-4X7Q-2291-B."
            assert [req["body"]["model"] for req in ollama.requests] == ["qwen2.5vl:3b"]
