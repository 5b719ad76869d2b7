"""Every ```bash and ```python block of README.md runs against a real ``sight serve``, or says why it cannot.

A block is marked by an HTML comment on the line before its fence (GitHub does not render it):

    <!-- readme-test: skip (why) -->            not run; the reason is required
    <!-- readme-test: needs internet -->        its http(s) URLs go to a loopback ImageServer over
                                                ../shared/images (by file name), and it must fetch one
    <!-- readme-test: needs llm -->             it must reach the vision LLM (a loopback FakeLLMServer)
    <!-- readme-test: needs internet, llm -->   both
    <!-- readme-test: drop PREFIX (why) -->     its lines that start with PREFIX are not run

Blocks in the sections this test does not mark (Quick start and the model and LLM set-up) take the same
verdicts from ``UNMARKED``; any other block runs as written. Each block runs on its own with
``bash -e -o pipefail`` in a throwaway copy of the checkout's layout (``../shared`` beside it, so files the
examples write never land in the real checkout), with ``KEY`` exported and ``http://127.0.0.1:8000`` pointing
at the test server. Inside it ``curl`` is a function that adds ``--fail-with-body`` and keeps every response
body for the checks below: each must be JSON (or NDJSON) with no error in it, and ``CHECKS`` looks closer.
A ```python block runs with the same environment and ``KEY = os.environ["KEY"]`` set before it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import IMAGES, ROOT, SHARED, YOLO11N_UNTRAINED
from tests.processes import KEY_RE, SIGHT, SightServer, sight_env
from tests.servers import FakeLLMServer, ImageServer

pytestmark = pytest.mark.slow  # starts `sight` subprocesses

README = ROOT / "README.md"
LOCAL = "http://127.0.0.1:8000"  # where the README's examples expect `sight serve`
SERIAL = "SN-4X7Q-2291-B"
BLOCK_TIMEOUT = 90  # seconds for one block; the slowest (the CLI batch of 8 images) takes about 10

# Verdicts for blocks in sections another engineer owns, keyed by how the block starts. Each key must match
# exactly one block without a marker of its own (a stale entry fails the accounting test).
UNMARKED: dict[str, str] = {}  # block prefix -> verdict, for blocks that cannot carry a marker
# Placeholders the README uses for values only a running system has.
PLACEHOLDERS = {"key_ab12cd34ef56": "spare_key_id"}
# Sections whose every block must run: the API examples and the key commands.
MUST_RUN = ("API by example", "Keys")

MARKER = re.compile(r"<!--\s*readme-test:\s*(.*?)\s*-->")
URL = re.compile(r"https?://[^\s\"'/?]+")
PREAMBLE = r"""
# Added by tests/test_readme.py: HTTP errors fail the block (showing the body); every body is kept, in order.
curl() {
  local n
  n=$(find "$READMETEST_RESPONSES" -type f | wc -l)
  command curl --fail-with-body --show-error --max-time 60 --noproxy '*' "$@" |
    tee "$READMETEST_RESPONSES/$(printf %03d "$n")"
}
"""


@dataclass(frozen=True)
class Verdict:
    skip: str | None = None
    needs: frozenset[str] = frozenset()
    drop: tuple[str, str] | None = None  # (line prefix, why)

    @classmethod
    def parse(cls, text: str) -> Verdict:
        if match := re.fullmatch(r"skip \((.+)\)", text):
            return cls(skip=match.group(1).strip())
        if match := re.fullmatch(r"drop (.+?) \((.+)\)", text):
            return cls(drop=(match.group(1), match.group(2)))
        if match := re.fullmatch(r"needs ((?:internet|llm)(?:, (?:internet|llm))*)", text):
            return cls(needs=frozenset(match.group(1).split(", ")))
        raise AssertionError(f"unknown readme-test marker {text!r}: skip (why), needs internet|llm, "
                             "or drop PREFIX (why)")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    section: str
    code: str
    marker: str | None
    lang: str = "bash"

    @property
    def name(self) -> str:
        """``L131-curl-s-api-v1-inference-predict-batch``: the fence's line and how the block starts."""
        start = self.code.replace(LOCAL, "").split("\n", 1)[0]
        return f"L{self.line}-" + re.sub(r"[^A-Za-z0-9]+", "-", start).strip("-")[:40].rstrip("-")

    @property
    def verdict(self) -> Verdict:
        if self.marker is not None:
            return Verdict.parse(self.marker)
        for start, text in UNMARKED.items():
            if self.code.startswith(start):
                return Verdict.parse(text)
        return Verdict()


