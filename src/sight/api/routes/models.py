"""Models (family 3): the registry, reloads, and Spice-style multi-model predict."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse

from sight.api.deps import PrincipalDep, ServicesDep
from sight.api.errors import documented
from sight.errors import ForbiddenError, NotFoundError
from sight.models.states import model_list, model_public
from sight.policies.admission import prediction_demands
from sight.schemas import (
    ErrorResponse,
    ModelDetail,
    ModelList,
    MultiPredictRequest,
    MultiPredictResponse,
    PredictInput,
    PredictionOut,
    PredictionSpec,
    ShadowAgreement,
)
from sight.storage.keys import Principal

router = APIRouter(prefix="/v1", tags=["models"])
ERRORS = documented(s400="Invalid request", s401="Missing or invalid key", s403="An admin key is needed",
                    s404="No such model",
                    s413="Request body too large", s429="Team quota used up",
                    s503="At capacity for a model; retry after the Retry-After seconds")
RequestId = Annotated[str | None, Header(alias="X-Request-ID", max_length=200,
                                         description="Pins A/B splits: a retry with this id hits the same version.")]
STATUS_CODES = {"Success": 200, "BadRequest": 400, "InternalError": 500}


@router.get("/models", response_model=ModelList, responses=ERRORS)
async def list_models(_principal: PrincipalDep, services: ServicesDep) -> ModelList:
    """Every declared version of every model with its aliases and state (ready, not loaded, downloading,
    failed and why), and the default vision LLM (looked for again if none was found yet)."""
    engines = services.engines
    await engines.probe_llm()
    return model_list(engines, await services.pipeline.states(engines))


@router.post("/models:reload", response_model=ModelList, responses=ERRORS)
async def reload_models(principal: PrincipalDep, services: ServicesDep) -> ModelList:
    """Re-read the registry file (admin keys only). In-flight requests finish on the models they started with."""
    if not principal.is_admin:
        raise ForbiddenError("reloading models needs an admin key")
    engines = services.hub.reload()
    return model_list(engines, await services.pipeline.states(engines))


@router.get("/models/{name}", response_model=ModelDetail, responses=ERRORS)
async def get_model(name: str, _principal: PrincipalDep, services: ServicesDep) -> ModelDetail:
    """One model's versions, which one its bare name serves and why, and how its shadows agree with their
    primaries."""
    engines = services.engines
    versions = engines.catalog.models.get(name)
    if versions is None:
        raise NotFoundError(f"no model named {name!r}")
    serves, why = versions.serving()
    entries = sorted(versions.by_version.values(), key=lambda m: m.version)
    states = await services.pipeline.states(engines, entries)
    return ModelDetail(
        name=name, serves=None if serves is None else str(serves), serves_why=why,
        splits={alias: {str(v): round(w / sum(split.weights.values()), 4) for v, w in sorted(split.weights.items())}
                for alias, split in versions.splits.items()},
        versions=[model_public(engines, m, states[m.ref]) for m in entries],
        shadows=[ShadowAgreement.model_validate(s) for s in services.shadows.for_model(name)],
    )


@router.post("/predict", response_model=MultiPredictResponse, responses=ERRORS)
async def predict(body: MultiPredictRequest, principal: PrincipalDep, services: ServicesDep,
                  request_id: RequestId = None) -> MultiPredictResponse:
    """Run several predictions concurrently; 200 once authenticated and admitted, each with its own status."""
    start = time.perf_counter()
    outs = await _run(services, principal, body.input, body.predictions, request_id)
    return MultiPredictResponse(duration_ms=round((time.perf_counter() - start) * 1000), predictions=outs)


async def _run(services: ServicesDep, principal: Principal, shared: PredictInput | None,
               specs: list[PredictionSpec], request_id: str | None) -> list[PredictionOut]:
    """Admit the predictions (503 past a model's capacity, costing nothing), charge the team, run them."""
    need = prediction_demands(services.engines.catalog, shared, specs)
    ticket = services.admission.admit(need)
    try:
        await services.quota.charge(principal.team_id, len(specs))
        return await services.predictor.predict_all(shared, specs, request_id or uuid.uuid4().hex)
    finally:
        ticket.release()


@router.get("/models/{name}/predict", response_model=PredictionOut,
            responses={400: {"model": PredictionOut}, 500: {"model": PredictionOut}, 401: {"model": ErrorResponse},
                       429: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
async def predict_model(
    name: str, principal: PrincipalDep, services: ServicesDep,
    image_url: Annotated[str | None, Query()] = None, image_base64: Annotated[str | None, Query()] = None,
    query: Annotated[str | None, Query()] = None, version: Annotated[str | None, Query()] = None,
    request_id: RequestId = None,
) -> JSONResponse:
    """One prediction; the HTTP status follows its ``status`` (200, 400 or 500)."""
    spec = PredictionSpec(model_name=name, model_version=version,
                          input=PredictInput(image_url=image_url, image_base64=image_base64, query=query))
    (out,) = await _run(services, principal, None, [spec], request_id)
    return JSONResponse(out.model_dump(), status_code=STATUS_CODES[out.status])
