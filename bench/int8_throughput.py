"""FP32 and INT8 versions of one detector, served side by side through HTTP, against their bare sessions, in
the same run: images/s at 1 and 8 clients, CPU ms per image, lone-image latency.

    python bench/int8_throughput.py                       # yolo11n-untrained at 640, quantized here with --force
    python bench/int8_throughput.py --int8 my-int8.onnx --model my.onnx --rounds 3
    python bench/int8_throughput.py --openvino            # also the OpenVINO execution provider, when it has a device

The INT8 file comes from ``sight models quantize MODEL --calibration <the shared photos and their mirror
images> --force`` (the untrained model's random weights make its parity meaningless, so the gate is forced;
parity is tested on a trained model, tests/test_quantize.py). One ``sight serve`` holds both as detectors
``fp32`` and ``int8``; requests carry 8 JPEG photos each (``yolo_model`` per item). Each round measures both
models back to back, the one that goes first changing every round, and every ratio is taken within a round
(then its median and range over the rounds are printed), so that the machine's drift hits both sides of it.
Bare: each file's session on pre-made tensors, one single-threaded run per usable core at once (how Sight
runs it), at 640x640 (the reference bench/predict_throughput.py uses) and at the shapes Sight serves these
photos at (padded to the stride only: 640x480 and 448x640, less work). Lone latency: one image per request,
one request at a time, the two models taking turns request by request; medians. The CPU's name and its INT8
instruction sets are printed: without VNNI or AMX, INT8 may not be faster, and this bench shows it. Numbers,
never pass/fail.
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
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from common import DEFAULT_MODEL, PHOTOS, SHARED, spawn_server
from predict_throughput import PER_REQUEST, Run, bare_session, process_cpu_seconds

from sight.engines.cpus import usable_cpus
from sight.engines.onnx_yolo import takes_pixels, to_input
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

    def lone_ms(self, models: tuple[str, ...], n: int) -> dict[str, float]:
        """Median latency of one image per request, one request at a time, the models taking turns request by
        request (so that both see the same moments of the machine)."""
        times: dict[str, list[float]] = {m: [] for m in models}
        for model in models:
            self.request(model, 0, images=1)
        for i in range(n):
            for model in models if i % 2 == 0 else models[::-1]:
                start = time.perf_counter()
                self.request(model, i, images=1)
                times[model].append((time.perf_counter() - start) * 1000)
        return {m: statistics.median(t) for m, t in times.items()}


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
        canvas = np.random.default_rng(0).integers(0, 256, (640, 640, 3), dtype=np.uint8)
        tensor = to_input([canvas], takes_pixels(session))
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
    parser.add_argument("--images", type=int, default=128, help="images per measurement")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--lone", type=int, default=20, help="lone requests per model and round")
    parser.add_argument("--openvino", action="store_true")
    args = parser.parse_args()
    flags = int8_flags()
    print(f"CPU: {cpu_name()}, {usable_cpus()} usable cores; INT8 instruction sets: "
          f"{', '.join(flags) if flags else 'none (no VNNI, no AMX): INT8 may not be faster here'}")
    with tempfile.TemporaryDirectory() as work:
        int8 = args.int8 or quantize_forced(args.model, Path(work))
        rounds: list[Round] = []
        cores = usable_cpus()
        proc, url, key = spawn_server(args.model, Path(work), SIGHT_YOLO__MODELS=json.dumps(
            {"fp32": str(args.model), "int8": str(int8)}))
        try:
            sight = Served(url, key, proc.pid)
            paths = {"fp32": args.model, "int8": int8}
            for n in range(args.rounds):
                order = ("fp32", "int8") if n % 2 == 0 else ("int8", "fp32")  # neither always goes first
                one = Round()
                for name in order:
                    one.bare[name] = bare_session(paths[name], args.images, threads=1, callers=cores)
                    one.bare_served_shapes[name] = bare_session(paths[name], args.images, threads=1, callers=cores,
                                                                rect=True)
                for clients in args.clients:
                    for name in order:
                        one.served[(name, clients)] = sight.throughput(name, args.images, clients)
                one.lone = sight.lone_ms(order, args.lone)
                rounds.append(one)
        finally:
            proc.terminate()
            proc.wait(30)
        report(args, rounds)
        if args.openvino:
            print(openvino_report(args.model, int8))


@dataclass
class Round:
    """One round's measurements, both models taken back to back, so that their ratios are paired."""

    bare: dict[str, Run] = field(default_factory=dict)
    bare_served_shapes: dict[str, Run] = field(default_factory=dict)
    served: dict[tuple[str, int], Run] = field(default_factory=dict)
    lone: dict[str, float] = field(default_factory=dict)


def report(args: argparse.Namespace, rounds: list[Round]) -> None:
    """Medians over the rounds; each ratio is taken within a round, then its median and range given."""
    def med(runs: list[Run]) -> Run:
        return Run(statistics.median(r.ips for r in runs), statistics.median(r.cpu_ms for r in runs))

    def ratio(values: list[float]) -> str:
        return f"{statistics.median(values):.2f}x (rounds: {min(values):.2f}-{max(values):.2f})"

    print(f"\nmodel {args.model.name} at 640, {len(rounds)} rounds of {args.images} images, medians")
    print(f"{'what':34} {'images/s':>9} {'CPU ms/img':>11} {'vs bare':>8}")
    bare = {name: med([r.bare[name] for r in rounds]) for name in ("fp32", "int8")}
    for name in ("fp32", "int8"):
        shaped = med([r.bare_served_shapes[name] for r in rounds])
        print(f"{'bare ' + name.upper() + ', 640x640':34} {bare[name].ips:>9.2f} {bare[name].cpu_ms:>11.1f} "
              f"{'1.00':>8}")
        print(f"{'bare ' + name.upper() + ', the shapes Sight serves':34} {shaped.ips:>9.2f} {shaped.cpu_ms:>11.1f}")
    for clients in args.clients:
        for name in ("fp32", "int8"):
            s = med([r.served[(name, clients)] for r in rounds])
            print(f"{f'Sight {name.upper()}, {clients} clients':34} {s.ips:>9.2f} {s.cpu_ms:>11.1f} "
                  f"{s.ips / bare[name].ips:>8.2f}")
    for clients in args.clients:
        ips = [r.served[("int8", clients)].ips / r.served[("fp32", clients)].ips for r in rounds]
        cpu = [r.served[("fp32", clients)].cpu_ms / r.served[("int8", clients)].cpu_ms for r in rounds]
        print(f"INT8 / FP32 through Sight at {clients} clients: {ratio(ips)} images/s, {ratio(cpu)} less CPU per image")
    lf, li = (statistics.median(r.lone[m] for r in rounds) for m in ("fp32", "int8"))
    print(f"lone image: FP32 {lf:.1f} ms, INT8 {li:.1f} ms: {ratio([r.lone['fp32'] / r.lone['int8'] for r in rounds])} "
          "lower latency")
    top = max(args.clients)
    for what, bares in (("640x640", [r.bare for r in rounds]),
                        ("the shapes Sight serves", [r.bare_served_shapes for r in rounds])):
        served = [r.served[("int8", top)].ips / b["int8"].ips for r, b in zip(rounds, bares, strict=True)]
        print(f"Sight INT8 at {top} clients / bare INT8 at {what}: {ratio(served)}")
    print(f"bare INT8 / bare FP32 (640x640): {ratio([r.bare['int8'].ips / r.bare['fp32'].ips for r in rounds])}")


if __name__ == "__main__":
    main()
