"""FP32 and INT8 versions of one detector, served side by side through HTTP, against their bare sessions, in
the same run: images/s at 1 and 8 clients, CPU ms per image, lone-image latency.

    python bench/int8_throughput.py                       # yolo11n-untrained at 640, quantized here with --force
    python bench/int8_throughput.py --int8 my-int8.onnx --model my.onnx --rounds 3
    python bench/int8_throughput.py --openvino            # also the OpenVINO execution provider, when it has a device

The INT8 file comes from ``sight models quantize MODEL --calibration <the shared photos and their mirror
images> --force`` (the untrained model's random weights make its parity meaningless, so the gate is forced;
parity is tested on a trained model, tests/test_quantize.py). One ``sight serve`` holds both as detectors
``fp32`` and ``int8``; requests carry 8 JPEG photos each (``yolo_model`` per item) and alternate between the
two, round after round, so machine noise hits both. Bare: each file's session on pre-made tensors, one
single-threaded run per usable core at once (how Sight runs it). Lone latency: one image per request, one
request at a time, median. The CPU's name and its INT8 instruction sets are printed: without VNNI or AMX,
INT8 may not be faster, and this bench shows it. Numbers, never pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from common import DEFAULT_MODEL, PHOTOS, SHARED, spawn_server
from predict_throughput import PER_REQUEST, Run, bare_session, process_cpu_seconds

from sight.engines.cpus import usable_cpus
from sight.models.quantize import int8_flags


def cpu_name() -> str:
    match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    return match.group(1).strip() if match else "unknown CPU"


def quantize_forced(model: Path, folder: Path) -> Path:
    """``sight models quantize`` of ``model`` into ``folder``, calibrated on the shared photos and mirrors."""
    from PIL import Image, ImageOps

    calib = folder / "calibration"
    calib.mkdir()
    for path in sorted((SHARED / "images").iterdir()):
        if path.suffix in (".jpg", ".png"):
            image = Image.open(path).convert("RGB")
            image.save(calib / f"{path.stem}.png")
            ImageOps.mirror(image).save(calib / f"{path.stem}-mirror.png")
    env = {**os.environ, "SIGHT_YOLO__MODELS_DIR": str(folder)}
    done = subprocess.run([sys.executable, "-m", "sight", "models", "quantize", str(model), "--calibration",
                           str(calib), "--force"], env=env, capture_output=True, text=True, timeout=900)
    target = folder / f"{model.stem}-int8.onnx"
    if done.returncode != 0 or not target.is_file():
        raise SystemExit(f"quantize failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return target


class Served:
    def __init__(self, url: str, key: str, pid: int) -> None:
        self.http = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=64))
        self.url, self.key, self.pid = url, key, pid
        self.blobs = [(p, (SHARED / "images" / p).read_bytes()) for p in PHOTOS]

    def request(self, model: str, req: int, images: int = PER_REQUEST) -> None:
        files = [("files", self.blobs[(req * images + j) % len(self.blobs)]) for j in range(images)]
        meta = json.dumps({"is_yolo": True, "yolo_model": model})
        r = self.http.post(f"{self.url}/api/v1/inference/predict/batch", files=files,
                           data={"api_key": self.key, "metadata": [meta] * images})
        found = r.json()["result"]
        assert found["summary"]["done"] == images and found["items"][0]["yolo"]["model"] == model, r.text[:300]

    def throughput(self, model: str, n: int, clients: int) -> Run:
        self.request(model, 0)  # warm-up
        requests = max(clients, n // PER_REQUEST)
        start, server_cpu = time.perf_counter(), process_cpu_seconds(self.pid)
        with ThreadPoolExecutor(max_workers=clients) as pool:
            list(pool.map(lambda i: self.request(model, i), range(requests)))
        images = requests * PER_REQUEST
        return Run(images / (time.perf_counter() - start), (process_cpu_seconds(self.pid) - server_cpu) * 1000 / images)

    def lone_ms(self, model: str, n: int) -> float:
        self.request(model, 0, images=1)
        times = []
        for i in range(n):
            start = time.perf_counter()
            self.request(model, i, images=1)
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)


def openvino_report(fp32: Path, int8: Path) -> str:
    """The OpenVINO execution provider (the ``onnxruntime-ep-openvino`` plugin beside stock onnxruntime) on this
    CPU: its images/s for both files, or why it cannot run here."""
    import onnxruntime as ort

    try:
        import onnxruntime_ep_openvino as ov_ep  # type: ignore[import-not-found]
    except ImportError:
        return "OpenVINO EP: not installed (pip install onnxruntime-ep-openvino)"
    ort.register_execution_provider_library("openvino_ep", ov_ep.get_library_path())
    devices = [d for d in ort.get_ep_devices() if d.ep_name == ov_ep.get_ep_name()]
    if not devices:
        vendors = sorted({f"{d.device.vendor} (0x{d.device.vendor_id:04x})" for d in ort.get_ep_devices()})
        return (f"OpenVINO EP: registered, but it offers no device on this CPU ({', '.join(vendors)}): its plugin "
                "serves Intel devices only (vendor id 0x8086)")
    lines = []
    for path in (fp32, int8):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.add_provider_for_devices(devices[:1], {"num_of_threads": "1"})
        session = ort.InferenceSession(str(path), options)
        name = session.get_inputs()[0].name
        import numpy as np

        tensor = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
        session.run(None, {name: tensor})
        start = time.perf_counter()
        for _ in range(10):
            session.run(None, {name: tensor})
        lines.append(f"OpenVINO EP {path.name}: {(time.perf_counter() - start) * 100:.1f} ms per image, 1 thread")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--int8", type=Path, help="an INT8 file already made (default: quantize --model here)")
    parser.add_argument("--images", type=int, default=48, help="images per measurement")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lone", type=int, default=20, help="lone requests per model and round")
    parser.add_argument("--openvino", action="store_true")
    args = parser.parse_args()
    flags = int8_flags()
    print(f"CPU: {cpu_name()}, {usable_cpus()} usable cores; INT8 instruction sets: "
          f"{', '.join(flags) if flags else 'none (no VNNI, no AMX): INT8 may not be faster here'}")
    with tempfile.TemporaryDirectory() as work:
        int8 = args.int8 or quantize_forced(args.model, Path(work))
        served: dict[tuple[str, int], list[Run]] = {}
        bare: dict[str, list[Run]] = {"fp32": [], "int8": []}
        lone: dict[str, list[float]] = {"fp32": [], "int8": []}
        cores = usable_cpus()
        proc, url, key = spawn_server(args.model, Path(work), SIGHT_YOLO__MODELS=json.dumps(
            {"fp32": str(args.model), "int8": str(int8)}))
        try:
            sight = Served(url, key, proc.pid)
            for _ in range(args.rounds):
                for name, path in (("fp32", args.model), ("int8", int8)):
                    bare[name].append(bare_session(path, args.images, threads=1, callers=cores))
                for clients in args.clients:
                    for name in ("fp32", "int8"):
                        served.setdefault((name, clients), []).append(sight.throughput(name, args.images, clients))
                for name in ("fp32", "int8"):
                    lone[name].append(sight.lone_ms(name, args.lone))
        finally:
            proc.terminate()
            proc.wait(30)
        report(args, served, bare, lone)
        if args.openvino:
            print(openvino_report(args.model, int8))


def report(args: argparse.Namespace, served: dict[tuple[str, int], list[Run]], bare: dict[str, list[Run]],
           lone: dict[str, list[float]]) -> None:
    def med(runs: list[Run]) -> Run:
        return Run(statistics.median(r.ips for r in runs), statistics.median(r.cpu_ms for r in runs))

    b = {name: med(runs) for name, runs in bare.items()}
    print(f"\nmodel {args.model.name} at 640, {args.rounds} rounds of {args.images} images, medians")
    print(f"{'what':30} {'images/s':>9} {'CPU ms/img':>11} {'vs bare':>8}")
    for name in ("fp32", "int8"):
        print(f"{'bare ' + name.upper() + ' session':30} {b[name].ips:>9.2f} {b[name].cpu_ms:>11.1f} {'1.00':>8}")
    for clients in args.clients:
        for name in ("fp32", "int8"):
            s = med(served[(name, clients)])
            print(f"{f'Sight {name.upper()}, {clients} clients':30} {s.ips:>9.2f} {s.cpu_ms:>11.1f} "
                  f"{s.ips / b[name].ips:>8.2f}")
    for clients in args.clients:
        f, i = med(served[("fp32", clients)]), med(served[("int8", clients)])
        print(f"INT8 / FP32 through Sight at {clients} clients: {i.ips / f.ips:.2f}x images/s, "
              f"{f.cpu_ms / i.cpu_ms:.2f}x less CPU per image")
    lf, li = statistics.median(lone["fp32"]), statistics.median(lone["int8"])
    print(f"lone image: FP32 {lf:.1f} ms, INT8 {li:.1f} ms: {lf / li:.2f}x lower latency")
    print(f"bare INT8 / bare FP32: {b['int8'].ips / b['fp32'].ips:.2f}x")


if __name__ == "__main__":
    main()
