"""The README's test command is one command that sets everything up itself, and CI runs that same command."""

from __future__ import annotations

import os
import subprocess
import sys

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
