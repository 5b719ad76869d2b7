"""Images/s through the Ray runtime (Sight's Serve application on a local one-node Ray cluster) as a ratio to
the local runtime (`sight serve` in-process, as predict_throughput.py runs it), measured in the same run; where
the Ray overhead goes; and a short placement run on a two-node loopback ``Cluster``.

    python bench/ray_throughput.py                                # 1 and 8 clients, 2 rounds, placement
    python bench/ray_throughput.py --clients 8 --images 64 --rounds 3 --replicas 2 --no-placement

Both sides: YOLO only (yolo11n-untrained at 640), 8 JPEG photos per batch request. Ray: the HTTP API is the
Serve ingress behind Serve's proxy, the detector ``--replicas`` replicas of ``--replica-cpus`` logical CPUs
each, taking ``--ongoing`` calls at once (max_ongoing_requests) and running ``--replica-slots`` of them at a
time (default: its whole CPUs, at least one); the local runtime has one run slot per core. On one
machine both share the same cores (the Ray side also pays for the proxy, the API replica and the detector
replicas as separate processes), so the ratio is the cost of the Ray runtime, not what it scales to: that
needs more machines. Rounds alternate local and Ray; read the median ratios.

CPU: at the largest client count, CPU milliseconds per image spent by each process on the machine (from
/proc), local runtime and Ray runtime: what the Ray runtime costs that the local one does not, and where.

Overhead: per image, sequential, one client: the detector in this process (decode + detect, as a replica
runs it), the same through a ``DeploymentHandle`` (Ray's routing, pickling the bytes, the replica's actor
call), and through the whole HTTP path; the difference is the overhead of each layer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import re
import statistics
import tempfile
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from common import DEFAULT_MODEL, PHOTOS, SHARED, free_port, spawn_server

PER_REQUEST = 8
APP = "sight"


def settings_for(model: Path, workdir: Path, replicas: int, replica_cpus: float, ongoing: int, slots: int = 0) -> Any:
    from sight.config import ModelsSettings, OcrSettings, ReplicaSettings, RuntimeSettings, Settings, YoloSettings

    return Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{workdir / 'ray.db'}",
        data_dir=workdir / "ray-data",
        yolo=YoloSettings(models={"yolo11n": str(model)}, default_model="yolo11n", concurrency=slots),
        ocr=OcrSettings(enabled=False),
        models=ModelsSettings(offline=True),
        runtime=RuntimeSettings(
            kind="ray", app_name=APP, retries=2,
            api=ReplicaSettings(num_cpus=0.25, max_ongoing_requests=64),
            detector=ReplicaSettings(num_cpus=replica_cpus, min_replicas=replicas, max_replicas=replicas,
                                        max_ongoing_requests=ongoing)),
    )


def create_key(settings: Any) -> str:
    from sight.cli.keys import with_keys

    async def create(store: Any) -> str:
        key, _info = await store.create_key("bench", name="bench")
        return str(key)

    return with_keys(settings, create)


class Client:
    def __init__(self, url: str, key: str) -> None:
        self.http = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=64))
        self.url, self.key = url, key
        self.blobs = [(p, (SHARED / "images" / p).read_bytes()) for p in PHOTOS]
        self.meta = json.dumps({"is_yolo": True, "is_llm": False})

    def batch(self, req: int, per_request: int = PER_REQUEST) -> None:
        files = [("files", self.blobs[(req * per_request + j) % len(self.blobs)]) for j in range(per_request)]
        r = self.http.post(f"{self.url}/api/v1/inference/predict/batch", files=files,
                           data={"api_key": self.key, "metadata": [self.meta] * per_request})
        assert r.json()["result"]["summary"]["done"] == per_request, r.text[:300]

    def measure(self, n: int, clients: int) -> float:
        """Images/s of ``n`` images in 8-image batch requests from ``clients`` threads."""
        self.batch(0)  # warm-up
        requests = max(clients, n // PER_REQUEST)
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            list(pool.map(self.batch, range(requests)))
        return requests * PER_REQUEST / (time.perf_counter() - start)


TICK = os.sysconf("SC_CLK_TCK")
ROLES = [("ServeReplica:sight:api", "API replica (HTTP, pipeline)"), ("ServeReplica:sight:detect", "detector replicas"),
         ("ProxyActor", "Serve proxy"), ("ServeController", "Serve controller"), ("gcs_server", "Ray GCS"),
         ("raylet", "raylet"), ("ray_throughput.py", "bench clients"), ("-m sight", "local server (sight serve)")]


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) so far of every process on the machine, with its role."""
    found: dict[int, tuple[str, float]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rpartition(")")[2].split()
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        role = next((label for key, label in ROLES if key in command),
                    "other Ray processes" if "ray" in command else "other")
        found[int(proc.name)] = (role, (int(fields[11]) + int(fields[12])) / TICK)
    return found


def cpu_spent(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> Counter[str]:
    spent: Counter[str] = Counter()
    for pid, (role, seconds) in after.items():
        spent[role] += seconds - before.get(pid, (role, 0.0))[1]
    return spent


def start_ray_app(settings: Any, num_cpus: int) -> str:
    import ray
    from ray import serve

    from sight.serve_app import build

    ray.init(address="local", num_cpus=num_cpus, logging_level="warning", log_to_driver=False, include_dashboard=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build(settings), name=APP, route_prefix="/")
    return f"http://127.0.0.1:{port}"


def overhead(settings: Any, http: Client, n: int) -> None:
    """Per-image latency, sequential, of each layer; the differences are where the Ray overhead goes."""
    import ray
    from ray import serve

    from sight.engines.base import DetectOptions
    from sight.images.decode import open_image
    from sight.models.registry import EngineRegistry
    from sight.runtimes.ray.replicas import DetectorReplica, call, detector_serve_deployment

    blobs = [(SHARED / "images" / p).read_bytes() for p in PHOTOS]
    options = DetectOptions()
    local = DetectorReplica(settings, "yolo11n")
    entry = local.entry
    handle = serve.get_deployment_handle(detector_serve_deployment(entry), app_name=APP)

    def timed(call: Any) -> float:
        call(0)
        start = time.perf_counter()
        for i in range(n):
            call(i)
        return (time.perf_counter() - start) * 1000 / n

    in_process = timed(lambda i: asyncio.run(local.detect(blobs[i % 2], 640, options)))
    detect_only_engines = EngineRegistry(settings)
    detector = detect_only_engines.detector_for(entry)
    image = open_image(blobs[0], settings.images, 640).decode()
    detect_only = timed(lambda i: detector.detect(image, options))
    via_handle = timed(lambda i: call(handle, DetectorReplica.detect, blobs[i % 2], 640, options).result())
    via_http = timed(lambda i: http.batch(i, per_request=1))
    size = len(blobs[0])
    pickle_us = timed(lambda i: pickle.loads(pickle.dumps((blobs[i % 2], 640, options)))) * 1000
    put_us = timed(lambda i: ray.get(ray.put(blobs[i % 2]))) * 1000
    print(f"\noverhead, one image at a time ({n} each), ms per image:\n"
          f"  detector in this process (decode + detect):      {in_process:6.1f}   (detect alone {detect_only:.1f})\n"
          f"  through a DeploymentHandle to a replica:         {via_handle:6.1f}   "
          f"(+{via_handle - in_process:.1f}: routing, actor call, result back)\n"
          f"  through the HTTP API (proxy -> API -> replica):  {via_http:6.1f}   "
          f"(+{via_http - via_handle:.1f} over the handle: proxy, API replica, pipeline)\n"
          f"  pickling the call's arguments ({size // 1024} KiB JPEG) and back: {pickle_us:.0f} us;  "
          f"ray.put + ray.get of the bytes: {put_us:.0f} us", flush=True)


def compare(args: argparse.Namespace, workdir: Path) -> None:
    import ray
    from ray import serve

    settings = settings_for(args.model, workdir, args.replicas, args.replica_cpus, args.ongoing, args.replica_slots)
    key = create_key(settings)
    ray_url = start_ray_app(settings, num_cpus=os.cpu_count() or 2)
    proc, url, local_key = spawn_server(args.model, workdir)
    try:
        ray_client, local_client = Client(ray_url, key), Client(url, local_key)
        print(f"model: {args.model.name}   images per measurement: {args.images}   cores: {os.cpu_count()}   "
              f"rounds: {args.rounds}   ray: {args.replicas} detector replica(s) x {args.replica_cpus} CPU, "
              f"{args.ongoing} call(s) and {args.replica_slots or 'auto'} run slot(s) each", flush=True)
        ratios: dict[int, list[float]] = {}
        for round_no in range(1, args.rounds + 1):
            for clients in args.clients:
                local = local_client.measure(args.images, clients)
                remote = ray_client.measure(args.images, clients)
                ratios.setdefault(clients, []).append(remote / local)
                print(f"round {round_no}  x{clients:<2d} local {local:6.2f} img/s   ray {remote:6.2f} img/s   "
                      f"ratio {remote / local:.2f}", flush=True)
        print("\nmedian ratio, Ray runtime images/s to the local runtime's:")
        for clients, rows in ratios.items():
            print(f"  {clients} client(s): {statistics.median(rows):.2f}   ({', '.join(f'{r:.2f}' for r in rows)})")
        clients = max(args.clients)
        print(f"\nCPU ms per image by process, {clients} clients, {args.images} images each side:")
        for side, client in (("local", local_client), ("ray", ray_client)):
            client.batch(0)
            before = cpu_by_process()
            rate = client.measure(args.images, clients)
            spent = cpu_spent(before, cpu_by_process())
            total = sum(spent.values())
            n = max(clients, args.images // PER_REQUEST) * PER_REQUEST + PER_REQUEST  # with measure's warm-up
            parts = ", ".join(f"{role} {seconds * 1000 / n:.1f}" for role, seconds in spent.most_common()
                              if seconds * 1000 / n >= 0.5)
            print(f"  {side}: {rate:.1f} img/s, {total * 1000 / n:.1f} CPU ms/image: {parts}", flush=True)
        proc.terminate()
        proc.wait(timeout=60)
        overhead(settings, ray_client, args.overhead_images)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
        serve.shutdown()
        ray.shutdown()


def placement(args: argparse.Namespace, workdir: Path) -> None:
    """Two loopback nodes, two detector replicas: where they landed and how many calls each served."""
    import ray
    from ray import serve
    from ray._private import state
    from ray.cluster_utils import Cluster

    from sight.engines.base import DetectOptions
    from sight.runtimes.ray.replicas import DetectorReplica, call, detector_serve_deployment
    from sight.serve_app import build

    settings = settings_for(args.model, workdir, 2, 0.5, 1)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level="warning", log_to_driver=False)
    try:
        start = time.perf_counter()
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        serve.run(build(settings), name=APP, route_prefix="/")
        entry = DetectorReplica(settings, "yolo11n").entry
        name = detector_serve_deployment(entry)
        handle = serve.get_deployment_handle(name, app_name=APP)
        blob = (SHARED / "images" / PHOTOS[0]).read_bytes()
        options = DetectOptions()
        calls = []
        for _ in range(args.placement_calls // 8):  # 8 in flight at a time
            calls += [r.result() for r in [call(handle, DetectorReplica.detect, blob, 640, options)
                                            for _ in range(8)]]
        head = cluster.head_node.node_id
        nodes = {n["NodeID"]: "head" if n["NodeID"] == head else "worker" for n in ray.nodes()}
        replicas = {a["Name"].rpartition("#")[2]: a["Address"]["NodeID"] for a in state.actors().values()
                    if a["ActorClassName"] == f"ServeReplica:{APP}:{name}" and a["State"] == "ALIVE"}
        log_dir = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
        served: Counter[str] = Counter()
        for _ in range(50):  # the access lines are written as the calls end: bounded wait for the last ones
            served = Counter()
            for path in log_dir.glob(f"replica_{APP}_{name}_*.log"):
                replica = re.sub(rf"^replica_{APP}_{re.escape(name)}_|\.log$", "", path.name)
                served[replica] += path.read_text().count("CALL __call__ OK")
            if sum(served.values()) >= len(calls):
                break
            time.sleep(0.1)
        print(f"\nplacement: 2-node loopback cluster (1 CPU each), 2 detector replicas x 0.5 CPU, "
              f"{len(calls)} handle calls, 8 in flight ({time.perf_counter() - start:.0f} s with deploy)")
        per_node: Counter[str] = Counter()
        for replica, node in sorted(replicas.items(), key=lambda kv: nodes.get(kv[1], "")):
            print(f"  replica {replica} on {nodes.get(node, node[:8])} ({node[:8]}): {served[replica]} calls")
            per_node[nodes.get(node, node[:8])] += served[replica]
        print(f"  per node: {dict(per_node)}   nodes with a replica: {len(set(replicas.values()))}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--images", type=int, default=64, help="images per measurement")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--replicas", type=int, default=2, help="detector replicas on the one-node cluster")
    parser.add_argument("--replica-cpus", type=float, default=0.5, help="logical CPUs each replica holds")
    parser.add_argument("--ongoing", type=int, default=32,
                        help="calls at once per detector replica (max_ongoing_requests; Sight's default 32)")
    parser.add_argument("--replica-slots", type=int, default=0,
                        help="detector runs at once per replica (SIGHT_YOLO__CONCURRENCY; 0: its whole CPUs, min 1)")
    parser.add_argument("--overhead-images", type=int, default=20)
    parser.add_argument("--placement-calls", type=int, default=32)
    parser.add_argument("--no-placement", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        compare(args, Path(tmp))
        if not args.no_placement:
            (Path(tmp) / "placement").mkdir()
            placement(args, Path(tmp) / "placement")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
