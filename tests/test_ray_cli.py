"""``sight serve --runtime ray`` as a newcomer runs it: no cluster running, so it starts one, deploys Sight's
Serve application, answers on its port with the models' states from the cluster, and stops on SIGTERM.

Its own module: the two-node cluster of test_ray_runtime.py is shut down before this runs, so ``auto`` finds
no cluster to join.
"""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from tests.conftest import IMAGES
from tests.helpers import wait_until
from tests.processes import KEY_RE, SightProcess, free_port, sight_env

pytest.importorskip("ray", reason="pip install 'sight[ray]'")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_sight_serve_runtime_ray_starts_a_cluster_deploys_and_answers(tmp_path: Path) -> None:
    port = free_port()
    env = sight_env(tmp_path, SIGHT_RUNTIME__API__NUM_CPUS="0.25", SIGHT_RUNTIME__DETECTOR__NUM_CPUS="0.5",
                    SIGHT_RUNTIME__OCR__NUM_CPUS="0.5", SIGHT_RUNTIME__APP_NAME="sight-cli")
    env.pop("RAY_ADDRESS", None)
    proc = SightProcess(["serve", "--runtime", "ray", "--host", "127.0.0.1", "--port", str(port)], tmp_path, env)
    try:
        def deployed() -> bool:
            assert proc.proc.poll() is None, f"sight serve --runtime ray exited:\n{proc.output()}"
            return "replica(s) running" in proc.output()

        wait_until(deployed, "the application deployed", timeout=240, poll=0.5)
        out = proc.output()
        assert f"Sight on Ray Serve at http://127.0.0.1:{port} (application 'sight-cli')" in out
        assert "detect-nudenet-v1: HEALTHY, 1 replica(s) running" in out
        match = KEY_RE.search(out)
        assert match, out
        key = match.group(0)
        url = f"http://127.0.0.1:{port}"
        item = {"image_base64": base64.b64encode((IMAGES / "astronaut.png").read_bytes()).decode(), "is_yolo": True}
        r = httpx.post(f"{url}/api/v1/inference/predict/batch/v2", json={"api_key": key, "data": [item]}, timeout=120)
        assert r.status_code == 200, r.text
        (result,) = r.json()["result"]["items"]
        assert result["status"] == "done" and result["yolo"]["detections"][0]["name"] == "FACE_FEMALE", result
        models = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30).json()
        assert {m["name"]: m["state"]["state"] for m in models["models"]} == {"nudenet": "ready", "rapidocr": "ready"}
    finally:
        proc.stop()
    assert proc.proc.returncode == 0, proc.output()
