"""The server's memory under a burst of huge decodes: RSS before, at the peak and after an idle spell.

    python bench/decode_memory.py                       # 6 concurrent requests x 16 copies of a 7000x7000 PNG
    python bench/decode_memory.py --requests 6 --copies 16 --side 7000 --idle 20
    python bench/decode_memory.py --env SIGHT_IMAGES__MAX_PIXELS_IN_FLIGHT=400000000

The PNG is a colour gradient (about 160 KB on disk, 49 megapixels decoded: 147 MB as RGB), written to a
temporary folder. RSS is the serving process's VmRSS from /proc, sampled every 20 ms while the burst runs and
the server then sits idle; "peak" is the largest sample (and VmHWM, the kernel's own high-water mark).
Numbers, never pass/fail.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from common import DEFAULT_MODEL, SHARED, spawn_server
from PIL import Image


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def gradient_png(side: int) -> bytes:
    ramp = Image.linear_gradient("L").resize((side, side))
    picture = Image.merge("RGB", (ramp, ramp.transpose(Image.Transpose.ROTATE_90), ramp))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


class Sampler(threading.Thread):
    """VmRSS of ``pid`` every ``interval`` seconds, with the peak since the last ``mark``."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = 0.0
        self.last = 0.0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.last = status_mb(self.pid, "VmRSS")
            self.peak = max(self.peak, self.last)
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def post(http: httpx.Client, files: list[tuple[str, bytes]], metadata: str) -> tuple[int, Counter[str]]:
    r = http.post("/api/v1/inference/predict/batch", data={"metadata": [metadata] * len(files)},
                  files=[("files", f) for f in files])
    if r.status_code != 200:
        return r.status_code, Counter()
    return 200, Counter(item["status"] if item["status"] == "done" else item["error"]["code"]
                        for item in r.json()["result"]["items"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--requests", type=int, default=6, help="concurrent requests")
    parser.add_argument("--copies", type=int, default=16, help="copies of the PNG per request")
    parser.add_argument("--side", type=int, default=7000)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds idle after the burst")
    parser.add_argument("--metadata", default=json.dumps({"is_yolo": True, "is_llm": False}))
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server (repeatable)")
    args = parser.parse_args()
    env = dict(kv.split("=", 1) for kv in args.env)
    png = gradient_png(args.side)
    print(f"{args.requests} concurrent requests x {args.copies} copies of a {args.side}x{args.side} PNG "
          f"({len(png) // 1024} KB); metadata {args.metadata}; server env {env or 'defaults'}")
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, key = spawn_server(args.model, Path(tmp), **env)
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=900) as http:
                bus = (SHARED / "images" / "bus.jpg").read_bytes()
                post(http, [("warm.jpg", bus)], args.metadata)  # loads the model, as any first request would
                post(http, [(f"warm{i}.jpg", bus) for i in range(8)], args.metadata)
                time.sleep(1)
                before = status_mb(proc.pid, "VmRSS")
                sampler = Sampler(proc.pid)
                sampler.start()
                files = [(f"{i}.png", png) for i in range(args.copies)]
                start = time.perf_counter()
                with ThreadPoolExecutor(args.requests) as pool:
                    answers = list(pool.map(lambda _: post(http, files, args.metadata), range(args.requests)))
                burst = time.perf_counter() - start
                peak, at_end = sampler.peak, sampler.last
                settle_start = time.perf_counter()
                while time.perf_counter() - settle_start < args.idle:
                    time.sleep(0.5)
                sampler.stop()
                settled, hwm = status_mb(proc.pid, "VmRSS"), status_mb(proc.pid, "VmHWM")
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    statuses = Counter(code for code, _ in answers)
    items: Counter[str] = sum((c for _, c in answers), Counter())
    print(f"requests: {dict(statuses)}; items: {dict(items)}; burst took {burst:.1f} s")
    print(f"RSS: pre-burst {before:.0f} MB, peak {peak:.0f} MB (VmHWM {hwm:.0f} MB), at the end of the burst "
          f"{at_end:.0f} MB, settled after {args.idle:.0f} s idle {settled:.0f} MB ({settled - before:+.0f} MB)")


if __name__ == "__main__":
    main()
