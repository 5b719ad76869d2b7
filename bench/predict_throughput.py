"""Images/s through Sight's batch endpoint vs the bare ONNX Runtime session, in the same run.

    python bench/predict_throughput.py                 # spawns `sight serve` on a free port
    python bench/predict_throughput.py --url http://127.0.0.1:8000 --key sk-sight-...   # a running server

The bare figure runs the same model on pre-made 640x640 tensors (no decode, no resize, no HTTP): the
model's own limit on this machine. Timings on shared machines are noisy: read the ratio, not the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from common import DEFAULT_MODEL, PHOTOS, SHARED, spawn_server


def bare_session(model: Path, n: int) -> float:
    """Images/s of the bare session, one image per run, on pre-made tensors."""
    import onnxruntime as ort
    from PIL import Image

    from sight.engines.onnx_yolo import letterbox, to_tensor

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    tensors = [to_tensor([letterbox(Image.open(SHARED / "images" / p).convert("RGB"), (640, 640))[0]])
               for p in PHOTOS]
    for t in tensors:
        session.run(None, {name: t})
    start = time.perf_counter()
    for i in range(n):
        session.run(None, {name: tensors[i % len(tensors)]})
    return n / (time.perf_counter() - start)


def sight_batch(url: str, key: str, n: int, per_request: int, clients: int) -> float:
    """Images/s through POST /api/v1/inference/predict/batch (YOLO only), ``clients`` at once."""
    blobs = [(p, (SHARED / "images" / p).read_bytes()) for p in PHOTOS]
    meta = json.dumps({"is_yolo": True, "is_llm": False})

    def post(req: int) -> int:
        files = [("files", blobs[(req * per_request + j) % len(blobs)]) for j in range(per_request)]
        r = httpx.post(f"{url}/api/v1/inference/predict/batch", data={"api_key": key, "metadata": [meta] * per_request},
                       files=files, timeout=600)
        r.raise_for_status()
        body = r.json()
        assert body["result"]["summary"]["done"] == per_request, body["result"]["summary"]
        return per_request

    post(0)  # warm-up: loads the model
    requests = max(1, n // per_request)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        done = sum(pool.map(post, range(requests)))
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--images", type=int, default=96, help="images per measurement")
    parser.add_argument("--per-request", type=int, default=8, help="files per batch request")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", help="a running server (default: spawn one)")
    parser.add_argument("--key", help="API key for --url")
    args = parser.parse_args()

    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            url, key = args.url, args.key
        else:
            proc, url, key = spawn_server(args.model, Path(tmp))
        try:
            print(f"model: {args.model.name}   images per measurement: {args.images}   cores: {os.cpu_count()}   "
                  f"rounds: {args.rounds} (bare and Sight alternate, so noise hits both)")
            ratios: dict[int, list[float]] = {c: [] for c in args.clients}
            for round_no in range(1, args.rounds + 1):
                bare = bare_session(args.model, args.images)
                line = [f"round {round_no}: bare session {bare:6.2f} img/s"]
                for clients in args.clients:
                    ips = sight_batch(url, key, args.images, args.per_request, clients)
                    ratios[clients].append(ips / bare)
                    line.append(f"sight x{clients} clients {ips:6.2f} img/s ({ips / bare:.2f})")
                print("   ".join(line), flush=True)
            for clients, values in ratios.items():
                print(f"sight batch endpoint, {clients} client(s), {args.per_request} files/request: "
                      f"median ratio to bare session {statistics.median(values):.2f}")
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    main()
