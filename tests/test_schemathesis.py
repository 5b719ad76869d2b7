"""Property-based API testing: schemathesis generates requests for every route of the app's own OpenAPI
spec. No response may be a 5xx, and every response must match the spec (status, content type, schema)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sight.api.app import create_app
from sight.config import FetchSettings, Settings
from sight.models.registry import EngineRegistry
from tests.servers import LiveServer


@pytest.fixture(scope="module")
def live_api(  # type: ignore[no-untyped-def]
    tmp_path_factory: pytest.TempPathFactory, nudenet_detector, ocr_engine, llm_server
) -> Iterator[LiveServer]:
    from tests.conftest import nudenet_path

    tmp = tmp_path_factory.mktemp("schemathesis")
    cfg = Settings(_env_file=None, database_url=f"sqlite+aiosqlite:///{tmp / 'st.db'}", data_dir=tmp / "data",
                   fetch=FetchSettings(total_timeout=2, connect_timeout=1),
                   yolo={"models": {"nudenet": nudenet_path()}, "default_model": "nudenet"},
                   llm={"base_url": llm_server.url, "model": "fake-vl", "timeout": 2, "retries": 0})
    engines = EngineRegistry(cfg, detectors={"nudenet": nudenet_detector}, ocr=ocr_engine)
    with LiveServer(create_app(cfg, engines=engines)) as live:
        yield live


@pytest.fixture(scope="module")
def api_key(live_api: LiveServer) -> str:
    key, _ = live_api.call(live_api.app.state.services.keys.create_key, "fuzz")
    return str(key)


def test_no_5xx_and_responses_match_the_spec(live_api: LiveServer, api_key: str) -> None:
    # One hypothesis run per operation (schemathesis' own pytest plugin does not support this pytest).
    schema = schemathesis.openapi.from_url(live_api.url + "/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    failures: dict[str, str] = {}
    calls: dict[str, int] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 18

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def run(case) -> None:  # type: ignore[no-untyped-def]
            calls[case.operation.label] = calls.get(case.operation.label, 0) + 1
            case.call_and_validate(base_url=live_api.url, headers={"Authorization": f"Bearer {api_key}"},
                                   checks=checks)

        try:
            run()
        except Exception as exc:  # collect every operation's failure, then report them together
            failures[operation.label] = str(exc)[:2000]
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    assert len(calls) == len(operations) and sum(calls.values()) >= 5 * len(operations), calls
