"""The batches' sweep: work past its processing deadline is cancelled, expired batches are purged (payloads,
results and their blobs), and blobs no request references are removed once past their grace period.

A blob may be shared by many requests, across batches and teams, so the store never deletes alone: the sweep
lists blobs untouched since a cutoff, asks the database which of them no request references, and has the
store remove those still untouched. Blobs no row names (a crashed or refused add's, a completion's that
crashed or lost its lease before its commit) only a listing of the whole store finds, and none may go before
the grace period anyway: each process lists at most once per ``blob_grace_seconds`` (first at its first
sweep), and such a blob goes within about twice the grace period of its last touch::

    sweeper = BatchSweeper(db, settings, blobs)   # the runner sweeps every SIGHT_JOBS__SWEEP_SECONDS
    cancelled, purged = await sweeper.sweep()
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from sight.batches.store import OPEN_STATES, now
from sight.config import Settings
from sight.storage.blobs.base import BlobStore
from sight.storage.db import session_factory
from sight.storage.tables import Batch, BatchRequest

BLOB_CHUNK = 400  # blob names per reference lookup, asked of two columns (800 bound parameters: fine anywhere)


class BatchSweeper:
    def __init__(self, db: AsyncEngine, settings: Settings, blobs: BlobStore) -> None:
        self._sessions = session_factory(db)
        self._reads = session_factory(db, readonly=True)
        self.settings = settings
        self.blobs = blobs
        self.clock: Callable[[], datetime] = now  # what "now" is: tests move it forward instead of sleeping
        self._next_listing: datetime | None = None  # when this process next lists the whole blob store

    async def sweep(self) -> tuple[int, int]:
        """Cancel work past its processing deadline; purge expired batches' payloads, results and blobs;
        remove blobs no request references. Returns (requests cancelled, batches purged)."""
        at = self.clock()
        async with self._sessions() as s, s.begin():
            late = select(Batch.seq).where(Batch.deadline_at <= at)
            cancelled = (await s.execute(
                update(BatchRequest)
                .where(BatchRequest.batch_seq.in_(late), BatchRequest.state.in_(OPEN_STATES))
                .values(state="cancelled", finished_at=at, lease_owner=None, lease_expires_at=None,
                        error={"code": "timeout", "message": "not processed before the batch's deadline"})
            )).rowcount
        async with self._sessions() as s, s.begin():
            expired = list((await s.execute(
                select(Batch.seq).where(Batch.expire_at <= at, Batch.purged.is_(False))
            )).scalars())
            shas: list[str] = []
            if expired:
                named = (await s.execute(
                    select(BatchRequest.blob_sha, BatchRequest.result_sha).where(
                        BatchRequest.batch_seq.in_(expired),
                        or_(BatchRequest.blob_sha.is_not(None), BatchRequest.result_sha.is_not(None)))
                )).all()
                shas = [sha for row in named for sha in row if sha]
                await s.execute(
                    update(BatchRequest).where(BatchRequest.batch_seq.in_(expired))
                    .values(payload=None, result=None, blob_sha=None, result_sha=None, lease_owner=None)
                )
                await s.execute(
                    update(BatchRequest)
                    .where(BatchRequest.batch_seq.in_(expired), BatchRequest.state.in_(OPEN_STATES))
                    .values(state="cancelled", finished_at=at)
                )
                await s.execute(update(Batch).where(Batch.seq.in_(expired)).values(purged=True))
        # Blobs newer than the grace period may belong to an add in flight (blobs written, rows not yet
        # committed): only older ones go, and only when no row, of any batch or team, references them.
        cutoff = time.time() - self.settings.jobs.blob_grace_seconds
        if shas:
            await self._remove_unreferenced(shas, cutoff)
        if self._next_listing is None or at >= self._next_listing:
            await self._remove_orphans(cutoff)
            self._next_listing = at + timedelta(seconds=self.settings.jobs.blob_grace_seconds)
        return int(cancelled or 0), len(expired)

    async def _remove_orphans(self, cutoff: float) -> None:
        old: list[str] = []  # every blob untouched since the cutoff, a chunk at a time
        async for blob in self.blobs.listing():
            if blob.modified >= cutoff:
                continue
            old.append(blob.sha)
            if len(old) == BLOB_CHUNK:
                await self._remove_unreferenced(old, cutoff)
                old = []
        if old:
            await self._remove_unreferenced(old, cutoff)

    async def _remove_unreferenced(self, shas: Sequence[str], cutoff: float) -> int:
        candidates = sorted(set(shas))
        removed = 0
        for start in range(0, len(candidates), BLOB_CHUNK):
            chunk = candidates[start:start + BLOB_CHUNK]
            async with self._reads() as s:  # an image and a result of the same bytes are the same blob
                used = set((await s.execute(
                    select(BatchRequest.blob_sha).where(BatchRequest.blob_sha.in_(chunk))
                    .union(select(BatchRequest.result_sha).where(BatchRequest.result_sha.in_(chunk)))
                )).scalars())
            unused = [sha for sha in chunk if sha not in used]
            removed += await self.blobs.remove_untouched(unused, cutoff)
        return removed
