"""Rewrites of a quantized detector's graph that keep its numbers and make ONNX Runtime run it faster on the CPU:
the DFL's softmax as plain arithmetic over its own axis (``decompose_dfl``), and the letterboxed picture
itself as the input (``take_pixels``). ``sight models quantize`` applies both before its parity check, so the
check runs on the file it writes. Each finds its pattern by structure and leaves a graph without it alone.

>>> import shutil, tempfile
>>> path = Path(tempfile.mkdtemp()) / "yolov8n.onnx"
>>> _ = shutil.copyfile(model_path, path)   # an Ultralytics export, FP32
>>> decompose_dfl(path), take_pixels(path)  # its DFL rewritten; its input stays float (nothing quantizes it)
(1, False)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sight.models.quantize import onnx_module

# What ``take_pixels`` makes the input: what the letterbox gives, batched.
PIXELS = "uint8 NHWC RGB"


def _attr(node: Any, name: str, default: Any = None) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx_module().helper.get_attribute_value(attribute)
    return default


def decompose_dfl(path: Path) -> int:
    """Rewrite, in place, the DFL's softmax-then-1x1-convolution as the same arithmetic on its own axis: the
    export computes ``conv(softmax(x, axis=1))`` on ``[batch, 16, 4, anchors]`` after a transpose; ONNX Runtime
    runs a softmax over a middle axis by transposing it, on one thread, and it cost as much as a tenth of the
    INT8 model's time. Here: ``sum(w * exp(x - max)) / sum(exp(x - max))`` over axis 2 of ``[batch, 4, 16,
    anchors]``, every op streaming over the anchors. The same FP32 numbers (to float rounding). Found by
    structure: a Softmax over axis 1 fed by a ``[0, 2, 1, 3]`` Transpose and feeding only a bias-free 1x1 Conv
    to one channel whose output only Reshapes read. Returns how many it rewrote."""
    onnx = onnx_module()
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:  # before opset 13 Softmax(axis=1) normalises over every axis from 1 on, not over axis 1 alone
        return 0
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    weights = {t.name: t for t in graph.initializer}
    rewritten = 0
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        found = _dfl_at(softmax, producer, consumers, weights)
        if found is None:
            continue
        transpose, conv, weight = found
        # [batch, 4, 16, anchors] in, [batch, 4, 1, anchors] out: the same elements, in the same order, as the
        # convolution's [batch, 1, 4, anchors], so the Reshape after it reads them alike.
        prefix = f"{softmax.name}/sight_decomposed"
        graph.initializer.extend([numpy_helper.from_array(np.array([2], dtype=np.int64), f"{prefix}/axes"),
                                  numpy_helper.from_array(weight.reshape(1, -1).astype(np.float32), f"{prefix}/w")])
        nodes = _expectation(transpose.input[0], conv.output[0], prefix, opset)
        at = list(graph.node).index(transpose)
        for old in (transpose, softmax, conv):
            graph.node.remove(old)
        for offset, node in enumerate(nodes):
            graph.node.insert(at + offset, node)
        # Shapes that inference recorded for the old layout.
        stale = {transpose.output[0], softmax.output[0], conv.output[0]}
        kept = [v for v in graph.value_info if v.name not in stale]
        del graph.value_info[:]
        graph.value_info.extend(kept)
        if not any(conv.input[1] in n.input for n in graph.node):
            graph.initializer.remove(weights[conv.input[1]])
        rewritten += 1
    if rewritten:
        onnx.save(model, str(path))
    return rewritten


def _dfl_at(softmax: Any, producer: dict[str, Any], consumers: dict[str, list[Any]], weights: dict[str, Any]
            ) -> tuple[Any, Any, np.ndarray] | None:
    """The DFL's Transpose, Conv and its weight around ``softmax``, or None where the structure differs."""
    from onnx import numpy_helper

    transpose, users = producer.get(softmax.input[0]), consumers.get(softmax.output[0], [])
    if (transpose is None or transpose.op_type != "Transpose" or list(_attr(transpose, "perm", [])) != [0, 2, 1, 3]
            or _attr(softmax, "axis", -1) != 1 or len(consumers.get(transpose.output[0], [])) != 1
            or len(users) != 1 or users[0].op_type != "Conv"):
        return None
    conv = users[0]
    if len(conv.input) != 2 or conv.input[1] not in weights:
        return None
    weight = numpy_helper.to_array(weights[conv.input[1]])
    if (weight.ndim != 4 or weight.shape[0] != 1 or weight.shape[2:] != (1, 1) or _attr(conv, "group", 1) != 1
            or any(v != 1 for v in _attr(conv, "strides", [1, 1]))
            or not all(_reshapes_alike(c, weights) for c in consumers.get(conv.output[0], []))):
        return None
    return transpose, conv, weight


