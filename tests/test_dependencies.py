"""The installed environment: no two distributions write the same importable module (opencv-python beside
opencv-python-headless both write ``cv2``; onnxruntime beside onnxruntime-gpu both write ``onnxruntime``),
the GPU install resolves to onnxruntime-gpu alone, and the server's required dependencies bring neither
PyTorch nor anything unused."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from collections import defaultdict
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _top_level_modules(dist: metadata.Distribution) -> set[str]:
    """Modules a distribution writes at the top of site-packages: ``name/__init__.py``, ``name.py`` or an
    extension ``name.*.so``. Directories without ``__init__.py`` are namespace packages, shared by design."""
    found: set[str] = set()
    for file in dist.files or []:
        parts = file.parts
        if not parts or parts[0].endswith((".dist-info", ".egg-info", ".data")) or parts[0] in ("..", "__pycache__"):
            continue
        if len(parts) == 1 and (file.suffix == ".py" or file.suffix in (".so", ".pyd")):
            found.add(parts[0].split(".")[0])
        elif len(parts) == 2 and parts[1] == "__init__.py" and _declares_namespace(dist, file):
            continue  # a pkgutil / pkg_resources namespace package (opencensus + opencensus-context): shared by design
        elif len(parts) == 2 and parts[1] == "__init__.py" or len(parts) == 2 and re.match(
                r"__init__\..*\.(so|pyd)$", parts[1]):
            found.add(parts[0])
    return found


def _declares_namespace(dist: metadata.Distribution, file: metadata.PackagePath) -> bool:
    try:
        text = Path(str(dist.locate_file(file))).read_text(errors="replace")
    except OSError:
        return False
    return "extend_path(__path__" in text or "declare_namespace(" in text


def test_no_module_is_written_by_two_distributions() -> None:
    writers: dict[str, set[str]] = defaultdict(set)
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        for module in _top_level_modules(dist):
            writers[module].add(name)
    clashes = {module: sorted(names) for module, names in writers.items() if len(names) > 1}
    assert clashes == {}, f"modules written by more than one installed distribution: {clashes}"


def test_module_scan_sees_cv2_and_onnxruntime() -> None:
    """The scan above would be vacuous if it found nothing: it must see the wheels it guards. OpenCV is the
    headless build, the one rapidocr, nudenet and Sight ask for."""
    by_module = {m: dist.metadata["Name"] for dist in metadata.distributions() for m in _top_level_modules(dist)}
    assert by_module["cv2"] == "opencv-python-headless"
    assert by_module["onnxruntime"] in ("onnxruntime", "onnxruntime-gpu")


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower() for d in requirements}


def test_required_dependencies_never_bring_torch_httpx2_or_an_onnxruntime_build() -> None:
    """ONNX Runtime comes from the cpu or the gpu extra, never from the base install: a hard requirement on
    onnxruntime would sit beside onnxruntime-gpu on every GPU install."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = _names(project["dependencies"])
    assert not {"torch", "ultralytics", "httpx2", "onnxruntime", "onnxruntime-gpu", "opencv-python",
                "rapidocr-onnxruntime"} & required
    assert {"rapidocr", "opencv-python-headless"} <= required
    extras = project["optional-dependencies"]
    assert _names(extras["cpu"]) == {"onnxruntime"} and _names(extras["gpu"]) == {"onnxruntime-gpu"}
    assert _names(extras["ultralytics"]) == {"ultralytics-opencv-headless"}
    every_extra = " ".join(d for deps in extras.values() for d in deps)
    assert "httpx2" not in every_extra and "opencv-python " not in every_extra


def _resolved(extra: str, tmp_path: Path) -> set[str]:
    """What ``pip install -e '.[extra]'`` would install into an empty environment, resolved against the
    package index without installing anything."""
    report = tmp_path / f"{extra or 'base'}.json"
    target = f"{ROOT}[{extra}]" if extra else str(ROOT)
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                    "--report", str(report), "-e", target], check=True, timeout=600, capture_output=True)
    return {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}


@pytest.mark.slow
@pytest.mark.parametrize(("extra", "runtime"), [("gpu", "onnxruntime-gpu"), ("cpu", "onnxruntime"), ("", None)])
def test_each_install_resolves_to_one_writer_per_module(tmp_path: Path, extra: str, runtime: str | None) -> None:
    """The GPU install (``pip install -e '.[gpu]'``) ends with onnxruntime-gpu alone, the CPU install with
    onnxruntime alone, the base install with neither (sight serve then says which to install); OpenCV is
    the headless build in each."""
    names = _resolved(extra, tmp_path)
    assert {"onnxruntime", "onnxruntime-gpu"} & names == ({runtime} if runtime else set()), sorted(names)
    assert "opencv-python-headless" in names and "opencv-python" not in names
    assert "sight" in names and "torch" not in names
