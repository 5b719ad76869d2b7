"""INT8 versions of detectors: ONNX Runtime's static QDQ quantization (per-channel INT8 weights, UINT8
activations), calibrated on the user's own images, with the Detect head's decoding kept in FP32 (``models.rewrites``
then makes the file fast on ONNX Runtime).

Only ``sight models quantize`` imports this: it needs ``onnx`` (``pip install 'sight[quantize]'``), which
serving never does. An INT8 file is an ONNX file like any other: it loads with ONNX Runtime alone and is
served by its stem; its metadata says ``sight.precision: int8`` and where it came from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sight.errors import EngineUnavailableError

log = logging.getLogger(__name__)

PRECISION_KEY = "sight.precision"
INSTALL = "quantizing needs onnx: pip install 'sight[quantize]'"
LEARNABLE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
PIXEL_SCALE = {"scale": np.array(1 / 255, dtype=np.float32), "zero_point": np.array(0, dtype=np.uint8)}
# Instruction sets that run INT8 convolutions fast (VNNI in AVX-512 or AVX, Intel AMX).
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def int8_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str] | None:
    """The INT8 instruction sets this CPU has (None: not known, e.g. not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    match = re.search(r"^flags\s*:(.*)$", text, re.M)
    flags = set(match.group(1).split()) if match else set()
    return [f for f in INT8_FLAGS if f in flags]


def onnx_module() -> Any:
    """``onnx``, or ``EngineUnavailableError`` saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise EngineUnavailableError(INSTALL) from None
    return onnx


def decode_nodes(model_path: Path) -> list[str]:
    """The Detect head's decoding nodes, found by structure (no names assumed): every node below some convolution
    from which no learnable convolution is reachable, but the DFL's fixed convolution (the Conv fed by a
    Softmax). That is the reshapes and concats after the head's last convolutions, the DFL, the anchor and
    stride arithmetic, the class sigmoid and the output concat: quantized, they give every score one UINT8
    scale shared with pixel coordinates (scores become 0 or 1.25). The last convolutions themselves stay INT8."""
    graph = onnx_module().load(str(model_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    dfl = {n.name for n in graph.node if n.op_type == "Conv" and n.input and
           getattr(producer.get(n.input[0]), "op_type", None) == "Softmax"}
    learnable = [n for n in graph.node if n.op_type in LEARNABLE and n.name not in dfl]
    reaches_conv: set[str] = set()
    stack = [producer[i] for c in learnable for i in c.input if i in producer]
    while stack:
        node = stack.pop()
        if node.name not in reaches_conv:
            reaches_conv.add(node.name)
            stack.extend(producer[i] for i in node.input if i in producer)
    below_conv: set[str] = set()
    stack = [c for n in graph.node if n.op_type == "Conv" for o in n.output for c in consumers.get(o, [])]
    while stack:
        node = stack.pop()
        if node.name not in below_conv:
            below_conv.add(node.name)
            stack.extend(c for o in node.output for c in consumers.get(o, []))
    names = {c.name for c in learnable}
    return [n.name for n in graph.node if n.name in below_conv and n.name not in reaches_conv and n.name not in names]


class _Reader:
    """ONNX Runtime's calibration reader: one letterboxed tensor at a time, ``on_sample`` after each."""

    def __init__(self, input_name: str, tensors: Sequence[np.ndarray], on_sample: Callable[[], None]) -> None:
        self.input_name, self.tensors, self.on_sample, self.i = input_name, tensors, on_sample, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.tensors):
            return None
        self.i += 1
        self.on_sample()
        return {self.input_name: self.tensors[self.i - 1]}

    def rewind(self) -> None:
        self.i = 0


def quantize(source: Path, target: Path, tensors: Sequence[np.ndarray], *, keep_fp32: Iterable[str] = (),
             on_sample: Callable[[], None] = lambda: None) -> str:
    """Write ``source`` quantized to ``target``, calibrated on ``tensors`` (the model's input, letterboxed as
    serving does), ``keep_fp32`` nodes left in FP32. Percentile calibration (99.999), which clips the rare
    outliers MinMax lets set the scale; MinMax where the activations are too flat for a histogram (an untrained
    model's). Returns the calibration used."""
    onnx_module()
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    input_name = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    excluded = list(keep_fp32)
    for method, name in ((CalibrationMethod.Percentile, "percentile 99.999"), (CalibrationMethod.MinMax, "minmax")):
        try:
            quantize_static(
                model_input=str(source), model_output=str(target),
                calibration_data_reader=_Reader(input_name, tensors, on_sample),
                quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, calibrate_method=method,
                nodes_to_exclude=excluded,
                # Percentile calibration holds every image's activations until it ends, which is why the images
                # are capped (SIGHT_QUANTIZE__MAX_IMAGES). (CalibMaxIntermediateOutputs, which folds MinMax's in
                # chunks, left nudenet 22 INT8 boxes on the check set against 35 without it.)
                # The input is pixels / 255: quantized with scale 1/255 and zero point 0 it gives back the pixel
                # values exactly (a calibrated scale would round them, or clip the brightest at the percentile).
                extra_options={"CalibPercentile": 99.999, "TensorQuantOverrides": {input_name: [PIXEL_SCALE]}},
            )
            return name
        except ValueError as exc:  # numpy: "Too many bins for data range"
            if method != CalibrationMethod.Percentile:
                raise
            log.warning("percentile calibration failed (%s); calibrating by min and max", exc)
    raise AssertionError("unreachable")  # pragma: no cover


def stamp(source: Path, target: Path, extra: dict[str, Any]) -> None:
    """Give ``target`` the source's metadata (names, imgsz, stride, task) and ``extra`` (provenance)."""
    onnx = onnx_module()
    src = onnx.load(str(source), load_external_data=False)
    dst = onnx.load(str(target))
    meta = {p.key: p.value for p in dst.metadata_props}
    meta.update({p.key: p.value for p in src.metadata_props})
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    del dst.metadata_props[:]
    for key, value in meta.items():
        dst.metadata_props.add(key=key, value=value)
    onnx.save(dst, str(target))
