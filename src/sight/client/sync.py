"""Blocking client (httpx). Used by the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from sight.client.base import DEFAULT_TIMEOUT, auth_headers, page_params, raise_for_error
from sight.schemas import (
    BatchList,
    BatchPublic,
    BatchRequestList,
    BatchResultEntry,
    BatchResultList,
    ItemOptions,
    PredictBatchResponse,
    VisionPredict,
)


class Client:
    """Talks to one Sight server with one API key. Pass ``transport`` to reach an app in-process."""

    def __init__(self, base_url: str, api_key: str, *, timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._http = httpx.Client(base_url=base_url, headers=auth_headers(api_key), timeout=timeout,
                                  transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        response = self._http.request(method, path, **kw)
        raise_for_error(response)
        return response.json()

    # -- prediction API ------------------------------------------------------------------------------

    def predict(self, files: Sequence[Path], options: Sequence[ItemOptions], query: str | None = None
                ) -> PredictBatchResponse:
        handles = [open(f, "rb") for f in files]  # noqa: SIM115 - closed below
        try:
            data: dict[str, Any] = {"metadata": [o.model_dump_json(exclude_none=True) for o in options]}
            if query:
                data["query"] = query
            body = self._call("POST", "/api/v1/inference/predict/batch", data=data,
                              files=[("files", (Path(f).name, h)) for f, h in zip(files, handles, strict=True)])
        finally:
            for h in handles:
                h.close()
        return PredictBatchResponse.model_validate(body)

    # -- batches -------------------------------------------------------------------------------------

    def create_batch(self, name: str, idempotency_key: str | None = None) -> BatchPublic:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return BatchPublic.model_validate(self._call("POST", "/v1/batches", json={"name": name}, headers=headers))

    def list_batches(self, limit: int | None = None, token: str | None = None) -> BatchList:
        return BatchList.model_validate(self._call("GET", "/v1/batches", params=page_params(limit, token)))

    def get_batch(self, batch_id: str) -> BatchPublic:
        return BatchPublic.model_validate(self._call("GET", f"/v1/batches/{batch_id}"))

    def add_requests(self, batch_id: str,
                     requests: Sequence[VisionPredict | tuple[str | None, VisionPredict]]) -> list[str]:
        """Add requests, each alone (its id chosen by the server) or as ``(batch_request_id, request)``;
        returns their ids in order. Re-adding an id answers 409."""
        pairs = [r if isinstance(r, tuple) else (None, r) for r in requests]
        body = {"batch_requests": [
            {**({"batch_request_id": rid} if rid else {}),
             "batch_request": {"vision_predict": json.loads(vp.model_dump_json(exclude_none=True))}}
            for rid, vp in pairs
        ]}
        return list(self._call("POST", f"/v1/batches/{batch_id}/requests", json=body)["batch_request_ids"])

    def list_requests(self, batch_id: str, limit: int | None = None, token: str | None = None) -> BatchRequestList:
        return BatchRequestList.model_validate(
            self._call("GET", f"/v1/batches/{batch_id}/requests", params=page_params(limit, token)))

    def results_page(self, batch_id: str, limit: int | None = None, token: str | None = None) -> BatchResultList:
        return BatchResultList.model_validate(
            self._call("GET", f"/v1/batches/{batch_id}/results", params=page_params(limit, token)))

    def iter_results(self, batch_id: str, page_size: int = 500) -> Iterator[BatchResultEntry]:
        """Every result available now, each once (follows tokens until the current end)."""
        token: str | None = None
        while True:
            page = self.results_page(batch_id, page_size, token)
            yield from page.results
            if page.pagination_token is None or not page.results:
                return
            token = page.pagination_token

    def cancel_batch(self, batch_id: str) -> BatchPublic:
        return BatchPublic.model_validate(self._call("POST", f"/v1/batches/{batch_id}:cancel"))
