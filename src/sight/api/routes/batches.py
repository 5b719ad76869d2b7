"""Batches API (family 4, xAI compatible): durable, team-scoped async jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query

from sight.answers.schema import checked_schema
from sight.api.deps import PrincipalDep, ServicesDep
from sight.api.errors import documented
from sight.schemas import (
    BatchCreate,
    BatchList,
    BatchPublic,
    BatchRequestIds,
    BatchRequestList,
    BatchRequestsAdd,
    BatchResultList,
)

router = APIRouter(prefix="/v1/batches", tags=["batches"])

ERRORS = documented(s400="Invalid request", s401="Missing, unknown or revoked API key",
                    s404="No such batch for this team", s413="Request body too large")
ADD_ERRORS = {**ERRORS, **documented(
    s409="Duplicate batch_request_id, or the batch is cancelled/expired",
    s413="A request's image is over the size cap", s429="The team's image quota is used up")}
Token = Annotated[str | None, Query(description="Opaque cursor from the previous page.")]


@router.post("", response_model=BatchPublic, responses={**ERRORS, **documented(s409="Idempotency-Key reused")})
async def create_batch(
    body: BatchCreate, principal: PrincipalDep, services: ServicesDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> BatchPublic:
    """Create an empty batch. Repeating the call with the same ``Idempotency-Key`` returns the same batch."""
    return await services.batches.create(principal.team_id, principal.key_id, body.name, idempotency_key)


@router.get("", response_model=BatchList, responses=ERRORS)
async def list_batches(
    principal: PrincipalDep, services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20, pagination_token: Token = None,
) -> BatchList:
    """This team's batches, newest first."""
    return await services.batches.list_batches(principal.team_id, limit, pagination_token)


@router.get("/{batch_id}", response_model=BatchPublic, responses=ERRORS)
async def get_batch(batch_id: str, principal: PrincipalDep, services: ServicesDep) -> BatchPublic:
    return await services.batches.get(principal.team_id, batch_id)


@router.post("/{batch_id}/requests", response_model=BatchRequestIds, responses=ADD_ERRORS)
async def add_requests(
    batch_id: str, body: BatchRequestsAdd, principal: PrincipalDep, services: ServicesDep
) -> BatchRequestIds:
    """Add ``vision_predict`` requests; ids left out are generated. Processing starts at once."""
    for index, entry in enumerate(body.batch_requests):  # a bad response schema: 400 before anything is stored
        if (schema := entry.batch_request.vision_predict.response_schema) is not None:
            await checked_schema(schema, f"batch_requests[{index}]")
    await services.quota.charge(principal.team_id, len(body.batch_requests))
    ids = await services.batches.add_requests(principal.team_id, batch_id, body.batch_requests)
    if services.runner is not None:
        services.runner.wake()
    return BatchRequestIds(batch_request_ids=ids)


@router.get("/{batch_id}/requests", response_model=BatchRequestList, responses=ERRORS)
async def list_requests(
    batch_id: str, principal: PrincipalDep, services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, pagination_token: Token = None,
) -> BatchRequestList:
    """Requests in the order they were added, with their state."""
    return await services.batches.list_requests(principal.team_id, batch_id, limit, pagination_token)


@router.get("/{batch_id}/results", response_model=BatchResultList, responses=ERRORS)
async def list_results(
    batch_id: str, principal: PrincipalDep, services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, pagination_token: Token = None,
) -> BatchResultList:
    """Finished results in the order they finished; readable while the batch runs."""
    return await services.batches.results(principal.team_id, batch_id, limit, pagination_token)


@router.post("/{batch_id}:cancel", response_model=BatchPublic, responses=ERRORS)
async def cancel_batch(batch_id: str, principal: PrincipalDep, services: ServicesDep) -> BatchPublic:
    """Cancel pending and in-flight requests; finished results stay. Idempotent."""
    batch, batch_seq = await services.batches.cancel(principal.team_id, batch_id)
    if services.runner is not None:
        services.runner.cancel_batch(batch_seq)
    return batch
