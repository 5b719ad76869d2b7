"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from sight.api.deps import ServicesDep
from sight.schemas import Health, ModelState
from sight.storage.db import ping

router = APIRouter(tags=["operations"])


def _progress(state: ModelState) -> dict[str, object]:
    return state.model_dump(include={"state", "downloaded_bytes", "total_bytes"}, exclude_none=True)


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(services: ServicesDep) -> JSONResponse:
    """Ready for traffic: database reachable, not draining; with each model's state (as in GET /v1/models)."""
    engines = services.engines
    models = engines.catalog.all_models()
    states = await services.pipeline.states(engines, models)
    checks: dict[str, object] = {
        "models": [m.ref for m in models],
        "loaded": [m.ref for m in models if m.task != "llm" and states[m.ref].state == "ready"],
        # State names only: this route needs no key, and reasons may name files and hosts (GET /v1/models has
        # them, for a key holder).
        "states": {m.ref: _progress(states[m.ref]) for m in models},
        "llm": engines.llm_status().state,  # optional: never makes the server unready
    }
    ok = not services.draining
    try:
        await ping(services.db)
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means not ready
        checks["database"] = type(exc).__name__
        ok = False
    if services.draining:
        checks["draining"] = True
    body = Health(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus text exposition."""
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
