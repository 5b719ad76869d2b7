"""The decode budget: decoded pixels held at once across requests are bounded, waiters are served in order,
past the queue bound the answer is 503 with Retry-After, and every format is decoded at reduced scale when
the model input allows it."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any

import httpx
import pytest
from anyio import wait_all_tasks_blocked
from fastapi.testclient import TestClient
from PIL import Image

from sight.api.app import create_app
from sight.config import ImageSettings, ServerSettings, Settings
from sight.errors import OverloadedError
from sight.images.budget import TRIM_AFTER_PIXELS, Lease, PixelBudget
from sight.images.decode import PendingDecode, decode_image, open_image
from sight.images.fetch import ImageFetcher
from sight.images.heap import trim_heap
from sight.metrics import Metrics
from sight.models.registry import EngineHub, EngineRegistry
from sight.pipeline.items import ImageInput, WorkItem
from sight.pipeline.pipeline import Pipeline
from sight.pipeline.shadow import ShadowRunner
from sight.schemas import ItemOptions
from tests.conftest import IMAGES
from tests.helpers import image_bytes, png_bytes, v1_request
from tests.servers import LiveServer

BATCH = "/api/v1/inference/predict/batch"
STREAM = "/api/v1/inference/predict/stream"


class WatchedBudget(PixelBudget):
    """Sets ``queued`` when an acquisition is about to wait and ``held`` once one is granted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queued, self.held = asyncio.Event(), asyncio.Event()

    async def acquire(self, pixels: int, *, bounded: bool = True) -> Lease:
        if self.waiting or self.in_use + min(pixels, self.limit) > self.limit:
            self.queued.set()  # the waiter is queued before the task that waits on this event runs
        lease = await super().acquire(pixels, bounded=bounded)
        self.held.set()
        return lease


def _with_images(settings: Settings, **images: Any) -> Settings:
    return settings.model_copy(update={"images": settings.images.model_copy(update=images)})


def _upscaled_png(side: int) -> bytes:
    return png_bytes(Image.open(IMAGES / "astronaut.png").convert("RGB").resize((side, side), Image.Resampling.BICUBIC))


def _pipeline(settings: Settings, engines: EngineRegistry, budget: PixelBudget) -> Pipeline:
    metrics = Metrics()
    return Pipeline(settings, EngineHub(engines), ImageFetcher(settings.fetch, settings.images.max_bytes), metrics,
                    ShadowRunner(metrics, 1), budget)


def _served(client: TestClient) -> tuple[str, PixelBudget, Any]:
    """A new team's key, the app's pixel budget and the portal into its event loop."""
    services, portal = client.app.state.services, client.portal  # type: ignore[attr-defined]
    assert portal is not None, "inside the TestClient's with block"
    key, _ = portal.call(services.keys.create_key, "t")
    return key, services.pipeline.pixels, portal


def _item(data: bytes, **options: Any) -> WorkItem:
    return WorkItem(0, "a.png", ImageInput(data=data), ItemOptions(**options))


# -- the budget ------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_pixel_budget_serves_waiters_in_order_within_its_limit() -> None:
    budget = PixelBudget(100, queue=8, retry_after=2)
    first = await budget.acquire(60)
    order: list[str] = []

    async def take(name: str, pixels: int) -> Lease:
        lease = await budget.acquire(pixels)
        order.append(name)
        return lease

    big = asyncio.create_task(take("big", 60))
    small = asyncio.create_task(take("small", 10))
    await wait_all_tasks_blocked()
    assert budget.waiting == 2 and order == [], "the small one fits, but waits behind the big one: no starvation"
    first.release()
    leases = [await big, await small]
    assert order == ["big", "small"] and budget.in_use == 70 and budget.peak == 70
    for lease in leases:
        lease.release()
        lease.release()  # idempotent
    assert budget.in_use == 0 and budget.granted == 3


@pytest.mark.anyio
async def test_pixel_budget_refuses_past_its_queue_bound_with_retry_after() -> None:
    budget = PixelBudget(100, queue=1, retry_after=7)
    held = await budget.acquire(100)
    queued = asyncio.create_task(budget.acquire(1))
    await wait_all_tasks_blocked()
    with pytest.raises(OverloadedError) as refused:
        await budget.acquire(1)
    assert refused.value.retry_after == 7 and refused.value.code == "overloaded"
    with pytest.raises(OverloadedError):
        budget.check()  # what a new request meets before any of its work starts
    unbounded = asyncio.create_task(budget.acquire(1, bounded=False))  # background jobs wait instead
    await wait_all_tasks_blocked()
    assert budget.waiting == 2 and budget.rejected == 2
    held.release()
    (await queued).release()
    (await unbounded).release()
    assert budget.in_use == 0 and not budget.saturated


