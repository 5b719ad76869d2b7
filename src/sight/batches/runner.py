"""Processes batch requests: claims them, runs each through the pipeline, records the outcome.

Runs inside ``sight serve`` (default) or as any number of ``sight worker`` processes sharing the database.

>>> async def drain() -> None:
...     async with open_services(settings) as services:
...         await services.new_runner().run_until_idle()   # tests: work until nothing is left
...         # servers and workers: await runner.run(stop_event), until told to stop
>>> asyncio.run(drain())
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from functools import partial
from typing import Any

import anyio

from sight.batches.queue import Claimed, JobQueue
from sight.batches.store import result_bytes
from sight.batches.sweep import BatchSweeper
from sight.config import JobsSettings
from sight.errors import SightError
from sight.pipeline.items import ImageInput, WorkItem
from sight.pipeline.pipeline import Pipeline
from sight.pipeline.results import kept_stages
from sight.schemas import ImageRef, ItemOptions
from sight.storage.blobs.base import BlobStore

log = logging.getLogger(__name__)

# Worth another attempt: the network, the LLM backend or a deadline may do better next time.
TRANSIENT_CODES = frozenset({"fetch_failed", "llm_unavailable", "llm_error", "timeout", "internal"})


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Runner:
    def __init__(
        self, queue: JobQueue, sweeper: BatchSweeper, pipeline: Pipeline, blobs: BlobStore, settings: JobsSettings,
        *, worker: str | None = None,
    ) -> None:
        self.queue, self.sweeper, self.pipeline, self.blobs = queue, sweeper, pipeline, blobs
        self.settings = settings
        self.worker = worker or worker_name()
        self._inflight: dict[int, tuple[asyncio.Task[None], int]] = {}
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """New work was added in this process: look now instead of at the next poll."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        """Requests this runner is working on now."""
        return len(self._inflight)

    def cancel_batch(self, batch_seq: int) -> None:
        """Interrupt this process's in-flight requests of a cancelled batch (others notice at heartbeat)."""
        for task, seq_of_batch in list(self._inflight.values()):
            if seq_of_batch == batch_seq and not task.cancelling():
                task.cancel()

    async def _process(self, job: Claimed) -> None:
        partial: dict[str, Any] | None = None  # a failed item's other stages: kept with its error
        try:
            payload = dict(job.payload)
            data = await self.blobs.get(job.blob_sha) if job.blob_sha else None
            item = WorkItem(
                index=0,
                filename=payload.get("filename"),
                # Stored bytes, or the URL the request gave (checked per item: a row with neither fails alone).
                image=ImageInput(data=data) if data is not None else ImageInput(ref=ImageRef(
                    image_url=payload.get("image_url"))),
                options=ItemOptions.model_validate(payload),
            )
            with anyio.fail_after(self.settings.request_timeout):
                result = await self.pipeline.run_item(item, payload.get("query"))
            if result.status == "done":
                await self._record(job, "succeeded", result.model_dump(mode="json", by_alias=True), None)
                return
            assert result.error is not None
            error = result.error.model_dump()
            partial = result.model_dump(mode="json", by_alias=True) if kept_stages(result) else None
        except SightError as exc:
            error = exc.to_dict()
        except TimeoutError:
            error = {"code": "timeout", "message": f"not done within {self.settings.request_timeout}s"}
        if error["code"] in TRANSIENT_CODES and job.attempts < self.settings.max_attempts:
            delay = min(self.settings.backoff_seconds * 2 ** (job.attempts - 1), self.settings.backoff_max_seconds)
            with anyio.CancelScope(shield=True):
                await self.queue.retry(self.worker, job.seq, error, delay)
        else:
            await self._record(job, "failed", partial, error)

    async def _record(self, job: Claimed, state: str, result: dict[str, Any] | None,
                      error: dict[str, Any] | None) -> None:
        result_sha = None
        if result is not None:
            data = await anyio.to_thread.run_sync(result_bytes, result)
            if len(data) > self.settings.inline_result_bytes:
                # Stored before the row commits, so a committed row never names a missing blob. A crash or a
                # refused completion in between leaves a blob no row references, for the sweep to remove.
                result, result_sha = None, await self.blobs.put(data)
        # A cancel (batch cancelled, lease lost, shutdown) may arrive while the outcome is being written: the
        # short write is shielded, so a transaction is never abandoned half-way holding row locks. The queue
        # itself refuses the write if this worker no longer holds the request.
        with anyio.CancelScope(shield=True):
            await self.queue.complete(self.worker, job.seq, state, result, error, result_sha=result_sha)

    async def _guarded(self, job: Claimed) -> None:
        try:
            await self._process(job)
        except asyncio.CancelledError:
            raise
        except Exception:  # the database went away mid-write, say: the lease lapses and another claim retries
            log.exception("request %s of batch %s failed in the runner", job.request_id, job.batch_seq)

    def _finished(self, seq: int, task: asyncio.Task[None]) -> None:
        # A done callback, so it runs even for a task cancelled before it ever started.
        if self._inflight.get(seq, (None, 0))[0] is task:
            del self._inflight[seq]
        self._wake.set()  # a slot is free: claim more now, not at the next poll

    async def _fill(self) -> int:
        free = self.settings.concurrency - len(self._inflight)
        if free <= 0:
            return 0
        jobs = await self.queue.claim(self.worker, min(free, self.settings.claim_batch))
        for job in jobs:
            task = asyncio.create_task(self._guarded(job))
            self._inflight[job.seq] = (task, job.batch_seq)
            task.add_done_callback(partial(self._finished, job.seq))
        return len(jobs)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            asked = {seq: task for seq, (task, _batch) in self._inflight.items()}
            try:
                held = await self.queue.heartbeat(self.worker, list(asked))
            except Exception:
                log.exception("heartbeat failed")
                continue
            # Judge only what was asked about: work claimed while the heartbeat was in flight is ours.
            for seq, task in asked.items():
                if seq not in held and not task.done() and not task.cancelling():
                    task.cancel()  # cancelled by the user, or our lease lapsed and another worker has it

    async def _sweep(self) -> None:
        while True:
            try:
                await self.sweeper.sweep()
            except Exception:
                log.exception("sweep failed")
            await asyncio.sleep(self.settings.sweep_seconds)

    async def _idle(self, stop: asyncio.Event) -> None:
        waiters = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=self.settings.poll_seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set, then cancel what is in flight (its leases lapse and it is retried)."""
        helpers = [asyncio.create_task(self._heartbeat()), asyncio.create_task(self._sweep())]
        try:
            while not stop.is_set():
                self._wake.clear()  # before claiming, so a wake during the claim is not lost
                try:
                    claimed = await self._fill()
                except Exception:
                    log.exception("claiming work failed")
                    claimed = 0
                if claimed == 0:
                    await self._idle(stop)
        finally:
            for task in [*helpers, *(t for t, _ in self._inflight.values())]:
                task.cancel()
            await asyncio.gather(*helpers, *(t for t, _ in self._inflight.values()), return_exceptions=True)

    async def run_until_idle(self) -> None:
        """Work until nothing is pending or running (waiting out retry backoffs). For tests and bursts."""
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            while True:
                await self._fill()
                if self._inflight:
                    await asyncio.wait([t for t, _ in self._inflight.values()], return_when=asyncio.FIRST_COMPLETED)
                    continue
                if not await self.queue.has_claimable():
                    return
                await asyncio.sleep(min(self.settings.poll_seconds, 0.05))
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
