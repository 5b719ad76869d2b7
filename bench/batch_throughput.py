"""Throughput of the durable Batches API vs the synchronous batch endpoint, same images, same run.

    python bench/batch_throughput.py                  # 1,000 YOLO requests; spawns `sight serve`
    python bench/batch_throughput.py --requests 200   # quicker

The batch runs inside the server (default runner, SQLite). Its figure is requests/s from the first add
until the batch reports `ended`; the synchronous one is images/s through POST .../predict/batch with 8
files per request from one client. Read the ratio: machines here are noisy.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from common import DEFAULT_MODEL, PHOTOS, SHARED, spawn_server


def sync_endpoint(http: httpx.Client, n: int, per_request: int = 8) -> float:
    blobs = [(p, (SHARED / "images" / p).read_bytes()) for p in PHOTOS]
    meta = json.dumps({"is_yolo": True, "is_llm": False})
    start = time.perf_counter()
    for req in range(n // per_request):
        files = [("files", blobs[(req * per_request + j) % len(blobs)]) for j in range(per_request)]
        r = http.post("/api/v1/inference/predict/batch", data={"metadata": [meta] * per_request}, files=files)
        r.raise_for_status()
    return (n // per_request * per_request) / (time.perf_counter() - start)


def batch_api(http: httpx.Client, n: int) -> tuple[float, float]:
    images = [base64.b64encode((SHARED / "images" / p).read_bytes()).decode() for p in PHOTOS]
    bid = http.post("/v1/batches", json={"name": "bench"}).json()["batch_id"]
    start = time.perf_counter()
    for chunk in range(0, n, 250):
        reqs = [{"batch_request": {"vision_predict": {"image_base64": images[i % len(images)],
                                                       "filename": PHOTOS[i % len(images)], "is_yolo": True}}}
                for i in range(chunk, min(n, chunk + 250))]
        http.post(f"/v1/batches/{bid}/requests", json={"batch_requests": reqs}).raise_for_status()
    added = time.perf_counter() - start
    while True:
        batch = http.get(f"/v1/batches/{bid}").json()
        if batch["status"] == "ended":
            break
        time.sleep(0.2)
    elapsed = time.perf_counter() - start
    assert batch["state"]["num_success"] == n, batch["state"]
    return n / elapsed, added


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--sync-images", type=int, default=240, help="images per synchronous measurement")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"model: {args.model.name}   batch requests per round: {args.requests}   rounds: {args.rounds}")
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, key = spawn_server(args.model, Path(tmp))
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as http:
                sync_endpoint(http, 16)  # warm-up: loads the model
                before = sync_endpoint(http, args.sync_images)
                for round_no in range(1, args.rounds + 1):
                    batch, adding = batch_api(http, args.requests)
                    after = sync_endpoint(http, args.sync_images)
                    reference = (before + after) / 2  # the synchronous runs either side of this batch
                    ratios.append(batch / reference)
                    print(f"round {round_no}: sync {before:6.2f} / {after:6.2f} images/s, batches API {batch:6.2f} "
                          f"requests/s (adds took {adding:.1f}s), ratio {batch / reference:.2f}", flush=True)
                    before = after
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print(f"batches API / synchronous batch endpoint, median over rounds: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
