"""What serving costs besides the model: decode cost by photo size, memory under a huge request and over
many requests, the latency of the first NDJSON line and of a lone image. Ratios and deltas, in one run.

    python bench/serving_costs.py                       # spawns `sight serve` with yolo11n-untrained
    python bench/serving_costs.py --only memory
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from common import DEFAULT_MODEL, SHARED, spawn_server
from PIL import Image

from sight.engines.cpus import usable_cpus

META = json.dumps({"is_yolo": True, "is_llm": False})


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def post(http: httpx.Client, files: list[tuple[str, bytes]]) -> dict:  # type: ignore[type-arg]
    r = http.post("/api/v1/inference/predict/batch", data={"metadata": [META] * len(files)},
                  files=[("files", f) for f in files])
    r.raise_for_status()
    return r.json()  # type: ignore[no-any-return]


def decode_cost(http: httpx.Client, n: int) -> None:
    bus = Image.open(SHARED / "images" / "bus.jpg").convert("RGB")
    big = jpeg(bus.resize((3000, 4000), Image.Resampling.BICUBIC).transpose(Image.Transpose.ROTATE_90))
    small = jpeg(bus.resize((480, 640)).transpose(Image.Transpose.ROTATE_90))
    sizes = {"640x480": small, "4000x3000": big}
    times: dict[str, list[float]] = {k: [] for k in sizes}
    for name, data in sizes.items():
        post(http, [(name + ".jpg", data)])
    for _ in range(n):  # interleaved, so drift hits both
        for name, data in sizes.items():
            start = time.perf_counter()
            post(http, [(name + ".jpg", data)])
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(f"decode cost: 640x480 JPEG {med['640x480']:.1f} ms, 4000x3000 JPEG ({len(big) // 1024} KB) "
          f"{med['4000x3000']:.1f} ms end to end; ratio {med['4000x3000'] / med['640x480']:.2f}")
    parity_cost(big, n)


def parity_cost(data: bytes, n: int) -> None:
    """What detection parity costs (results independent of the other stages, equal to Ultralytics'): the full
    decode detection now always gets, against the 1/4-scale DCT decode it got when it ran alone, in process."""
    from sight.config import ImageSettings
    from sight.images.decode import decode_scaled

    settings = ImageSettings()
    full: list[float] = []
    reduced: list[float] = []
    for _ in range(n):  # interleaved
        for side, out in ((None, full), (640, reduced)):
            start = time.perf_counter()
            decode_scaled(data, settings, side)
            out.append(time.perf_counter() - start)
    f, r = statistics.median(full) * 1000, statistics.median(reduced) * 1000
    print(f"parity cost: the 4000x3000 JPEG decodes in {f:.1f} ms in full (what detection gets), {r:.1f} ms at "
          f"reduced DCT scale (what it got alone before): +{f - r:.1f} ms per such photo")


def memory(http: httpx.Client, pid: int, big_request: int, sequential: int) -> None:
    rng = np.random.default_rng(0)
    noise = [jpeg(Image.fromarray(rng.integers(0, 255, (720, 960, 3), dtype=np.uint8)), 92) for _ in range(4)]
    size = sum(map(len, noise)) / len(noise) / 1e6
    # Warm up as any served request would: a lone image (the wide session) and one image per run slot at
    # once (each concurrent run of the narrow session grows its arena once). What is measured next is what
    # the size of one request adds.
    cold = rss_mb(pid)
    post(http, [("warm.jpg", noise[0])])
    post(http, [(f"warm{i}.jpg", noise[i % len(noise)]) for i in range(4 * usable_cpus())])
    print(f"memory: RSS {cold:.0f} MB before warm-up, {rss_mb(pid):.0f} MB after")
    before_peak = rss_mb(pid, "VmHWM")
    before = rss_mb(pid)
    r = post(http, [(f"{i}.jpg", noise[i % len(noise)]) for i in range(big_request)])
    assert r["result"]["summary"]["done"] == big_request
    after_peak = rss_mb(pid, "VmHWM")
    print(f"memory: one request of {big_request} images x {size:.2f} MB: peak RSS {before_peak:.0f} -> "
          f"{after_peak:.0f} MB (+{after_peak - before_peak:.0f} MB; RSS before it {before:.0f} MB)")
    small = [("bus.jpg", (SHARED / "images" / "bus.jpg").read_bytes())]
    marks = {}
    for i in range(1, sequential + 1):
        post(http, small)
        if i in (100, sequential):
            marks[i] = rss_mb(pid)
    print(f"memory: {sequential} sequential requests: RSS after 100 {marks[100]:.0f} MB, after {sequential} "
          f"{marks[sequential]:.0f} MB ({marks[sequential] - marks[100]:+.0f} MB)")


def lone_image(http: httpx.Client, model: Path, n: int) -> None:
    """Latency of a one-image request on an idle server against one bare run with ONNX Runtime's defaults
    (every core) and with one thread (what one run slot gets under load)."""
    import onnxruntime as ort

    from sight.engines.onnx_yolo import letterbox, takes_pixels, to_input

    photo = (SHARED / "images" / "bus.jpg").read_bytes()
    one = ort.SessionOptions()
    one.intra_op_num_threads = 1
    bare = {"every core": ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]),
            "one thread": ort.InferenceSession(str(model), one, providers=["CPUExecutionProvider"])}
    tensor = to_input([letterbox(Image.open(io.BytesIO(photo)).convert("RGB"), (640, 640))[0]],
                      takes_pixels(bare["one thread"]))
    times: dict[str, list[float]] = {"sight": [], "sight yolo stage": [], **{k: [] for k in bare}}
    for _ in range(n + 2):  # interleaved, idle between calls
        for name, session in bare.items():
            time.sleep(0.05)
            start = time.perf_counter()
            session.run(None, {session.get_inputs()[0].name: tensor})
            times[name].append(time.perf_counter() - start)
        time.sleep(0.05)
        start = time.perf_counter()
        item = post(http, [("bus.jpg", photo)])["result"]["items"][0]
        times["sight"].append(time.perf_counter() - start)
        times["sight yolo stage"].append(item["timings_ms"]["yolo"] / 1000)
    med = {k: statistics.median(v[2:]) * 1000 for k, v in times.items()}
    print(f"lone image (bus.jpg, idle server): Sight {med['sight']:.1f} ms end to end (yolo stage "
          f"{med['sight yolo stage']:.1f} ms); bare run over every core {med['every core']:.1f} ms, on one thread "
          f"{med['one thread']:.1f} ms; median of {n}")


def first_line(http: httpx.Client, n: int) -> None:
    tiny = jpeg(Image.open(SHARED / "images" / "coffee.png").convert("RGB").resize((64, 48)))
    waits = []
    for _ in range(n + 2):
        start = time.perf_counter()
        with http.stream("POST", "/api/v1/inference/predict/stream", data={"metadata": [META]},
                         files=[("files", ("t.jpg", tiny))]) as r:
            lines = r.iter_lines()
            next(lines)
            waits.append(time.perf_counter() - start)
            for _ in lines:
                pass
    waits = waits[2:]
    print(f"first NDJSON line after sending the request: median {statistics.median(waits) * 1000:.1f} ms, "
          f"max {max(waits) * 1000:.1f} ms over {n} requests (idle server, loopback)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--only", choices=["decode", "memory", "first_line", "lone"])
    parser.add_argument("--big-request", type=int, default=300)
    parser.add_argument("--sequential", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, key = spawn_server(args.model, Path(tmp), SIGHT_SERVER__MAX_FILES="400",
                                      SIGHT_SERVER__MAX_QUEUE="1000",
                                      SIGHT_SERVER__MAX_BODY_BYTES=str(1024 * 1024 * 1024))
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=900) as http:
                if args.only in (None, "first_line"):
                    first_line(http, 30)
                if args.only in (None, "lone"):
                    lone_image(http, args.model, 30)
                if args.only in (None, "decode"):
                    decode_cost(http, 24)
                if args.only in (None, "memory"):
                    memory(http, proc.pid, args.big_request, args.sequential)
        finally:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