@pytest.mark.anyio
async def test_pixel_budget_runs_a_picture_larger_than_itself_alone() -> None:
    budget = PixelBudget(100, queue=4, retry_after=1)
    small = await budget.acquire(10)
    huge = asyncio.create_task(budget.acquire(10_000))
    await wait_all_tasks_blocked()
    assert not huge.done()
    small.release()
    lease = await huge
    assert budget.in_use == 100, "it takes the whole budget, no more"
    other = asyncio.create_task(budget.acquire(1))
    await wait_all_tasks_blocked()
    assert not other.done(), "nothing runs beside it"
    lease.release()
    (await other).release()
    assert budget.in_use == 0


@pytest.mark.anyio
async def test_pixel_budget_gives_back_what_cancelled_waiters_held_or_blocked() -> None:
    budget = PixelBudget(100, queue=4, retry_after=1)
    held = await budget.acquire(30)
    big = asyncio.create_task(budget.acquire(80))
    small = asyncio.create_task(budget.acquire(20))
    await wait_all_tasks_blocked()
    assert not small.done(), "queued behind the big one"
    big.cancel()
    with suppress(asyncio.CancelledError):
        await big
    (await small).release()  # the cancelled waiter no longer blocks it
    assert budget.waiting == 0
    held.release()

    held = await budget.acquire(100)
    granted_then_cancelled = asyncio.create_task(budget.acquire(50))
    await wait_all_tasks_blocked()
    held.release()  # grants the waiter...
    granted_then_cancelled.cancel()  # ...which is cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await granted_then_cancelled
    assert budget.in_use == 0 and budget.waiting == 0

    held = await budget.acquire(100)
    cancelled_then_released = asyncio.create_task(budget.acquire(50))
    await wait_all_tasks_blocked()
    cancelled_then_released.cancel()  # cancelled...
    held.release()  # ...and passed over by the release before its task could clean up
    with pytest.raises(asyncio.CancelledError):
        await cancelled_then_released
    assert budget.in_use == 0 and budget.waiting == 0


@pytest.mark.anyio
async def test_lease_shrink_lets_waiters_in() -> None:
    budget = PixelBudget(100, queue=4, retry_after=1)
    lease = await budget.acquire(100)  # a full-size decode...
    waiter = asyncio.create_task(budget.acquire(50))
    await wait_all_tasks_blocked()
    lease.shrink(40)  # ...reduced at once: only the small picture is held from now on
    (await waiter).release()
    lease.release()
    assert budget.in_use == 0


@pytest.mark.anyio
async def test_heap_is_trimmed_when_the_budget_falls_idle_after_large_decodes_only() -> None:
    calls: list[int] = []
    budget = PixelBudget(10**9, queue=4, retry_after=1, on_idle=lambda: calls.append(1))
    (await budget.acquire(640 * 480)).release()
    await budget.aclose()
    assert calls == [], "a small picture leaves the heap alone"
    large = await budget.acquire(TRIM_AFTER_PIXELS)
    other = await budget.acquire(10)
    large.release()
    await budget.aclose()
    assert calls == [], "not idle yet"
    other.release()
    await budget.aclose()
    assert calls == [1] and budget.trims == 1
    trim_heap()  # glibc's malloc_trim(0), or a no-op elsewhere


# -- reduced-scale decode for every format ------------------------------------------------------------------------


def _saved(image: Image.Image, fmt: str, **save: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **save)
    return out.getvalue()


