"""Batches as the API sees them: create, list, add requests, page requests and results, cancel.

Every method takes the caller's ``team_id``; another team's batch is simply not found. Images, and results
larger than ``SIGHT_JOBS__INLINE_RESULT_BYTES``, live in the blob store; rows name them by SHA-256. Deadlines,
expiry and the blobs no request needs any more are the sweep's (``sight.batches.sweep``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from sight.batches import paging
from sight.config import Settings
from sight.errors import (
    ConflictError,
    ImageTooLargeError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    SightError,
    UpstreamError,
)
from sight.images.decode import decode_base64
from sight.schemas import (
    BatchList,
    BatchPublic,
    BatchRequestIn,
    BatchRequestList,
    BatchRequestMetadata,
    BatchResultEntry,
    BatchResultList,
    BatchState,
    ErrorInfo,
)
from sight.storage.blobs.base import BlobStore
from sight.storage.db import session_factory
from sight.storage.tables import Batch, BatchRequest

log = logging.getLogger(__name__)
OPEN_STATES = ("pending", "running")
FINAL_STATES = ("succeeded", "failed", "cancelled")
BLOB_PUTS = 8  # images of one add stored at once (an object store answers each in a round trip or two)
BLOB_GETS = 16  # stored results of one page of results fetched at once
RESULT_GONE = "the stored result of this request is gone"


def now() -> datetime:
    return datetime.now(UTC)


def utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything Sight stores is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return utc(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def body_hash(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def result_bytes(result: dict[str, Any]) -> bytes:
    """A result as compact JSON: its size decides where it is kept, and these are the bytes of its blob."""
    return json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Counts:
    total: int = 0
    pending: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


class BatchStore:
    def __init__(self, db: AsyncEngine, settings: Settings, blobs: BlobStore,
                 ocr_name: Callable[[], str] = lambda: "rapidocr") -> None:
        self._sessions = session_factory(db)
        self._reads = session_factory(db, readonly=True)
        self.settings = settings
        self.blobs = blobs
        self._ocr_name = ocr_name  # the catalog's name for the OCR model (a registry file may rename it)
        self.clock: Callable[[], datetime] = now  # what "now" is: tests move it forward instead of sleeping

    # -- batches ---------------------------------------------------------------------------------------

    async def create(self, team_id: str, key_id: str, name: str, idempotency_key: str | None) -> BatchPublic:
        digest = body_hash({"name": name}) if idempotency_key else None
        if idempotency_key:
            existing = await self._by_idempotency(team_id, idempotency_key, digest)
            if existing is not None:
                return existing
        created = self.clock()
        jobs = self.settings.jobs
        batch = Batch(
            id="batch_" + secrets.token_hex(12), team_id=team_id, name=name, create_api_key_id=key_id,
            idempotency_key=idempotency_key, body_hash=digest, created_at=created,
            expire_at=created + timedelta(hours=jobs.retention_hours),
            deadline_at=created + timedelta(hours=jobs.deadline_hours), result_counter=0,
        )
        try:
            async with self._sessions() as s, s.begin():
                s.add(batch)
        except IntegrityError:
            # Lost a race with the same Idempotency-Key: answer with the winner.
            existing = await self._by_idempotency(team_id, idempotency_key or "", digest)
            if existing is None:
                raise
            return existing
        return await self.get(team_id, batch.id)

    async def _by_idempotency(self, team_id: str, key: str, digest: str | None) -> BatchPublic | None:
        async with self._reads() as s:
            batch = (await s.execute(
                select(Batch).where(Batch.team_id == team_id, Batch.idempotency_key == key)
            )).scalar_one_or_none()
            if batch is None:
                return None
            if batch.body_hash != digest:
                raise ConflictError("this Idempotency-Key was used with a different request body")
            return await self._public(s, batch)

    async def _batch(self, s: AsyncSession, team_id: str, batch_id: str) -> Batch:
        batch = (await s.execute(
            select(Batch).where(Batch.id == batch_id, Batch.team_id == team_id)
        )).scalar_one_or_none()
        if batch is None:
            raise NotFoundError(f"no batch {batch_id!r}")
        return batch

    async def _counts(self, s: AsyncSession, batch_seq: int) -> Counts:
        return (await self._counts_of(s, [batch_seq]))[batch_seq]

    @staticmethod
    async def _counts_of(s: AsyncSession, batch_seqs: Sequence[int]) -> dict[int, Counts]:
        """The request counts of each of these batches, in one query."""
        rows = (await s.execute(
            select(BatchRequest.batch_seq, BatchRequest.state, func.count())
            .where(BatchRequest.batch_seq.in_(list(batch_seqs)))
            .group_by(BatchRequest.batch_seq, BatchRequest.state)
        )).all() if batch_seqs else []
        by_batch: dict[int, dict[str, int]] = {seq: {} for seq in batch_seqs}
        for seq, state, n in rows:
            by_batch[seq][state] = int(n)
        return {seq: Counts(
            total=sum(by_state.values()),
            pending=sum(by_state.get(st, 0) for st in OPEN_STATES),
            succeeded=by_state.get("succeeded", 0),
            failed=by_state.get("failed", 0),
            cancelled=by_state.get("cancelled", 0),
        ) for seq, by_state in by_batch.items()}

    def _expired(self, batch: Batch) -> bool:
        return batch.purged or utc(batch.expire_at) <= self.clock()

    async def _public(self, s: AsyncSession, batch: Batch, counts: Counts | None = None) -> BatchPublic:
        c = counts if counts is not None else await self._counts(s, batch.seq)
        if self._expired(batch):
            status = "expired"
        elif batch.cancel_time is not None:
            status = "cancelled"
        elif c.total and not c.pending:
            status = "ended"
        else:
            status = "processing"
        return BatchPublic(
            batch_id=batch.id, name=batch.name, create_time=rfc3339(batch.created_at) or "",
            expire_time=rfc3339(batch.expire_at) or "", cancel_time=rfc3339(batch.cancel_time),
            create_api_key_id=batch.create_api_key_id, status=status,
            state=BatchState(num_requests=c.total, num_pending=c.pending, num_success=c.succeeded,
                             num_error=c.failed, num_cancelled=c.cancelled),
        )

    async def get(self, team_id: str, batch_id: str) -> BatchPublic:
        async with self._reads() as s:
            return await self._public(s, await self._batch(s, team_id, batch_id))

    async def list_batches(self, team_id: str, limit: int, token: str | None) -> BatchList:
        scope = 0
        before = paging.decode(token, "batches", scope)
        query = select(Batch).where(Batch.team_id == team_id)
        if before is not None:
            query = query.where(Batch.seq < before)
        async with self._reads() as s:
            rows = list((await s.execute(query.order_by(Batch.seq.desc()).limit(limit + 1))).scalars())
            counts = await self._counts_of(s, [b.seq for b in rows[:limit]])
            page = [await self._public(s, b, counts[b.seq]) for b in rows[:limit]]
        more = len(rows) > limit
        return BatchList(batches=page, pagination_token=paging.encode("batches", scope, rows[limit - 1].seq)
                         if more else None)

    # -- requests --------------------------------------------------------------------------------------

    def _model_of(self, options: dict[str, Any]) -> str | None:
        if options.get("is_yolo"):
            return str(options.get("yolo_model") or self.settings.yolo.default_model)
        if options.get("is_llm"):
            model = options.get("llm_model") or self.settings.llm.model
            return str(model) if model else None
        if options.get("is_ocr"):
            return self._ocr_name()
        return None

    async def add_requests(self, team_id: str, batch_id: str, items: Sequence[BatchRequestIn]) -> list[str]:
        """Validate every request, then refuse what is known to conflict, and only then write images: a
        rejected add leaves nothing on disk. Blobs of an add that loses a race or dies before its commit
        are left to ``sweep`` (they are not ours alone to delete: the same image may be in use elsewhere)."""
        if len(items) > self.settings.jobs.max_requests_per_call:
            raise InvalidInputError(f"at most {self.settings.jobs.max_requests_per_call} requests per call")
        ids = [item.batch_request_id or "req_" + secrets.token_hex(10) for item in items]
        if len(set(ids)) != len(ids):
            raise ConflictError("duplicate batch_request_id in this call")
        payloads: list[tuple[dict[str, Any], bytes | None]] = []
        for index, item in enumerate(items):
            vp = item.batch_request.vision_predict
            try:
                kind, value = vp.source()
            except InvalidInputError as exc:
                raise InvalidInputError(f"batch_requests[{index}]: {exc.message}") from exc
            payload = vp.model_dump(exclude={"image_base64"}, exclude_none=True)
            data = None
            if kind == "base64":
                try:  # validates and caps (413) before anything is stored
                    data = decode_base64(value, self.settings.images.max_bytes)
                except ImageTooLargeError as exc:
                    raise PayloadTooLargeError(f"batch_requests[{index}]: {exc.message}") from exc
            payloads.append((payload, data))
        async with self._reads() as s:
            batch = await self._batch(s, team_id, batch_id)
            self._check_open(batch)
            taken = (await s.execute(
                select(BatchRequest.request_id)
                .where(BatchRequest.batch_seq == batch.seq, BatchRequest.request_id.in_(ids)).limit(1)
            )).first()
            if taken is not None:
                raise ConflictError(f"batch_request_id {taken[0]!r} is already in this batch")
        # Written outside the transaction, so a SQLite write lock is never held across blob writes.
        shas = await self._put_blobs([data for _payload, data in payloads])
        created = self.clock()
        try:
            async with self._sessions() as s, s.begin():
                batch = await self._batch(s, team_id, batch_id)
                self._check_open(batch)
                s.add_all([
                    BatchRequest(batch_seq=batch.seq, request_id=rid, payload=payload, blob_sha=sha,
                                 state="pending", attempts=0, available_at=created, created_at=created)
                    for rid, (payload, _data), sha in zip(ids, payloads, shas, strict=True)
                ])
        except IntegrityError as exc:  # a concurrent add took an id after our check
            raise ConflictError("a batch_request_id is already in this batch") from exc
        return ids

    async def _put_blobs(self, images: list[bytes | None]) -> list[str | None]:
        """Store each distinct image once, a few at a time; returns each item's blob name (None: a URL)."""
        names: dict[bytes, str] = {}
        limiter = anyio.CapacityLimiter(BLOB_PUTS)

        async def put(data: bytes) -> None:
            async with limiter:
                names[data] = await self.blobs.put(data)

        async with anyio.create_task_group() as tg:
            for data in {data for data in images if data is not None}:
                tg.start_soon(put, data)
        return [names[data] if data is not None else None for data in images]

    def _check_open(self, batch: Batch) -> None:
        if self._expired(batch) or batch.cancel_time is not None:
            raise ConflictError("the batch is cancelled or expired; no requests can be added")

    async def list_requests(self, team_id: str, batch_id: str, limit: int, token: str | None) -> BatchRequestList:
        async with self._reads() as s:
            batch = await self._batch(s, team_id, batch_id)
            after = paging.decode(token, "requests", batch.seq) or 0
            rows = list((await s.execute(
                select(BatchRequest).where(BatchRequest.batch_seq == batch.seq, BatchRequest.seq > after)
                .order_by(BatchRequest.seq).limit(limit + 1)
            )).scalars())
        page = [
            BatchRequestMetadata(
                batch_request_id=r.request_id, model=self._model_of(r.payload or {}),
                state="pending" if r.state in OPEN_STATES else r.state,
                create_time=rfc3339(r.created_at) or "", finish_time=rfc3339(r.finished_at),
            )
            for r in rows[:limit]
        ]
        more = len(rows) > limit
        return BatchRequestList(batch_request_metadata=page,
                                pagination_token=paging.encode("requests", batch.seq, rows[limit - 1].seq)
                                if more else None)

    async def results(self, team_id: str, batch_id: str, limit: int, token: str | None) -> BatchResultList:
        """Finished results in completion order. While the batch runs, the last page carries a token to
        poll again from; rows never move, so pages neither skip nor repeat."""
        async with self._reads() as s:
            batch = await self._batch(s, team_id, batch_id)
            after = paging.decode(token, "results", batch.seq) or 0
            if self._expired(batch):
                return BatchResultList(results=[], pagination_token=None)
            rows = list((await s.execute(
                select(BatchRequest).where(BatchRequest.batch_seq == batch.seq, BatchRequest.result_seq > after)
                .order_by(BatchRequest.result_seq).limit(limit + 1)
            )).scalars())
            still_running = batch.cancel_time is None and (await self._counts(s, batch.seq)).pending > 0
        stored = await self._stored_results(rows[:limit])
        page = [self._result_entry(r, stored) for r in rows[:limit]]
        last = rows[min(len(rows), limit) - 1].result_seq if rows else after
        more = len(rows) > limit or still_running
        return BatchResultList(results=page,
                               pagination_token=paging.encode("results", batch.seq, last or 0) if more else None)

    async def _stored_results(self, rows: Sequence[BatchRequest]) -> dict[str, dict[str, Any] | SightError]:
        """The page's results kept in the blob store, by name, a few fetched at once; a blob that is gone or
        cannot be read is that row's error, never the page's."""
        found: dict[str, dict[str, Any] | SightError] = {}
        limiter = anyio.CapacityLimiter(BLOB_GETS)

        async def get(sha: str) -> None:
            async with limiter:
                try:
                    found[sha] = await anyio.to_thread.run_sync(json.loads, await self.blobs.get(sha))
                except NotFoundError:
                    found[sha] = NotFoundError(RESULT_GONE)
                except Exception:  # the store failed after its retries, or the blob is not JSON
                    log.exception("stored result %s could not be read", sha)
                    found[sha] = UpstreamError("the stored result of this request could not be read; try again")

        async with anyio.create_task_group() as tg:
            for sha in {r.result_sha for r in rows if r.state in ("succeeded", "failed") and r.result_sha}:
                tg.start_soon(get, sha)
        return found

    @staticmethod
    def _result_entry(r: BatchRequest, stored: dict[str, dict[str, Any] | SightError]) -> BatchResultEntry:
        result = stored.get(r.result_sha) if r.result_sha else r.result
        if r.state == "succeeded" and isinstance(result, dict):
            return BatchResultEntry.model_validate(
                {"batch_request_id": r.request_id, "batch_result": {"response": {"vision_predict": result}}}
            )
        if r.state == "succeeded":  # its stored result is gone or unreadable: that is its error
            failed = result.to_dict() if isinstance(result, SightError) else None
            error = ErrorInfo.model_validate(failed or r.error or {"code": "internal", "message": "failed"})
            return BatchResultEntry(batch_request_id=r.request_id, error_message=error.message, error=error)
        # A failed request keeps what its other stages found, beside its error (the item says status "error").
        error = ErrorInfo.model_validate(r.error or {"code": "internal", "message": "failed"})
        body = {"response": {"vision_predict": result}} if isinstance(result, dict) else None
        return BatchResultEntry.model_validate({"batch_request_id": r.request_id, "batch_result": body,
                                                "error_message": error.message, "error": error.model_dump()})

    # -- cancel and expiry -----------------------------------------------------------------------------

    async def cancel(self, team_id: str, batch_id: str) -> tuple[BatchPublic, int]:
        """Cancel what is still open; finished results stay. Idempotent, and a no-op on a batch that has
        already ended (or expired): it keeps its status. Returns the batch and its seq."""
        async with self._sessions() as s, s.begin():
            batch = await self._batch(s, team_id, batch_id)
            at = self.clock()
            # Requests before the batch row, in every transaction, so completions cannot deadlock with us.
            open_requests = (await s.execute(
                update(BatchRequest)
                .where(BatchRequest.batch_seq == batch.seq, BatchRequest.state.in_(OPEN_STATES))
                .values(state="cancelled", finished_at=at, lease_owner=None, lease_expires_at=None)
            )).rowcount
            # Nothing open but something finished: the batch has ended and stays so (an add committed
            # meanwhile brings only pending rows, as if it came after us). An empty batch can be cancelled.
            c = await self._counts(s, batch.seq)
            ended = not open_requests and c.total > c.pending
            if batch.cancel_time is None and not ended and not self._expired(batch):
                batch.cancel_time = at
        return await self.get(team_id, batch_id), batch.seq
