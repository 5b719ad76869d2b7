"""Every ``>>>`` example in Sight's docstrings runs, against real models and real servers on loopback."""

from __future__ import annotations

import asyncio
import base64
import doctest
import importlib
import io
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import sight
from sight.api.app import create_app
from sight.config import LLMSettings, ModelsSettings, Settings, YoloSettings
from sight.engines.base import Detection, DetectOptions, Grounding, LLMAnswer
from sight.runtimes.slots import RunSlots
from sight.services import open_services
from tests.conftest import IMAGES, YOLO11N_UNTRAINED, nudenet_path
from tests.model_servers import ModelFileServer
from tests.servers import FakeLLMServer, LiveServer

SKIP = ("sight.storage.migrations", "sight.__main__")  # alembic scripts; the CLI entry point runs on import


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(sight.__path__, "sight.") if not m.name.startswith(SKIP))


def _examples() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    found = []
    for name in _modules():
        found += [t for t in finder.find(importlib.import_module(name)) if t.examples]
    return found


@pytest.fixture(scope="module")
def doc_globals(tmp_path_factory: pytest.TempPathFactory, nudenet_detector: Any) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("docs")
    label = Image.open(IMAGES / "serial-label.png").convert("RGB")
    jpeg = io.BytesIO()
    label.save(jpeg, format="JPEG")
    with FakeLLMServer() as llm, ModelFileServer({"/yolo11n.onnx": YOLO11N_UNTRAINED.read_bytes()}) as files:
        settings = Settings(
            _env_file=None, database_url=f"sqlite+aiosqlite:///{tmp / 'docs.db'}", data_dir=tmp / "data",
            yolo=YoloSettings(models={"nudenet": nudenet_path()}, default_model="nudenet"),
            llm=LLMSettings(base_url=llm.url, model="fake-vl", discover=False), models=ModelsSettings(),
        )
        with LiveServer(create_app(settings)) as live:
            key, _ = live.call(live.app.state.services.keys.create_key, "docs")
            yield {
                "settings": settings, "server_url": live.url, "api_key": key, "asyncio": asyncio, "np": np,
                "detector": nudenet_detector, "image": Image.open(IMAGES / "astronaut.png").convert("RGB"),
                "label": label, "label_base64": base64.b64encode((IMAGES / "serial-label.png").read_bytes()).decode(),
                "jpeg_bytes": jpeg.getvalue(), "model_path": nudenet_path(), "model_url": files.source("yolo11n.onnx"),
                "Path": Path, "Detection": Detection, "DetectOptions": DetectOptions, "Grounding": Grounding,
                "LLMAnswer": LLMAnswer, "open_services": open_services, "RunSlots": RunSlots,
            }


def test_docstring_examples_exist_where_users_read_them() -> None:
    names = {t.name for t in _examples()}
    assert {"sight.client", "sight.models.official", "sight.engines.onnx_yolo", "sight.models.files",
            "sight.engines.rapid_ocr.RapidOcrEngine", "sight.engines.openai_llm", "sight.batches.runner"} <= names


@pytest.mark.parametrize("example", _examples(), ids=lambda t: t.name)
def test_docstring_example_runs(example: doctest.DocTest, doc_globals: dict[str, Any]) -> None:
    example.globs.update(doc_globals)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out: list[str] = []
    runner.run(example, out=out.append)
    assert runner.failures == 0, "".join(out)
