"""The wheels behind the modules Sight's engines import, ``onnxruntime`` and ``cv2``, checked once per process.

Two wheels can write one module: ``onnxruntime`` beside ``onnxruntime-gpu``, ``opencv-python`` beside
``opencv-python-headless``. pip installs both without a word and the one installed last wins, file by file:
CUDA can vanish without an error, or OpenCV break on a missing library. ``install_problems`` names each clash
and the command that fixes it ("onnxruntime and onnxruntime-gpu both write the onnxruntime module ...: pip
uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"); ``sight serve`` shows them in its
banner and ``GET /v1/models`` in ``warnings``.

>>> install_problems()  # an install as the README makes it: one wheel per module, ONNX Runtime present
()
"""

from __future__ import annotations

import functools
import importlib.util
from importlib import metadata

from sight.engines.sessions import INSTALL

# Per module, the wheel to keep when several write it: the first of these present among the writers, else the
# last. A GPU build is what its installer meant; OpenCV headless is what Sight, rapidocr and nudenet want.
KEEP = {
    "onnxruntime": ("onnxruntime-gpu", "onnxruntime"),
    "cv2": ("opencv-contrib-python-headless", "opencv-python-headless"),
}


@functools.cache
def install_problems() -> tuple[str, ...]:
    """What is wrong with this install, each with its fix: two wheels writing one module, or no ONNX Runtime."""
    writers = metadata.packages_distributions()
    problems = []
    for module, preferred in KEEP.items():
        names = sorted({name.lower() for name in writers.get(module, [])})
        if len(names) > 1:
            keep = next((p for p in preferred if p in names), preferred[-1])
            problems.append(f"{' and '.join(names)} both write the {module} module (the one installed last wins, "
                            f"file by file): pip uninstall -y {' '.join(names)} && pip install {keep}")
    if not has_onnxruntime():
        problems.append(INSTALL)
    return tuple(problems)


def has_onnxruntime() -> bool:
    """Whether ``import onnxruntime`` can find the module (without importing it: that takes a second)."""
    try:
        return importlib.util.find_spec("onnxruntime") is not None
    except ImportError:  # an import hook that refuses it
        return False
