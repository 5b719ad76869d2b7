"""ONNX Runtime sessions for Sight's engines: the execution providers they ask for, and the ones they got.

A session does not always get what it asks for: ONNX Runtime runs on the CPU when a requested provider is
not in the installed build (``onnxruntime`` rather than ``onnxruntime-gpu``) or cannot start (no GPU, or
CUDA's libraries missing). ``open_session`` says so as a warning with the reason, and every engine reports
the provider its session actually runs on (banner, ``/v1/models``), never the one it asked for.

>>> session = open_session(model_path, "detector 'faces'", pick_providers())
>>> provider_name(session)
'CPU'
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sight.errors import EngineUnavailableError

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)
_arena_lock = threading.Lock()
_arena_shared: bool | None = None  # None: not tried yet

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
CPU = "CPUExecutionProvider"
GPU_INSTALL = "pip install -e '.[gpu]' (from a checkout) or pip install 'sight[gpu]'"
INSTALL = ("ONNX Runtime is not installed: pip install -e '.[cpu]' (from a checkout; or 'sight[cpu]'), or "
           "'.[gpu]' for NVIDIA GPUs. Sight's base install leaves the choice to you, so that only one of the two "
           "wheels writes the onnxruntime module")


def onnxruntime() -> Any:
    """The ``onnxruntime`` module, or ``EngineUnavailableError`` saying how to install it."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise EngineUnavailableError(INSTALL) from exc
    return ort


def pick_providers(wanted: Sequence[str] | None = None) -> list[str]:
    """The providers to ask for, best first: ``wanted`` as given (with the CPU last, to fall back on), else
    the best ones this ONNX Runtime build has."""
    if wanted:
        return [*wanted, CPU] if CPU not in wanted else list(wanted)
    available = onnxruntime().get_available_providers()
    return [p for p in PREFERRED_PROVIDERS if p in available] or available


def share_cpu_arena() -> bool:
    """Register one CPU memory arena with ONNX Runtime's environment, for every CPU session of this process
    to draw on: the runs that slots let happen at once (a wide run or several narrow ones, on any model) then
    reuse one pool of activation memory instead of each session growing its own."""
    global _arena_shared
    ort = onnxruntime()
    with _arena_lock:
        if _arena_shared is None:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            try:
                ort.create_and_register_allocator(info, None)
                _arena_shared = True
            except Exception as exc:  # e.g. registered already by the embedding program
                log.warning("CPU sessions keep their own memory arenas: %s", exc)
                _arena_shared = False
        return _arena_shared


def open_session(path: Path, what: str, providers: Sequence[str], *, threads: int = 0,
                 idle_spin: bool = True) -> ort.InferenceSession:
    """A session over ``path`` asking for ``providers`` (``pick_providers``), ``threads`` intra-op threads
    (0: ONNX Runtime's default, one per core). ``idle_spin=False``: its pool threads spin while a run is in
    progress but stop the moment it returns, instead of spinning on (ONNX Runtime's default) on cores that
    other runs need. A fallback from the first provider is logged with its reason; a file that does not load
    is ``EngineUnavailableError`` naming ``what``."""
    import warnings

    ort = onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ONNX Runtime's own warnings are about its internals
    if threads:
        options.intra_op_num_threads = threads
    if not idle_spin:
        # Not allow_spinning=0: threads that sleep between a run's operators must be woken for each, which cost
        # an INT8 model, with its many short operators, about a fifth of its time over two cores.
        options.add_session_config_entry("session.force_spinning_stop", "1")
    if providers[0] == CPU and share_cpu_arena():
        options.add_session_config_entry("session.use_env_allocators", "1")
    available = ort.get_available_providers()
    try:
        with warnings.catch_warnings():  # "not in available provider names": said below, with the fix
            warnings.simplefilter("ignore", UserWarning)
            session = ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise EngineUnavailableError(f"{what} failed to load from {path}: {exc}") from exc
    got = session.get_providers()[0]
    if got != providers[0]:
        if providers[0] not in available:
            reason = (f"this ONNX Runtime build has no {providers[0]} (it has {', '.join(available)}); "
                      + (f"for the GPU: {GPU_INSTALL}" if providers[0] != CPU else ""))
        else:
            reason = (f"{providers[0]} did not start (no device, or its libraries are missing: ONNX Runtime's "
                      "error above says which)")
        log.warning("%s runs on %s, not on the requested %s: %s", what, got, providers[0], reason.rstrip("; "))
    return session


def provider_name(session: ort.InferenceSession) -> str:
    """The provider a session runs on, short: ``CPU``, ``CUDA``, ``Tensorrt``, ``OpenVINO``."""
    return str(session.get_providers()[0]).removesuffix("ExecutionProvider")
