"""Images/s through Sight (batch, stream and v2 endpoints) and through a plain FastAPI peer, each as a
ratio to the bare ONNX Runtime session on pre-made tensors, measured in the same run.

    python bench/predict_throughput.py                     # spawns `sight serve` and the peer
    python bench/predict_throughput.py --clients 1 8 --images 64 --rounds 2

Bare: the same model on pre-made 640x640 tensors, one image per call (no decode, no resize, no HTTP),
measured twice: with ONNX Runtime's defaults (one run at a time over every core), and the way Sight runs
it (one single-threaded run per usable core at once), the stricter reference. Sight: YOLO only, 8 JPEG
photos per request; v2 fetches them by URL from a loopback image server. Rounds alternate bare and served
measurements so machine noise hits both; read the median ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from common import DEFAULT_MODEL, PHOTOS, ROOT, SHARED, free_port, spawn_server, wait_healthy

from sight.engines.cpus import usable_cpus

PER_REQUEST = 8


@dataclass
class Run:
    ips: float  # images/s
    cpu_ms: float  # CPU time per image of the process that ran the model (all its threads)


def bare_session(model: Path, n: int, *, threads: int = 0, callers: int = 1, rect: bool = False) -> Run:
    """Images/s of the bare session, one image per run, on pre-made tensors. Defaults: ONNX Runtime's own
    (one run at a time over every core); ``threads=1, callers=cores`` is how Sight runs it. 640x640 tensors,
    or with ``rect`` the shapes Sight serves a model with dynamic axes (each photo padded to the stride only)."""
    import onnxruntime as ort
    from PIL import Image

    from sight.engines.onnx_yolo import letterbox, takes_pixels, to_input

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    canvases = [letterbox(Image.open(SHARED / "images" / p).convert("RGB"), (640, 640), rect=rect)[0]
                for p in PHOTOS]
    pixels = takes_pixels(session)
    tensors = [to_input([canvas], pixels) for canvas in canvases]
    for t in tensors:
        session.run(None, {name: t})
    start, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(max_workers=callers) as pool:
        list(pool.map(lambda i: session.run(None, {name: tensors[i % len(tensors)]}), range(n)))
    return Run(n / (time.perf_counter() - start), (time.process_time() - cpu) * 1000 / n)


def process_cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of process ``pid``, all threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Endpoints:
    def __init__(self, url: str, key: str, image_base: str, peer: str) -> None:
        self.http = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=64))
        self.url, self.key, self.image_base, self.peer = url, key, image_base, peer
        self.blobs = [(p, (SHARED / "images" / p).read_bytes()) for p in PHOTOS]
        self.meta = json.dumps({"is_yolo": True, "is_llm": False})

    def _files(self, req: int) -> list[tuple[str, tuple[str, bytes]]]:
        return [("files", self.blobs[(req * PER_REQUEST + j) % len(self.blobs)]) for j in range(PER_REQUEST)]

    def batch(self, req: int) -> None:
        r = self.http.post(f"{self.url}/api/v1/inference/predict/batch", files=self._files(req),
                           data={"api_key": self.key, "metadata": [self.meta] * PER_REQUEST})
        assert r.json()["result"]["summary"]["done"] == PER_REQUEST, r.text[:300]

    def stream(self, req: int) -> None:
        r = self.http.post(f"{self.url}/api/v1/inference/predict/stream", files=self._files(req),
                           data={"api_key": self.key, "metadata": [self.meta] * PER_REQUEST})
        last = json.loads(r.text.strip().splitlines()[-1])
        assert last["status"] == "complete" and last["summary"]["done"] == PER_REQUEST, r.text[-300:]

    def v2(self, req: int) -> None:
        data = [{"image_url": f"{self.image_base}/{PHOTOS[(req * PER_REQUEST + j) % len(PHOTOS)]}", "is_yolo": True}
                for j in range(PER_REQUEST)]
        r = self.http.post(f"{self.url}/api/v1/inference/predict/batch/v2", json={"api_key": self.key, "data": data})
        assert r.json()["result"]["summary"]["done"] == PER_REQUEST, r.text[:300]

    def peer_app(self, req: int) -> None:
        r = self.http.post(f"{self.peer}/detect", files=self._files(req))
        assert len(r.json()["candidates"]) == PER_REQUEST

    def measure(self, name: str, n: int, clients: int, pid: int) -> tuple[Run, float]:
        """The served run (CPU of the serving process ``pid``) and this client's CPU ms per image."""
        call = getattr(self, name)
        call(0)  # warm-up
        requests = max(clients, n // PER_REQUEST)
        start, cpu, server_cpu = time.perf_counter(), time.process_time(), process_cpu_seconds(pid)
        with ThreadPoolExecutor(max_workers=clients) as pool:
            list(pool.map(call, range(requests)))
        images = requests * PER_REQUEST
        served = Run(images / (time.perf_counter() - start), (process_cpu_seconds(pid) - server_cpu) * 1000 / images)
        return served, (time.process_time() - cpu) * 1000 / images


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def serve_images() -> tuple[ThreadingHTTPServer, str]:
    handler = partial(QuietFiles, directory=str(SHARED / "images"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--images", type=int, default=64, help="images per measurement")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--endpoints", nargs="+", default=["batch", "stream", "v2", "peer_app"])
    args = parser.parse_args()

    images, image_base = serve_images()
    peer_port = free_port()
    env = {**os.environ, "SIGHT_BENCH_MODEL": str(args.model)}
    peer = subprocess.Popen([sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "bench"), "peer_app:app",
                             "--port", str(peer_port), "--log-level", "warning"], env=env)
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, key = spawn_server(args.model, Path(tmp), SIGHT_FETCH__ALLOW_NETWORKS='["127.0.0.0/8"]')
        try:
            wait_healthy(f"http://127.0.0.1:{peer_port}/docs")
            bench = Endpoints(url, key, image_base, f"http://127.0.0.1:{peer_port}")
            print(f"model: {args.model.name}   images per measurement: {args.images}   cores: {os.cpu_count()}   "
                  f"rounds: {args.rounds}")
            cores = usable_cpus()
            ratios: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
            for round_no in range(1, args.rounds + 1):
                for clients in args.clients:
                    for name in args.endpoints:
                        bare = bare_session(args.model, args.images)
                        best = bare_session(args.model, args.images, threads=1, callers=cores)
                        served, client_ms = bench.measure(name, args.images, clients,
                                                          peer.pid if name == "peer_app" else proc.pid)
                        row = (served.ips / bare.ips, served.ips / best.ips, best.cpu_ms / served.cpu_ms)
                        ratios.setdefault((name, clients), []).append(row)
                        print(f"round {round_no}  {name:8s} x{clients:<2d} {served.ips:6.2f} img/s "
                              f"({served.cpu_ms:5.1f} CPU ms/img, client {client_ms:4.1f})   "
                              f"bare {bare.ips:6.2f}   bare x{cores} threads=1 {best.ips:6.2f} "
                              f"({best.cpu_ms:5.1f} CPU ms/img)   ratios {row[0]:.2f} {row[1]:.2f} {row[2]:.2f}",
                              flush=True)
            print("\nmedian ratios: images/s to the bare session with ONNX Runtime's defaults | images/s to the "
                  "bare session run as Sight runs it (one single-threaded run per core) | the bare session's CPU "
                  "time per image to the server's:")
            for (name, clients), rows in ratios.items():
                medians = " | ".join(f"{statistics.median(r[i] for r in rows):.2f}" for i in range(3))
                print(f"  {name:8s} {clients} client(s): {medians}")
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            peer.terminate()
            peer.wait(timeout=30)
            images.shutdown()


if __name__ == "__main__":
    main()