def _reshapes_alike(node: Any, weights: dict[str, Any]) -> bool:
    """A Reshape that reads ``[batch, 4, 1, anchors]`` as it read ``[batch, 1, 4, anchors]``: any but one whose
    constant shape copies an input dimension past the first (a 0 there would copy another size now)."""
    from onnx import numpy_helper

    if node.op_type != "Reshape":
        return False
    shape = weights.get(node.input[1]) if len(node.input) > 1 else None
    return shape is None or not (numpy_helper.to_array(shape)[1:] == 0).any()


def _expectation(x: str, out: str, prefix: str, opset: int) -> list[Any]:
    """``out = sum(w * exp(x - max)) / sum(exp(x - max))`` over axis 2 of ``x``, ``w`` and the axes being the
    initializers ``<prefix>/w`` and ``<prefix>/axes``."""
    from onnx import helper

    def reduce(op: str, source: str, target: str, since: int) -> Any:
        if opset >= since:  # axes became an input in opset 18 (ReduceMax) and 13 (ReduceSum, always so here)
            return helper.make_node(op, [source, f"{prefix}/axes"], [target], name=f"{prefix}/{op}", keepdims=1)
        return helper.make_node(op, [source], [target], name=f"{prefix}/{op}", axes=[2], keepdims=1)

    return [
        reduce("ReduceMax", x, f"{prefix}/max", 18),
        helper.make_node("Sub", [x, f"{prefix}/max"], [f"{prefix}/shifted"], name=f"{prefix}/Sub"),
        helper.make_node("Exp", [f"{prefix}/shifted"], [f"{prefix}/exp"], name=f"{prefix}/Exp"),
        reduce("ReduceSum", f"{prefix}/exp", f"{prefix}/sum", 13),
        helper.make_node("MatMul", [f"{prefix}/w", f"{prefix}/exp"], [f"{prefix}/dot"], name=f"{prefix}/MatMul"),
        helper.make_node("Div", [f"{prefix}/dot", f"{prefix}/sum"], [out], name=f"{prefix}/Div"),
    ]


def take_pixels(path: Path) -> bool:
    """Make the quantized file at ``path`` take the letterboxed pictures themselves, ``[batch, height, width, 3]``
    uint8 RGB, in place of ``pixels / 255`` as float NCHW. Its first node quantizes that input with scale 1/255
    and zero point 0 (``quantize.PIXEL_SCALE``), which gives back the pixel values exactly; so the node is replaced by a
    Transpose to NCHW, which ONNX Runtime cancels against the NHWC layout it runs quantized convolutions in.
    The caller converts nothing to float and the model quantizes nothing. False (nothing written) when the
    input is not one float NCHW picture quantized that way."""
    onnx = onnx_module()
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    if len(graph.input) != 1:
        return False
    source = graph.input[0]
    tensor = source.type.tensor_type
    users = [n for n in graph.node if source.name in n.input]
    if (tensor.elem_type != TensorProto.FLOAT or len(tensor.shape.dim) != 4 or tensor.shape.dim[1].dim_value != 3
            or len(users) != 1 or users[0].op_type != "QuantizeLinear" or len(users[0].input) != 3):
        return False
    quantize = users[0]
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    scale, zero = constants.get(quantize.input[1]), constants.get(quantize.input[2])
    if (scale is None or zero is None or zero.dtype != np.uint8 or zero.size != 1 or zero.item() != 0
            or scale.size != 1 or abs(scale.item() * 255 - 1) > 1e-6):
        return False
    at = list(graph.node).index(quantize)
    graph.node.remove(quantize)
    graph.node.insert(at, helper.make_node("Transpose", [source.name], [quantize.output[0]], perm=[0, 3, 1, 2],
                                           name=f"{source.name}/sight_pixels_to_nchw"))
    batch, channels, height, width = (_copy(d) for d in tensor.shape.dim)
    del tensor.shape.dim[:]
    tensor.shape.dim.extend([batch, height, width, channels])
    tensor.elem_type = TensorProto.UINT8
    onnx.save(model, str(path))
    return True


def _copy(dim: Any) -> Any:
    copy = type(dim)()
    copy.CopyFrom(dim)
    return copy
