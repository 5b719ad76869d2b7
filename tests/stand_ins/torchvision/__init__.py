"""The one piece of torchvision the Ultralytics ONNX predictor touches, for ``tests/ultralytics_reference.py``.

Ultralytics' ``AutoBackend.warmup`` imports torchvision unconditionally, and its NMS calls
``torchvision.ops.nms`` when torchvision is imported. The torchvision wheels these machines reach are CUDA
builds that fail to import beside the CPU build of torch the tests install ("operator torchvision::nms does
not exist"). This stand-in routes ``ops.nms`` to Ultralytics' own ``TorchNMS.nms``, which Ultralytics
documents as matching torchvision exactly and uses itself whenever torchvision is absent. It is put on the
reference subprocess's path only, never installed.
"""

import types

__version__ = "0.28.0"


def _nms(boxes, scores, iou_threshold):  # type: ignore[no-untyped-def]
    from ultralytics.utils.nms import TorchNMS

    return TorchNMS.nms(boxes, scores, iou_threshold)


ops = types.SimpleNamespace(nms=_nms)
