"""The Python client, in process, against a real server on loopback: every call, and the error tree."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from sight.api.app import create_app
from sight.client import Client, ItemOptions, SightError, VisionPredict
from sight.config import Settings
from sight.engines.registry import EngineRegistry
from sight.errors import AuthenticationError, ConflictError, NotFoundError
from tests.conftest import IMAGES
from tests.servers import LiveServer


def test_client_predicts_and_runs_a_batch_end_to_end(settings: Settings, engines: EngineRegistry,
                                                      tmp_path: Path) -> None:
    with LiveServer(create_app(settings, engines=engines)) as live:
        key, _ = live.call(live.app.state.services.keys.create_key, "client")
        with Client(live.url, key) as sight:
            answer = sight.predict([IMAGES / "astronaut.png", IMAGES / "serial-label.png"],
                                   [ItemOptions(is_yolo=True), ItemOptions(is_ocr=True)])
            first, second = answer.result.items
            assert first.yolo is not None and first.yolo.detections[0].name == "FACE_FEMALE"
            assert second.ocr is not None and "Serial No: SN-4X7Q-2291-B" in second.ocr.text

            batch = sight.create_batch("labels", idempotency_key="once")
            assert sight.create_batch("labels", idempotency_key="once").batch_id == batch.batch_id
            label = base64.b64encode((IMAGES / "serial-label.png").read_bytes()).decode()
            ids = sight.add_requests(batch.batch_id, [
                VisionPredict(image_base64=label, is_ocr=True),
                ("mine", VisionPredict(image_base64=label, is_ocr=True, filename="label.png")),
            ])
            assert len(ids) == 2 and ids[1] == "mine"
            with pytest.raises(ConflictError):
                sight.add_requests(batch.batch_id, [("mine", VisionPredict(image_base64=label, is_ocr=True))])
            assert [r.batch_request_id for r in sight.list_requests(batch.batch_id).batch_request_metadata] == ids
            assert batch.batch_id in [b.batch_id for b in sight.list_batches().batches]

            live.call(live.app.state.services.runner.run_until_idle)
            done = sight.get_batch(batch.batch_id)
            assert done.state.num_success == 2 and done.state.num_pending == 0
            results = list(sight.iter_results(batch.batch_id, page_size=1))
            assert sorted(r.batch_request_id for r in results) == sorted(ids)
            assert sight.results_page(batch.batch_id, limit=1).pagination_token is not None
            assert sight.cancel_batch(batch.batch_id).batch_id == batch.batch_id

            with pytest.raises(NotFoundError):
                sight.get_batch("batch_nope")
        with Client(live.url, "sk-sight-key_000000000000-not-a-real-secret-at-all") as stranger, \
                pytest.raises(AuthenticationError) as caught:
            stranger.list_batches()
        assert isinstance(caught.value, SightError) and caught.value.code == "unauthorized"
