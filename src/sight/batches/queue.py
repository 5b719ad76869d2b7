"""The work queue over ``batch_requests``: claim with a lease, heartbeat, complete, retry.

Claims are atomic across processes (PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite: every transaction
begins ``IMMEDIATE``). Attempts are counted when a request is claimed, so a worker that dies mid-request
still used up an attempt. Only the current lease holder can complete or retry a request: a worker whose
lease lapsed, or whose batch was cancelled, finds its write refused and drops the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from sight.batches.store import now
from sight.config import JobsSettings
from sight.storage.db import session_factory
from sight.storage.tables import Batch, BatchRequest


@dataclass(frozen=True, slots=True)
class Claimed:
    seq: int
    batch_seq: int
    request_id: str
    payload: dict[str, Any]
    blob_sha: str | None
    attempts: int


class JobQueue:
    def __init__(self, db: AsyncEngine, settings: JobsSettings) -> None:
        self._sessions = session_factory(db)
        self._reads = session_factory(db, readonly=True)
        self.settings = settings
        self.clock: Callable[[], datetime] = now  # what "now" is: tests move it forward instead of sleeping

    async def claim(self, worker: str, limit: int) -> list[Claimed]:
        at = self.clock()
        lease_until = at + timedelta(seconds=self.settings.lease_seconds)
        claimable = or_(
            and_(BatchRequest.state == "pending", BatchRequest.available_at <= at),
            and_(BatchRequest.state == "running", BatchRequest.lease_expires_at < at),
        )
        query = (
            select(BatchRequest)
            .join(Batch, Batch.seq == BatchRequest.batch_seq)
            .where(claimable, Batch.deadline_at > at, Batch.expire_at > at, Batch.cancel_time.is_(None))
            .order_by(BatchRequest.seq)
            .limit(limit)
            .with_for_update(skip_locked=True, of=BatchRequest)
        )
        claimed: list[Claimed] = []
        exhausted: list[BatchRequest] = []
        async with self._sessions() as s, s.begin():
            for row in (await s.execute(query)).scalars():
                if row.attempts >= self.settings.max_attempts:
                    exhausted.append(row)  # its workers kept dying: give up rather than loop forever
                    continue
                row.state, row.lease_owner, row.lease_expires_at = "running", worker, lease_until
                row.attempts += 1
                claimed.append(Claimed(row.seq, row.batch_seq, row.request_id, dict(row.payload or {}),
                                       row.blob_sha, row.attempts))
            for row in exhausted:
                error = {"code": "internal",
                         "message": f"gave up after {row.attempts} attempts: the worker was lost each time"}
                await self._finish(s, row, "failed", None, row.error or error)
        return claimed

    async def heartbeat(self, worker: str, seqs: Sequence[int]) -> set[int]:
        """Extend the leases still held; returns their seqs (a missing one was cancelled or lost)."""
        if not seqs:
            return set()
        lease_until = self.clock() + timedelta(seconds=self.settings.lease_seconds)
        async with self._sessions() as s, s.begin():
            held = await s.execute(
                update(BatchRequest)
                .where(BatchRequest.seq.in_(list(seqs)), BatchRequest.lease_owner == worker,
                       BatchRequest.state == "running")
                .values(lease_expires_at=lease_until)
                .returning(BatchRequest.seq)
            )
            return set(held.scalars())

    async def _held(self, s: AsyncSession, worker: str, seq: int) -> BatchRequest | None:
        return (await s.execute(
            select(BatchRequest)
            .where(BatchRequest.seq == seq, BatchRequest.lease_owner == worker, BatchRequest.state == "running")
            .with_for_update()
        )).scalar_one_or_none()

    async def _finish(
        self, s: AsyncSession, row: BatchRequest, state: str, result: dict[str, Any] | None,
        error: dict[str, Any] | None, result_sha: str | None = None,
    ) -> None:
        # The batch row's counter orders results; its lock is held to commit, so commit order = result order.
        counter = (await s.execute(
            update(Batch).where(Batch.seq == row.batch_seq).values(result_counter=Batch.result_counter + 1)
            .returning(Batch.result_counter)
        )).scalar_one()
        row.state, row.result, row.result_sha, row.error = state, result, result_sha, error
        row.result_seq, row.finished_at = counter, self.clock()
        row.lease_owner, row.lease_expires_at = None, None

    async def complete(
        self, worker: str, seq: int, state: str, result: dict[str, Any] | None, error: dict[str, Any] | None,
        *, result_sha: str | None = None,
    ) -> bool:
        """Record the final outcome; ``False`` if ``worker`` no longer holds the request. A large result is
        already in the blob store: ``result_sha`` names it and ``result`` is None."""
        async with self._sessions() as s, s.begin():
            row = await self._held(s, worker, seq)
            if row is None:
                return False
            await self._finish(s, row, state, result, error, result_sha)
            return True

    async def retry(self, worker: str, seq: int, error: dict[str, Any], delay: float) -> bool:
        """Put the request back for a later attempt; ``False`` if ``worker`` no longer holds it."""
        async with self._sessions() as s, s.begin():
            row = await self._held(s, worker, seq)
            if row is None:
                return False
            row.state, row.error = "pending", error
            row.available_at = self.clock() + timedelta(seconds=delay)
            row.lease_owner, row.lease_expires_at = None, None
            return True

    async def has_claimable(self) -> bool:
        """Anything a runner could work on now or later (pending, or running under any lease)."""
        at = self.clock()
        async with self._reads() as s:
            found = await s.execute(
                select(BatchRequest.seq).join(Batch, Batch.seq == BatchRequest.batch_seq)
                .where(BatchRequest.state.in_(("pending", "running")), Batch.deadline_at > at,
                       Batch.expire_at > at, Batch.cancel_time.is_(None))
                .limit(1)
            )
            return found.first() is not None
