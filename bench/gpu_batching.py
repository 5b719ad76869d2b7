"""Gathered batches vs one image per session call, under many concurrent clients, in the same run.

    python bench/gpu_batching.py                         # CPU: batching must cost nothing (ratio ~1)
    python bench/gpu_batching.py --gpu                   # with onnxruntime-gpu: images/s at batch 1 vs gathered

Starts `sight serve` on the same model with SIGHT_YOLO__BATCH_MAX_SIZE=1 (direct) and =16 (gathered, 5 ms
wait), and sends single-image requests from 16 concurrent clients to each. On a CPU, detectors take the
direct path even with batching on; a third server forces gathering there (SIGHT_YOLO__BATCH_ON_CPU) to
show what it would cost.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from common import DEFAULT_MODEL, PHOTOS, SHARED, spawn_server

META = json.dumps({"is_yolo": True})


def throughput(url: str, key: str, n: int, clients: int) -> tuple[float, str]:
    blobs = [(p, (SHARED / "images" / p).read_bytes()) for p in PHOTOS]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600,
                      limits=httpx.Limits(max_connections=clients)) as http:
        def one(i: int) -> None:
            r = http.post("/api/v1/inference/predict/batch", data={"metadata": [META]}, files=[("files", blobs[i % 2])])
            r.raise_for_status()

        for i in range(clients):
            one(i)
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            list(pool.map(one, range(n)))
        ips = n / (time.perf_counter() - start)
        metrics = http.get("/metrics").text
    sizes = [line for line in metrics.splitlines() if line.startswith("sight_batch_size_sum")
             or line.startswith("sight_batch_size_count")]
    return ips, " ".join(s.split(" ")[-1] for s in sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--gpu", action="store_true", help="use CUDAExecutionProvider")
    args = parser.parse_args()
    providers = '["CUDAExecutionProvider", "CPUExecutionProvider"]' if args.gpu else '["CPUExecutionProvider"]'
    results = {}
    runs = [("one image per call", "1", "false"), ("batching on (max 16, 5 ms)", "16", "false")]
    if not args.gpu:
        runs.append(("gathered on the CPU, forced", "16", "true"))
    runs.append(("one image per call, again", "1", "false"))
    for label, size, on_cpu in runs:
        with tempfile.TemporaryDirectory() as tmp:
            proc, url, key = spawn_server(args.model, Path(tmp), SIGHT_YOLO__BATCH_MAX_SIZE=size,
                                          SIGHT_YOLO__BATCH_MAX_WAIT_MS="5", SIGHT_YOLO__BATCH_ON_CPU=on_cpu,
                                          SIGHT_YOLO__PROVIDERS=providers, SIGHT_SERVER__MAX_QUEUE="1024")
            try:
                ips, sizes = throughput(url, key, args.images, args.clients)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
        results[label] = ips
        print(f"{label:28s} {ips:7.2f} images/s   (images, session calls: {sizes})", flush=True)
    direct = (results["one image per call"] + results["one image per call, again"]) / 2
    for label in results:
        if not label.startswith("one image"):
            print(f"{label} / direct, {args.clients} clients: {results[label] / direct:.2f}")


if __name__ == "__main__":
    main()