def readme_blocks() -> list[Block]:
    blocks: list[Block] = []
    section, previous, start, marker, lang = "", "", 0, None, "bash"
    code: list[str] | None = None
    for n, line in enumerate(README.read_text().splitlines(), 1):
        if code is not None:
            if line.startswith("```"):
                blocks.append(Block(start, section, "\n".join(code) + "\n", marker, lang))
                code = None
            else:
                code.append(line)
            continue
        if line.startswith("## "):
            section = line[3:].strip()
        if line.strip() in ("```bash", "```python"):
            match = MARKER.fullmatch(previous.strip())
            code, start, marker = [], n, match.group(1) if match else None
            lang = line.strip().removeprefix("```")
        assert not re.match(r"```\s*(sh|shell|console|zsh)\s*$", line), f"README line {n}: fence it as ```bash"
        if line.strip():
            previous = line
    return blocks


BLOCKS = readme_blocks()
RUNNABLE = [b for b in BLOCKS if b.verdict.skip is None]


@dataclass
class Stage:
    """The test server, its loopback stand-ins for the internet and the LLM, and the keys a block may use."""

    server: SightServer
    env: dict[str, str]
    llm: FakeLLMServer
    images: ImageServer
    key: str
    spare_key: str
    spare_key_id: str


@dataclass
class Response:
    body: str
    values: list[Any]  # one JSON value, or one per NDJSON line

    @property
    def json(self) -> Any:
        assert len(self.values) == 1, self.body[:500]
        return self.values[0]


@dataclass
class Run:
    block: Block
    stage: Stage
    checkout: Path
    stdout: str
    responses: list[Response] = field(default_factory=list)
    llm_calls: int = 0
    fetches: list[str] = field(default_factory=list)


def _parse(body: str) -> Response:
    try:
        return Response(body, [json.loads(body)])
    except ValueError:
        pass
    try:
        return Response(body, [json.loads(line) for line in body.splitlines() if line.strip()])
    except ValueError as exc:
        raise AssertionError(f"a response is neither JSON nor NDJSON ({exc}): {body[:500]!r}") from None


BAD_STATUS = ("error", "failed", "BadRequest", "InternalError")


def problems(value: Any, path: str = "$") -> Iterator[str]:
    """Every error a response carries: a request-level `detail`, family 1's `code` 1, an item or row error, a
    failed status."""
    if isinstance(value, dict):
        for k, v in value.items():
            here = f"{path}.{k}"
            if k in ("detail", "error", "errors", "error_message") and v:
                yield f"{here} = {json.dumps(v)[:300]}"
            elif (k == "code" and path == "$" and v != 0) or (k in ("status", "state") and v in BAD_STATUS):
                yield f"{here} = {v!r}"
            yield from problems(v, here)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from problems(v, f"{path}[{i}]")


def adapt(block: Block, stage: Stage) -> str:
    """The block as the test runs it: on the test server, its URLs on loopback, placeholders filled in."""
    verdict = block.verdict
    code = block.code.replace(LOCAL, stage.server.url)
    if verdict.drop:
        code = "\n".join(line for line in code.splitlines() if not line.startswith(verdict.drop[0])) + "\n"
    elsewhere = [u for u in URL.findall(code) if u != stage.server.url]
    if "internet" in verdict.needs:
        assert elsewhere, f"{block.name}: marked `needs internet` but names no URL"
        code = URL.sub(lambda m: m.group(0) if m.group(0) == stage.server.url else stage.images.origin, code)
    else:
        assert not elsewhere, f"{block.name}: reaches {elsewhere}: mark it <!-- readme-test: needs internet -->"
    for placeholder, attr in PLACEHOLDERS.items():
        code = code.replace(placeholder, getattr(stage, attr))
    return code


