"""The README's test command is one command that sets everything up itself, and CI runs that same command."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def test_the_readme_test_command_is_scripts_test_and_ci_runs_it() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "\nscripts/test\n" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\nscripts/test\n" in ci and ci.index("scripts/test") < ci.index("ruff check")
    script = (ROOT / "scripts" / "test").read_text()
    for needed in ("postgresql", "redis-server", "chromium", "chromium-driver", "sudo", "'.[test]'",
                   'pytest "$@"'):
        assert needed in script, needed
    assert os.access(ROOT / "scripts" / "test", os.X_OK)


def test_the_console_tests_collect_without_a_browser() -> None:
    """A missing browser fails the console tests one by one (with what to install), never the collection of
    the whole run."""
    env = {**os.environ, "SIGHT_TEST_CHROMIUM": "/nonexistent/chromium",
           "SIGHT_TEST_CHROMEDRIVER": "/nonexistent/chromedriver"}
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "--no-cov", "-p",
                           "no:cacheprovider", "tests/test_console.py"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tests collected" in done.stdout or "test collected" in done.stdout


PROCESS_STARTERS = ("SightServer(", "SightProcess(", "[*SIGHT", "Cluster(")
PROCESS_MODULES = {"test_cli_serve", "test_cli_predict", "test_batches_durability", "test_readme", "test_ray_runtime",
                   "test_ray_failover",
                   "test_ray_cli"}


def test_tests_that_start_processes_are_marked_slow(request: pytest.FixtureRequest) -> None:
    """``-m 'not slow'`` leaves out exactly the end-to-end tests: those that start ``sight`` or a Ray cluster,
    in their body or through their module's fixtures."""
    unmarked = []
    for item in request.session.items:
        function = getattr(item, "function", None)
        if function is None:
            continue
        module = inspect.getmodule(function)
        starts = any(s in inspect.getsource(function) for s in PROCESS_STARTERS)
        in_process_module = module is not None and module.__name__.rsplit(".", 1)[-1] in PROCESS_MODULES
        if (starts or in_process_module) and item.get_closest_marker("slow") is None:
            unmarked.append(item.nodeid)
    assert not unmarked, unmarked
    assert "slow" in request.config.getini("markers")[0]