def test_png_is_decoded_reduced_when_the_model_input_allows_and_in_full_without() -> None:
    data = png_bytes(Image.new("RGB", (4000, 3000), "green"))
    pending = open_image(data, ImageSettings(), 640)
    assert pending.pixels == 4000 * 3000, "decoded in full..."
    image = pending.decode()
    assert image.size == (667, 500) and image.mode == "RGB" and pending.original == (4000, 3000), "...kept at 1/6"
    assert image.getpixel((300, 200)) == (0, 128, 0)
    full = open_image(data, ImageSettings(), None)  # OCR asks for no min_side: every pixel
    assert full.decode().size == (4000, 3000)
    small = open_image(png_bytes(Image.new("RGB", (1000, 800))), ImageSettings(), 640)
    assert small.decode().size == (1000, 800), "under twice the input: not worth reducing"


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "RGBA"), ("PNG", "L"), ("GIF", "P"), ("WEBP", "RGB"),
                                           ("TIFF", "RGB"), ("BMP", "RGB")])
def test_other_formats_and_modes_are_reduced_to_rgb(fmt: str, mode: str) -> None:
    picture = Image.new("RGB", (2000, 1500), (204, 51, 51)).convert(mode)  # a web-palette colour: no dither
    data = _saved(picture, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    pending = open_image(data, ImageSettings(), 640)
    image = pending.decode()
    assert image.size == (667, 500) and image.mode == "RGB" and pending.original == (2000, 1500)
    assert image.getpixel((333, 250)) == decode_image(data, ImageSettings()).getpixel((0, 0)), "the same colour"


def test_reduced_png_keeps_its_exif_orientation() -> None:
    upright = Image.new("RGB", (3000, 2000), "white")
    upright.paste((255, 0, 0), (0, 0, 1500, 1000))  # red top-left quarter
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    data = _saved(upright.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif.tobytes())
    pending = open_image(data, ImageSettings(), 640)
    image = pending.decode()
    assert pending.original == (3000, 2000) and image.size == (750, 500)
    assert image.getpixel((10, 10)) == (255, 0, 0) and image.getpixel((740, 490)) == (255, 255, 255)


def test_large_png_is_decoded_reduced_with_boxes_in_original_pixels(client: TestClient, api_key: str) -> None:
    files = [("small.png", image_bytes("astronaut.png")), ("big.png", _upscaled_png(2048))]
    items = client.post(BATCH, **v1_request(files, [{"is_yolo": True}] * 2, api_key=api_key)).json()["result"]["items"]
    assert [i["image"] for i in items] == [{"width": 512, "height": 512}, {"width": 2048, "height": 2048}]
    face = [next(d for d in i["yolo"]["detections"] if d["name"] == "FACE_FEMALE")["box"] for i in items]
    for k in ("x1", "y1", "x2", "y2"):
        assert abs(face[1][k] - 4 * face[0][k]) < 4 * 8, (k, face)


# -- the budget in the request flow ----------------------------------------------------------------------------


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Spies on every decode: the pixels being decoded at once, at most."""
    seen = {"now": 0, "peak": 0, "count": 0}
    lock = threading.Lock()
    original = PendingDecode.decode

    def decode(self: PendingDecode) -> Image.Image:
        with lock:
            seen["now"] += self.pixels
            seen["peak"] = max(seen["peak"], seen["now"])
            seen["count"] += 1
        try:
            return original(self)
        finally:
            with lock:
                seen["now"] -= self.pixels

    monkeypatch.setattr(PendingDecode, "decode", decode)
    yield seen


def test_requests_never_decode_more_pixels_at_once_than_the_budget(
    settings: Settings, engines: EngineRegistry, decodes: dict[str, int]
) -> None:
    png = _upscaled_png(1600)  # decoded in full (2.56 megapixels), kept at 1/2 for the 640 input
    limit = 2 * 1600 * 1600
    with LiveServer(create_app(_with_images(settings, max_pixels_in_flight=limit), engines=engines)) as live:
        key, _ = live.call(live.app.state.services.keys.create_key, "t")
        budget: PixelBudget = live.app.state.services.pipeline.pixels
        body = v1_request([(f"{i}.png", png) for i in range(6)], [{"is_yolo": True}] * 6)
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: httpx.post(live.url + BATCH, headers={"Authorization": f"Bearer {key}"},
                                                         timeout=60, **body).json(), range(3)))
        assert [a["result"]["summary"]["done"] for a in answers] == [6, 6, 6]
        assert decodes["count"] == 18 and 0 < decodes["peak"] <= limit
        assert budget.granted == 18 and budget.peak <= limit and budget.in_use == 0 and budget.waiting == 0
        metrics = httpx.get(live.url + "/metrics").text
        assert "sight_pixels_in_flight 0.0" in metrics and "sight_pixels_waiting 0.0" in metrics


def test_past_the_pixel_queue_bound_requests_get_503_with_retry_after(
    settings: Settings, engines: EngineRegistry
) -> None:
    cfg = _with_images(settings, pixel_queue=0).model_copy(update={"server": ServerSettings(retry_after=3)})
    files, meta = [("a.png", image_bytes("astronaut.png"))], [{"is_yolo": True}]
    with TestClient(create_app(cfg, engines=engines)) as client:
        key, budget, portal = _served(client)
        held = portal.call(budget.acquire, budget.limit)  # every pixel taken, and no queue allowed
        refused = client.post(BATCH, **v1_request(files, meta, api_key=key))
        assert refused.status_code == 503 and refused.headers["retry-after"] == "3"
        assert refused.json()["detail"]["code"] == "overloaded"
        streamed = client.post(STREAM, **v1_request(files, meta, api_key=key))
        assert streamed.status_code == 503 and streamed.headers["retry-after"] == "3", "refused before it starts"
        portal.call(held.release)
        again = client.post(BATCH, **v1_request(files, meta, api_key=key))
        assert again.status_code == 200 and again.json()["result"]["summary"]["done"] == 1
        assert budget.in_use == 0


def test_a_picture_over_the_whole_budget_still_runs_alone(
    settings: Settings, engines: EngineRegistry, decodes: dict[str, int]
) -> None:
    with TestClient(create_app(_with_images(settings, max_pixels_in_flight=1000), engines=engines)) as client:
        key, budget, _portal = _served(client)
        files = [(f"{i}.png", image_bytes("astronaut.png")) for i in range(3)]
        r = client.post(BATCH, **v1_request(files, [{"is_yolo": True}] * 3, api_key=key))
        assert r.json()["result"]["summary"]["done"] == 3
        assert budget.peak == 1000 and budget.in_use == 0
        assert decodes["peak"] == 512 * 512, "one decode at a time"


def test_budget_is_released_when_items_fail(settings: Settings, engines: EngineRegistry) -> None:
    truncated = _upscaled_png(600)[:5000]  # a valid header, then the pixels stop
    files = [("cut.png", truncated), ("a.png", image_bytes("astronaut.png"))]
    meta: list[dict[str, Any]] = [{"is_yolo": True}, {"is_yolo": True, "yolo_model": "no-such-model"}]
    with TestClient(create_app(settings, engines=engines)) as client:
        key, budget, _portal = _served(client)
        items = client.post(BATCH, **v1_request(files, meta, api_key=key)).json()["result"]["items"]
        assert [i["error"]["code"] for i in items] == ["invalid_image", "model_not_found"]
        assert budget.granted == 2 and budget.in_use == 0


@pytest.mark.anyio
async def test_waiting_items_proceed_when_the_budget_frees(settings: Settings, engines: EngineRegistry) -> None:
    budget = WatchedBudget(10**9, queue=4, retry_after=1)
    pipeline = _pipeline(settings, engines, budget)
    held = await budget.acquire(budget.limit)
    task = asyncio.create_task(pipeline.run_item(_item(image_bytes("astronaut.png"), is_yolo=True), None))
    await budget.queued.wait()
    assert budget.waiting == 1 and not task.done()
    held.release()
    result = await task
    assert result.status == "done" and result.yolo is not None
    assert budget.in_use == 0 and budget.granted == 2
    await pipeline.fetcher.aclose()


@pytest.mark.anyio
async def test_budget_is_released_when_items_are_cancelled(settings: Settings, engines: EngineRegistry) -> None:
    budget = WatchedBudget(10**9, queue=4, retry_after=1)
    pipeline = _pipeline(settings, engines, budget)
    item = _item(image_bytes("astronaut.png"), is_yolo=True, is_ocr=True)

    held = await budget.acquire(budget.limit)
    waiting = asyncio.create_task(pipeline.run_item(item, None))
    await budget.queued.wait()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert budget.waiting == 0
    held.release()
    budget.held.clear()

    running = asyncio.create_task(pipeline.run_item(item, None))
    await budget.held.wait()  # decoding, or in its stages, holding its picture's pixels
    assert budget.in_use == 512 * 512
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert budget.in_use == 0
    await pipeline.fetcher.aclose()