def run_block(block: Block, stage: Stage, tmp: Path) -> Run:
    checkout, responses = tmp / "main", tmp / "responses"
    checkout.mkdir()
    responses.mkdir()
    (tmp / "shared").symlink_to(SHARED, target_is_directory=True)
    if block.lang == "python":
        script = tmp / "block.py"
        script.write_text('import os\nKEY = os.environ["KEY"]  # added by tests/test_readme.py\n' + adapt(block, stage))
        command = [sys.executable, str(script)]
    else:
        script = tmp / "block.sh"
        script.write_text(PREAMBLE + adapt(block, stage))
        command = ["bash", "-e", "-o", "pipefail", str(script)]
    env = {**stage.env, "KEY": stage.key, "SIGHT_CLIENT__URL": stage.server.url,
           "READMETEST_RESPONSES": str(responses), "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    llm_before, fetches_before = len(stage.llm.requests), len(stage.images.hits)
    # Its own process group, so a block that overruns goes down with everything it started.
    proc = subprocess.Popen(command, cwd=checkout, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"{block.name} ran past {BLOCK_TIMEOUT}s\n{stdout[-3000:]}\n{stderr[-3000:]}") from None
    assert proc.returncode == 0, (f"{block.name} exited {proc.returncode}\n--- stdout\n{stdout[-3000:]}\n"
                                  f"--- stderr\n{stderr[-3000:]}")
    run = Run(block, stage, checkout, stdout, llm_calls=len(stage.llm.requests) - llm_before,
              fetches=stage.images.hits[fetches_before:])
    run.responses = [_parse(p.read_text()) for p in sorted(responses.iterdir())]
    return run


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    work = tmp_path_factory.mktemp("readme-server")
    llm, images = FakeLLMServer(), ImageServer(IMAGES)
    with llm, images:
        env = sight_env(work, **{
            "SIGHT_YOLO__MODELS": json.dumps({"yolo11n": str(YOLO11N_UNTRAINED)}),
            "SIGHT_YOLO__DEFAULT_MODEL": "yolo11n",
            "SIGHT_LLM__BASE_URL": llm.url, "SIGHT_LLM__MODEL": "fake-vl",
            "SIGHT_FETCH__ALLOW_NETWORKS": '["127.0.0.0/8"]',
        })
        server = SightServer(work, env)
        try:
            key = server.first_key()
            assert key, server.output()
            spare = subprocess.run([*SIGHT, "keys", "create", "--team", "readme-spare"], cwd=work, env=env,
                                   capture_output=True, text=True, timeout=60, check=True).stdout
            spare_key = KEY_RE.search(spare)
            assert spare_key, spare
            key_id = re.search(r"key_[a-z0-9]{12}", spare_key.group(0))
            assert key_id
            yield Stage(server, env, llm, images, key, spare_key.group(0), key_id.group(0))
        finally:
            server.stop()


# What each example must show beyond "no error anywhere", keyed by a piece of its code.

def _items(run: Run) -> list[dict[str, Any]]:
    assert len(run.responses) == 1
    body = run.responses[0].json
    assert body["code"] == 0 and body["result"]["summary"]["error"] == 0, body
    return list(body["result"]["items"])


def check_v1(run: Run) -> None:
    bus, label = _items(run)
    assert bus["status"] == "done" and isinstance(bus["yolo"]["detections"], list), bus
    assert bus["yolo"]["model"] == "yolo11n", bus
    assert f"Serial No: {SERIAL}" in label["ocr"]["text"], label  # the README quotes it, spaces kept


def check_v2(run: Run) -> None:
    bus, label = _items(run)
    assert bus["yolo"] is not None and label["filename"] == "label.png", (bus, label)
    assert SERIAL in label["ocr"]["text"], label
    assert run.fetches == ["/images/bus.jpg"], run.fetches


def check_stream(run: Run) -> None:
    assert len(run.responses) == 2
    for response in run.responses:
        lines = response.values
        assert lines[-1]["status"] == "complete", lines
        assert lines[-1]["summary"] == {"total": 1, "done": 1, "error": 0}, lines[-1]
        done = [line for line in lines if line["status"] == "done"]
        assert len(done) == 1 and done[0]["result"]["yolo"] is not None, lines


def check_batches(run: Run) -> None:
    created, added, status, results, cancelled = (r.json for r in run.responses)
    batch_id = created["batch_id"]
    assert added == {"batch_request_ids": ["label-1"]}, added
    assert status["batch_id"] == batch_id and status["state"]["num_requests"] == 1, status
    # The batch runs in the background: label-1 may have finished by now or not, but only label-1.
    assert {r["batch_request_id"] for r in results["results"]} <= {"label-1"}, results
    assert cancelled["batch_id"] == batch_id and cancelled["status"] in ("cancelled", "ended"), cancelled


def check_batches_cli(run: Run) -> None:
    assert "ended" in run.stdout, run.stdout
    lines = [json.loads(line) for line in (run.checkout / "results.jsonl").read_text().splitlines()]
    folder = [p for p in IMAGES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    assert len(lines) == len(folder) + 1, lines  # every image of the folder, and the URL
    items = [line["batch_result"]["response"]["vision_predict"] for line in lines]
    for item in items:
        assert not list(problems(item)) and item["yolo"] and item["ocr"] and item["llm"]["answer"], item
    answers = {item["filename"]: item["llm"]["answer"] for item in items}
    assert SERIAL in answers["serial-label.png"], answers
    assert run.llm_calls >= len(items) and run.fetches == ["/images/bus.jpg"], (run.llm_calls, run.fetches)


def check_deployments(run: Run) -> None:
    single, rows = (r.json for r in run.responses)
    assert isinstance(single["data"], list), single
    assert [row[0] for row in rows["data"]] == [1, 2], rows  # sorted by id, as the README's comment says
    assert all(isinstance(row[1], list) for row in rows["data"]), rows
    assert run.fetches == ["/images/bus.jpg"], run.fetches


def check_models(run: Run) -> None:
    listing, predict, one = (r.json for r in run.responses)
    assert {"yolo11n", "rapidocr"} <= {m["name"] for m in listing["models"]}, listing
    statuses = [(p["model_name"], p["status"]) for p in predict["predictions"]]
    assert statuses == [("yolo11n", "Success"), ("rapidocr", "Success")], predict
    assert SERIAL in json.dumps(predict["predictions"][1]["prediction"]), predict
    assert (one["model_name"], one["status"]) == ("yolo11n", "Success"), one
    assert run.fetches == ["/images/bus.jpg"], run.fetches


def check_keys(run: Run) -> None:
    created = KEY_RE.search(run.stdout)
    assert created and "acme" in run.stdout and f"revoked {run.stage.spare_key_id}" in run.stdout, run.stdout
    url = run.stage.server.url + "/v1/models"
    assert httpx.get(url, headers={"Authorization": f"Bearer {created.group(0)}"}, timeout=10).status_code == 200
    assert httpx.get(url, headers={"Authorization": f"Bearer {run.stage.spare_key}"}, timeout=10).status_code == 401


def check_predict_cli(run: Run) -> None:
    assert f"Serial No: {SERIAL}" in run.stdout, run.stdout  # the OCR line, spaces kept, in the table
    saved = run.checkout / "annotated"
    assert sorted(p.name for p in saved.iterdir()) == [
        "astronaut.json", "astronaut.png", "serial-label.json", "serial-label.png"], list(saved.iterdir())
    label = json.loads((saved / "serial-label.json").read_text())
    assert SERIAL in json.dumps(label), label


def check_python_client(run: Run) -> None:
    statuses = run.stdout.split()
    assert statuses[0] == "processing" and statuses[-1] == "complete" and "done" in statuses, run.stdout
    assert run.fetches and set(run.fetches) == {"/images/bus.jpg"}, run.fetches


def check_first_answer(run: Run) -> None:
    assert SERIAL in run.stdout and "unchecked" in run.stdout, run.stdout  # the field, found by OCR alone


def check_structured(run: Run) -> None:
    bus, label = _items(run)
    assert bus["fields"] == {"serial_number": None, "year": None}, bus
    assert label["fields"] == {"serial_number": SERIAL, "year": "2024"}, label
    assert label["evidence"]["serial_number"][0]["text"] == f"Serial No: {SERIAL}", label
    result = run.responses[0].json["result"]
    assert result["answer"] == f"serial_number: {SERIAL} (serial-label.png); year: 2024 (serial-label.png)", result


def check_python_fields(run: Run) -> None:
    assert run.stdout.startswith(SERIAL) and f"Serial No: {SERIAL}" in run.stdout, run.stdout


def check_models_cli(run: Run) -> None:
    assert "yolo11n" in run.stdout and "rapidocr" in run.stdout, run.stdout


CHECKS: dict[str, Callable[[Run], None]] = {
    "/predict/batch \\": check_v1,
    "/predict/batch/v2": check_v2,
    "/predict/stream": check_stream,
    "/v1/batches": check_batches,
    "sight batches create": check_batches_cli,
    "/v1/detect/latest": check_deployments,
    "/v1/models ": check_models,
    "sight keys create": check_keys,
    "sight models list": check_models_cli,
    "sight predict ../shared/images/astronaut.png": check_predict_cli,
    "--field serial_number=": check_first_answer,
    "response_schema={": check_structured,
    "from sight.client import Client, ItemOptions": check_python_client,
    "response_schema=Label": check_python_fields,
}


def _checks_for(block: Block) -> list[Callable[[Run], None]]:
    return [check for piece, check in CHECKS.items() if piece in block.code]


def test_readme_blocks_all_run_or_say_why() -> None:
    assert BLOCKS, "no ```bash blocks found in README.md"
    for block in BLOCKS:
        verdict = block.verdict  # an unknown marker fails here
        assert verdict.skip is None or len(verdict.skip) > 5, f"{block.name}: a skip needs its reason"
        if block.section in MUST_RUN:
            assert verdict.skip is None and verdict.drop is None, f"{block.name}: {block.section!r} runs whole"
    for start in UNMARKED:
        matches = [b for b in BLOCKS if b.code.startswith(start)]
        assert len(matches) == 1, f"UNMARKED[{start!r}] matches {len(matches)} blocks"
        assert matches[0].marker is None, f"{matches[0].name} has a marker now: drop UNMARKED[{start!r}]"
    # Every API example runs, so the test can never pass by skipping them.
    api = README.read_text().split("## API by example", 1)[1].split("\n## ", 1)[0]
    examples = re.findall(r"^\*\*[^*\n]+:\*\*$", api, re.M)
    assert len(examples) >= 6, examples
    assert len(RUNNABLE) >= len(examples) + 2, [b.name for b in RUNNABLE]  # + the CLI batches and the keys
    for piece in CHECKS:
        assert sum(piece in b.code for b in RUNNABLE) == 1, f"CHECKS[{piece!r}] must match one runnable block"


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.name)
def test_readme_block_runs(block: Block, stage: Stage, tmp_path: Path) -> None:
    run = run_block(block, stage, tmp_path)
    for i, response in enumerate(run.responses):
        found = [p for value in response.values for p in problems(value)]
        assert not found, f"{block.name}: response {i} carries errors: {found}"
    if "internet" in block.verdict.needs:
        assert run.fetches, f"{block.name}: marked `needs internet` but fetched nothing"
    assert (run.llm_calls > 0) == ("llm" in block.verdict.needs), \
        f"{block.name}: {run.llm_calls} LLM calls, but marked needs={sorted(block.verdict.needs)}"
    checks = _checks_for(block)
    assert checks, f"{block.name}: add to CHECKS what this example must show"
    for check in checks:
        check(run)
