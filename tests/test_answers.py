"""Structured answers (API.md section 6) through the API, against real OpenAI-protocol servers on loopback:
one that enforces response_format, one that refuses it, one that answers invalid JSON, one that misreads a
confusable character, one that cites OCR lines that do not exist; pattern extraction with no LLM."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw, ImageFont

from sight.answers.schema import parse_schema
from sight.errors import InvalidSchemaError, LLMInvalidOutputError
from tests.helpers import image_bytes, png_bytes, v1_request
from tests.servers import FakeLLMServer

BATCH = "/api/v1/inference/predict/batch"
STREAM = "/api/v1/inference/predict/stream"
SERIAL = "SN-4X7Q-2291-B"  # serial-label.png: "Serial No: SN-4X7Q-2291-B" / "Model: ZX-900  Made in 2024"
SERIAL_PATTERN = "SN-[A-Z0-9]{4}-[0-9]{4}-[A-Z0-9]{1,2}"
PATTERN_SCHEMA = {"type": "object", "properties": {"serial_number": {"type": "string", "pattern": SERIAL_PATTERN}}}
FREE_SCHEMA = {"type": "object", "properties": {"serial_number": {"type": "string"}, "model": {"type": "string"}}}


def _label(*lines: str) -> bytes:
    """A plain label, as a printer would make it: black DejaVu Sans on white, 40 px."""
    font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 40)
    image = Image.new("RGB", (900, 90 + 70 * len(lines)), "white")
    draw = ImageDraw.Draw(image)
    for n, line in enumerate(lines):
        draw.text((40, 45 + 70 * n), line, fill="black", font=font)
    return png_bytes(image)


def _predict(client: TestClient, api_key: str, files: list[tuple[str, bytes]], meta: list[dict[str, Any]],
             **fields: Any) -> dict[str, Any]:
    if "response_schema" in fields and not isinstance(fields["response_schema"], str):
        fields["response_schema"] = json.dumps(fields["response_schema"])
    response = client.post(BATCH, **v1_request(files, meta, api_key=api_key, **fields))
    assert response.status_code == 200, response.text
    return response.json()["result"]


def _answers(fields: dict[str, Any], cite: str | None = None, lines: list[int] | None = None
             ) -> Any:
    """A structured answer: ``fields``, citing for ``cite`` the lines the prompt numbered that hold ``SERIAL``
    (or ``lines`` as given)."""
    def answer(body: dict[str, Any]) -> str:
        cited = lines if lines is not None else [n for n, text in enumerate(FakeLLMServer.ocr_lines(body), 1)
                                                 if SERIAL in text]
        return json.dumps({"fields": fields, "citations": {cite: cited} if cite else {}})
    return answer


def test_a_pattern_field_is_filled_from_the_ocr_with_no_llm(client: TestClient, api_key: str,
                                                            llm: FakeLLMServer) -> None:
    result = _predict(client, api_key, [("label.png", image_bytes("serial-label.png"))], [{}],
                      response_schema=PATTERN_SCHEMA)
    (item,) = result["items"]
    assert item["status"] == "done"
    assert item["fields"] == {"serial_number": SERIAL}  # the match, never the whole line
    (evidence,) = item["evidence"]["serial_number"]
    assert evidence["source"] == "ocr" and evidence["match"] == "exact"
    assert evidence["text"].replace(" ", "") == "SerialNo:" + SERIAL and evidence["confidence"] > 0.5
    line = next(ln for ln in item["ocr"]["lines"] if SERIAL in ln["text"])
    assert evidence["box"] == line["box"]  # in the original image's pixels: the OCR line's own box
    assert item["verified"] == {"serial_number": None}  # one reader alone
    assert item["ocr"] is not None and item["llm"] is None  # OCR ran for the pattern, and shows
    assert llm.requests == []
    assert result["fields"] == {"serial_number": SERIAL}
    assert result["evidence"]["serial_number"][0]["index"] == 0
    assert result["evidence"]["serial_number"][0]["filename"] == "label.png"
    assert result["conflicts"] == {}
    assert result["answer"] == f"serial_number: {SERIAL} (label.png)"


def test_clients_that_send_no_schema_see_three_null_keys(client: TestClient, api_key: str,
                                                         llm: FakeLLMServer) -> None:
    result = _predict(client, api_key, [("label.png", image_bytes("serial-label.png"))],
                      [{"is_ocr": True, "is_llm": True}], query="serial?")
    (item,) = result["items"]
    assert (item["fields"], item["evidence"], item["verified"]) == (None, None, None)
    assert "structured" not in item["llm"]
    assert item["llm"]["answer"] == result["answer"] == "The serial number is SN-4X7Q-2291-B."
    assert "response_format" not in llm.requests[0]["body"]
    assert not {"fields", "evidence", "verified", "conflicts"} & set(result)  # the request's result as before


def test_the_schema_goes_as_response_format_to_a_backend_that_enforces_it(client: TestClient, api_key: str,
                                                                          llm: FakeLLMServer) -> None:
    llm.mode = "schema_required"
    llm.answer = _answers({"serial_number": SERIAL, "model": "ZX-900"}, cite="serial_number")
    result = _predict(client, api_key, [("label.png", image_bytes("serial-label.png"))], [{"is_llm": True}],
                      query="find me the serial number", response_schema=FREE_SCHEMA)
    (item,) = result["items"]
    assert item["status"] == "done", item["error"]
    assert item["llm"]["structured"] == "schema"
    (request,) = llm.requests
    sent = request["body"]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"]
    assert sent["json_schema"]["schema"]["properties"]["fields"]["properties"]["serial_number"]["anyOf"][0] == \
        {"type": "string"}
    assert "find me the serial number" in FakeLLMServer.user_text(request["body"])
    assert item["fields"] == {"serial_number": SERIAL, "model": "ZX-900"}
    # Read by the LLM and, independently, by Sight's OCR: verified, with the OCR line as evidence.
    assert item["verified"] == {"serial_number": True, "model": True}
    assert item["evidence"]["serial_number"][0]["match"] == "exact"
    assert "ZX-900" in item["evidence"]["model"][0]["text"]


def test_a_backend_that_refuses_response_format_gets_the_schema_in_the_prompt(
        client: TestClient, api_key: str, llm: FakeLLMServer) -> None:
    llm.mode = "schema_refused"
    llm.answer = lambda _body: f'Sure! Here you are:\n```json\n{{"serial_number": "{SERIAL}"}}\n```'
    files = [("a.png", image_bytes("serial-label.png")), ("b.png", image_bytes("serial-label.png"))]
    result = _predict(client, api_key, files[:1], [{"is_llm": True}], response_schema=PATTERN_SCHEMA)
    (item,) = result["items"]
    assert item["status"] == "done", item["error"]
    assert item["llm"]["structured"] == "prompt"
    refused, prompted = llm.requests
    assert "response_format" in refused["body"] and "response_format" not in prompted["body"]
    assert "JSON Schema" in FakeLLMServer.user_text(prompted["body"])
    assert item["fields"] == {"serial_number": SERIAL} and item["verified"] == {"serial_number": True}
    # The refusal is remembered: the next item goes straight to the prompt.
    llm.requests.clear()
    item = _predict(client, api_key, files[1:], [{"is_llm": True}], response_schema=PATTERN_SCHEMA)["items"][0]
    assert item["llm"]["structured"] == "prompt" and len(llm.requests) == 1


def test_an_answer_invalid_twice_fails_the_item_keeping_the_raw_text_and_other_stages(
        client: TestClient, api_key: str, llm: FakeLLMServer) -> None:
    llm.answer = lambda _body: "The serial number is SN-4X7Q-2291-B, I think {not json"
    files = [("label.png", image_bytes("serial-label.png")), ("bus.jpg", image_bytes("bus.jpg"))]
    result = _predict(client, api_key, files, [{"is_llm": True, "is_yolo": True}, {"is_yolo": True}],
                      response_schema=PATTERN_SCHEMA)
    item, sibling = result["items"]
    assert item["status"] == "error" and item["error"]["code"] == "llm_invalid_output"
    assert item["llm"]["answer"] == "The serial number is SN-4X7Q-2291-B, I think {not json"
    assert item["llm"]["structured"] == "schema"
    assert item["yolo"] is not None and item["ocr"] is not None
    assert item["fields"] == {"serial_number": SERIAL}  # the pattern still reads the OCR
    first, repair = llm.requests  # one repair attempt, no more
    assert repair["body"]["messages"][-2]["content"] == item["llm"]["answer"]
    assert "does not fit" in repair["body"]["messages"][-1]["content"]
    assert sibling["status"] == "done" and sibling["fields"] == {"serial_number": None}


def test_a_repaired_answer_is_used(client: TestClient, api_key: str, llm: FakeLLMServer) -> None:
    answers = iter(['{"serial_number": 12}', json.dumps({"fields": {"serial_number": SERIAL}})])
    llm.answer = lambda _body: next(answers)
    result = _predict(client, api_key, [("label.png", image_bytes("serial-label.png"))], [{"is_llm": True}],
                      response_schema=FREE_SCHEMA)
    assert result["items"][0]["status"] == "done"
    assert result["items"][0]["fields"]["serial_number"] == SERIAL
    assert "serial_number" in llm.requests[1]["body"]["messages"][-1]["content"]  # the problem is named


@pytest.mark.parametrize("misread", ["SN-4X7Q-229I-B", "SN-4X7Q-2Z91-B", "SN-4X7Q-229l-8"])
def test_a_confusable_misreading_is_not_verified_and_the_evidence_holds_the_ocrs_reading(
        client: TestClient, api_key: str, llm: FakeLLMServer, misread: str) -> None:
    llm.answer = _answers({"serial_number": misread}, cite="serial_number")
    result = _predict(client, api_key, [("label.png", image_bytes("serial-label.png"))], [{"is_llm": True}],
                      response_schema=FREE_SCHEMA)
    (item,) = result["items"]
    assert item["fields"]["serial_number"] == misread  # never silently replaced
    assert item["verified"]["serial_number"] is False
    (evidence,) = item["evidence"]["serial_number"]
    assert evidence["match"] == "near" and SERIAL in evidence["text"].replace(" ", "")
    assert "verified" not in result["answer"].replace("not verified", "")


def test_a_pattern_field_misread_by_the_llm_takes_the_ocrs_match_unverified(client: TestClient, api_key: str,
                                                                             llm: FakeLLMServer) -> None:
    llm.answer = _answers({"serial_number": "SN-4X7Q-229I-B"})  # I fails [0-9]{4}
    item = _predict(client, api_key, [("label.png", image_bytes("serial-label.png"))], [{"is_llm": True}],
                    response_schema=PATTERN_SCHEMA)["items"][0]
    assert item["fields"] == {"serial_number": SERIAL}
    assert item["verified"] == {"serial_number": False}  # the two readings disagree
    assert item["evidence"]["serial_number"][0]["match"] == "exact"


def test_citations_of_ocr_lines_that_do_not_exist_are_ignored(client: TestClient, api_key: str,
                                                              llm: FakeLLMServer) -> None:
    llm.answer = _answers({"serial_number": SERIAL, "model": "ZX-900"}, cite="serial_number", lines=[0, 99, -3])
    item = _predict(client, api_key, [("label.png", image_bytes("serial-label.png"))], [{"is_llm": True}],
                    response_schema=FREE_SCHEMA)["items"][0]
    assert item["status"] == "done"
    (evidence,) = item["evidence"]["serial_number"]  # Sight's own finding, nothing for the made-up lines
    assert SERIAL in evidence["text"].replace(" ", "") and item["verified"]["serial_number"] is True


def test_a_cited_line_that_does_not_hold_the_value_counts_for_nothing(client: TestClient, api_key: str,
                                                                      llm: FakeLLMServer) -> None:
    llm.answer = _answers({"serial_number": "SN-9999-0000-Z"}, cite="serial_number")  # cites the serial's line
    item = _predict(client, api_key, [("label.png", image_bytes("serial-label.png"))], [{"is_llm": True}],
                    response_schema=FREE_SCHEMA)["items"][0]
    assert item["evidence"]["serial_number"] == [] and item["verified"]["serial_number"] is None


def test_nested_properties_have_dotted_paths(client: TestClient, api_key: str, llm: FakeLLMServer) -> None:
    schema = {"type": "object", "properties": {"plate": {"type": "object", "properties": {
        "serial": {"type": "string", "pattern": SERIAL_PATTERN}, "year": {"type": "integer"}}}}}
    llm.answer = _answers({"plate": {"serial": SERIAL, "year": 2024}})
    item = _predict(client, api_key, [("label.png", image_bytes("serial-label.png"))], [{"is_llm": True}],
                    response_schema=schema)["items"][0]
    assert item["fields"] == {"plate": {"serial": SERIAL, "year": 2024}}
    assert item["verified"] == {"plate.serial": True, "plate.year": True}
    assert "2024" in item["evidence"]["plate.year"][0]["text"]


def test_across_images_the_answer_names_the_image_it_came_from(client: TestClient, api_key: str,
                                                               llm: FakeLLMServer) -> None:
    files = [("bus.jpg", image_bytes("bus.jpg")), ("label.png", image_bytes("serial-label.png")),
             ("coffee.png", image_bytes("coffee.png"))]
    result = _predict(client, api_key, files, [{}, {}, {}], response_schema=PATTERN_SCHEMA,
                      query="find me the serial number from the images")
    assert [i["fields"] for i in result["items"]] == [{"serial_number": None}, {"serial_number": SERIAL},
                                                       {"serial_number": None}]
    assert result["fields"] == {"serial_number": SERIAL}
    assert {(e["index"], e["filename"]) for e in result["evidence"]["serial_number"]} == {(1, "label.png")}
    assert result["answer"] == f"serial_number: {SERIAL} (label.png)"

    none = _predict(client, api_key, [files[0], files[2]], [{}, {}], response_schema=PATTERN_SCHEMA)
    assert none["fields"] == {"serial_number": None} and none["evidence"] == {"serial_number": []}
    assert none["answer"] == "serial_number: not found"


def test_images_that_disagree_are_listed_as_conflicts_and_the_verified_value_wins(
        client: TestClient, api_key: str, llm: FakeLLMServer) -> None:
    other = "SN-8KD9-0415-QX"
    files = [("other.png", _label(f"S/N: {other}")), ("label.png", image_bytes("serial-label.png"))]
    llm.answer = lambda body: json.dumps({"fields": {"serial_number": SERIAL}})  # right for the second only
    result = _predict(client, api_key, files, [{}, {"is_llm": True}], response_schema=PATTERN_SCHEMA)
    first, second = result["items"]
    assert first["fields"] == {"serial_number": other} and first["verified"] == {"serial_number": None}
    assert second["verified"] == {"serial_number": True}
    assert result["fields"] == {"serial_number": SERIAL} and result["verified"] == {"serial_number": True}
    assert result["conflicts"] == {"serial_number": [
        {"index": 0, "filename": "other.png", "value": other, "verified": None},
        {"index": 1, "filename": "label.png", "value": SERIAL, "verified": True}]}


def test_a_metadata_schema_overrides_the_request_wide_one_and_the_stream_merges(client: TestClient,
                                                                                 api_key: str) -> None:
    model_schema = {"type": "object", "properties": {"model": {"type": "string", "pattern": "ZX-[0-9]+"}}}
    files = [("a.png", image_bytes("serial-label.png")), ("b.png", image_bytes("serial-label.png"))]
    meta = [{}, {"response_schema": model_schema}]
    body = v1_request(files, meta, api_key=api_key, response_schema=json.dumps(PATTERN_SCHEMA))
    with client.stream("POST", STREAM, **body) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    done = {line["index"]: line["result"] for line in lines if line["status"] == "done"}
    assert done[0]["fields"] == {"serial_number": SERIAL} and done[1]["fields"] == {"model": "ZX-900"}
    complete = lines[-1]
    assert complete["status"] == "complete"
    assert complete["fields"] == {"serial_number": SERIAL, "model": "ZX-900"}
    assert complete["answer"] == f"serial_number: {SERIAL} (a.png); model: ZX-900 (b.png)"


def test_v2_takes_a_schema_for_the_request_and_per_item(client: TestClient, api_key: str,
                                                        image_server: Any) -> None:
    import base64

    label = base64.b64encode(image_bytes("serial-label.png")).decode()
    body = {"api_key": api_key, "response_schema": PATTERN_SCHEMA,
            "data": [{"image_base64": label, "filename": "a.png"},
                     {"image_base64": label, "filename": "b.png", "response_schema": {
                         "type": "object", "properties": {"year": {"type": "string", "pattern": "20[0-9]{2}"}}}}]}
    result = client.post(BATCH + "/v2", json=body).json()["result"]
    assert [i["fields"] for i in result["items"]] == [{"serial_number": SERIAL}, {"year": "2024"}]


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


BAD_SCHEMAS = {
    "not a schema": {"type": "objekt", "properties": {"a": {"type": "string"}}},
    "not an object": {"type": "string"},
    "no properties": {"type": "object"},
    "not JSON Schema": {"type": "object", "properties": {"a": {"type": 12}}},
    "a backreference": {"type": "object", "properties": {"a": {"type": "string", "pattern": "(a)\\1"}}},
    "a lookahead": {"type": "object", "properties": {"a": {"type": "string", "pattern": "a(?=b)"}}},
    "too large": {"type": "object", "properties": {f"p{n}": {"type": "string", "description": "x" * 200}
                                                   for n in range(100)}},
    "too deep": _nested(9),
    "a remote reference": {"type": "object", "properties": {"a": {"$ref": "http://127.0.0.1:9/s.json"}}},
    "a dotted name": {"type": "object", "properties": {"a.b": {"type": "string"}}},
    "a dynamic reference": {"type": "object", "properties": {"a": {"$dynamicRef": "#/$defs/x"}}},
    "references that expand 4**14 times": {"type": "object", "properties": {"a": {"$ref": "#/$defs/l14"}}, "$defs": {
        "l0": {"type": "string"}, **{f"l{n}": {"anyOf": [{"$ref": f"#/$defs/l{n - 1}"}] * 4} for n in range(1, 15)}}},
    "too many patterns": {"type": "object", "properties": {f"p{n}": {"type": "string", "pattern": f"x{{{n}}}"}
                                                           for n in range(100)}},
    "a list": [1, 2],
}


@pytest.mark.parametrize("name", sorted(BAD_SCHEMAS))
def test_a_bad_schema_is_400_invalid_schema_before_any_work(client: TestClient, api_key: str,
                                                            llm: FakeLLMServer, name: str) -> None:
    schema = BAD_SCHEMAS[name]
    files = [("label.png", image_bytes("serial-label.png"))]
    for body in (v1_request(files, [{"is_llm": True}], api_key=api_key, response_schema=json.dumps(schema)),
                 v1_request(files, [{"is_llm": True, "response_schema": schema}], api_key=api_key)):
        response = client.post(BATCH, **body)
        assert response.status_code == 400, (name, response.text)
        assert response.json()["detail"]["code"] == "invalid_schema"
    v2 = {"api_key": api_key, "response_schema": schema, "data": [{"image_url": "http://127.0.0.1:9/a.png"}]}
    response = client.post(BATCH + "/v2", json=v2)
    assert response.status_code == 400 and response.json()["detail"]["code"] == "invalid_schema"
    assert llm.requests == []


def test_an_unparsable_schema_field_is_invalid_schema(client: TestClient, api_key: str) -> None:
    files = [("label.png", image_bytes("serial-label.png"))]
    response = client.post(BATCH, **v1_request(files, [{}], api_key=api_key, response_schema="{not json"))
    assert response.status_code == 400 and response.json()["detail"]["code"] == "invalid_schema"


def test_a_pathological_pattern_never_stalls_the_server(client: TestClient, api_key: str,
                                                        llm: FakeLLMServer) -> None:
    # (a+)+$ backtracks exponentially in Python's re on "aaa...a!": 2**40 steps here. RE2 is linear, and
    # jsonschema's own pattern check (Python's re) is never used: this test would not end otherwise.
    evil = "a" * 40 + "!"
    schema = {"type": "object", "properties": {"word": {"type": "string", "pattern": "(a+)+$"}},
              "patternProperties": {"(x+)+$": {"type": "string"}}}
    parsed = parse_schema(schema)
    problems = parsed.errors({"word": evil, "x" * 40 + "!": 1, "xx": 2})  # "xx" is no string
    assert len(problems) == 2 and problems[0].startswith("word: ")
    assert not parsed.fits(parsed.fields[0], evil) and parsed.fits(parsed.fields[0], "aaa")
    llm.answer = lambda _body: json.dumps({"fields": {"word": evil}})
    item = _predict(client, api_key, [("w.png", _label(evil))], [{"is_llm": True}], response_schema=schema)["items"][0]
    assert item["status"] == "done" and item["fields"]["word"] in (None, "a" * 40)


def test_schemas_and_their_errors_cross_processes_whole() -> None:
    schema = parse_schema(PATTERN_SCHEMA)
    again = pickle.loads(pickle.dumps(schema))
    assert again.raw == PATTERN_SCHEMA and again.fields[0].pattern.search(SERIAL)
    error = pickle.loads(pickle.dumps(LLMInvalidOutputError("bad", "raw text", "fake-vl", "prompt")))
    assert (error.message, error.answer, error.model, error.structured) == ("bad", "raw text", "fake-vl", "prompt")
    with pytest.raises(InvalidSchemaError):
        parse_schema({"type": "object", "properties": {"a": {"pattern": "(?<=a)b"}}})


def test_batches_and_the_analyze_deployment_take_a_schema(client: TestClient, api_key: str,
                                                          llm: FakeLLMServer) -> None:
    import base64

    headers = {"Authorization": f"Bearer {api_key}"}
    label = base64.b64encode(image_bytes("serial-label.png")).decode()
    llm.answer = _answers({"serial_number": SERIAL, "model": None})
    answer = client.post("/v1/analyze/latest", headers=headers, json={"data": [label, "the serial?", FREE_SCHEMA]})
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert data["fields"] == {"serial_number": SERIAL, "model": None}
    assert data["verified"] == {"serial_number": True, "model": None} and data["structured"] == "schema"
    bad = client.post("/v1/analyze/latest", headers=headers, json={"data": [label, "q", {"type": "objekt"}]})
    assert bad.status_code == 400 and bad.json()["detail"]["code"] == "invalid_schema"
    plain = client.post("/v1/analyze/latest", headers=headers, json={"data": [label, "the serial?"]}).json()
    assert set(plain["data"]) == {"answer", "model"}  # no schema: as before

    batch = client.post("/v1/batches", headers=headers, json={"name": "serials"}).json()["batch_id"]
    requests = f"/v1/batches/{batch}/requests"
    bad = client.post(requests, headers=headers, json={"batch_requests": [
        {"batch_request": {"vision_predict": {"image_base64": label, "response_schema": {"type": "objekt"}}}}]})
    assert bad.status_code == 400 and bad.json()["detail"]["code"] == "invalid_schema"
    assert client.get(requests, headers=headers).json()["batch_request_metadata"] == []
    client.post(requests, headers=headers, json={"batch_requests": [{"batch_request_id": "label", "batch_request": {
        "vision_predict": {"image_base64": label, "response_schema": PATTERN_SCHEMA}}}]}).raise_for_status()
    runner = client.app.state.services.new_runner()  # type: ignore[attr-defined]
    client.portal.call(runner.run_until_idle)  # type: ignore[union-attr]
    (result,) = client.get(f"/v1/batches/{batch}/results", headers=headers).json()["results"]
    found = result["batch_result"]["response"]["vision_predict"]
    assert found["fields"] == {"serial_number": SERIAL} and found["evidence"]["serial_number"][0]["match"] == "exact"


def test_pattern_extraction_reads_serials_on_nameplates_in_photos(client: TestClient, api_key: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The extraction bench's generator (bench/extraction.py): serials in four formats, one full of look-alike
    characters (S/5, B/8, Z/2), on tilted, blurred nameplates pasted into 12 MP and 2 MP photos, as JPEG."""
    import sys

    from tests.conftest import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    sys.modules.pop("extraction", None)
    from extraction import make_plates  # type: ignore[import-not-found]

    plates = make_plates(8, seed=3)
    assert len({p.form for p in plates}) == 4
    read = 0
    for plate in plates:
        schema = {"type": "object", "properties": {"serial_number": {"type": "string", "pattern": plate.pattern}}}
        item = _predict(client, api_key, [("plate.jpg", plate.jpeg)], [{}], response_schema=schema)["items"][0]
        got = item["fields"]["serial_number"]
        assert got in (plate.serial, None), (plate.form, plate.serial, got)  # never a wrong value
        read += got == plate.serial
        if got is not None:
            assert item["evidence"]["serial_number"][0]["match"] == "exact"
    assert read >= 7, read


def test_a_repair_the_backend_refuses_fails_the_item_keeping_the_first_answer(client: TestClient, api_key: str,
                                                                              llm: FakeLLMServer) -> None:
    llm.answer = lambda _body: "not JSON at all"
    llm.mode_for = lambda body: "400" if len(body["messages"]) > 2 else "ok"  # the repair is refused
    item = _predict(client, api_key, [("label.png", image_bytes("serial-label.png"))], [{"is_llm": True}],
                    response_schema=PATTERN_SCHEMA)["items"][0]
    assert item["error"]["code"] == "llm_invalid_output", item["error"]
    assert item["llm"]["answer"] == "not JSON at all" and item["llm"]["usage"]["completion_tokens"] == 7
    assert item["fields"] == {"serial_number": SERIAL}


def test_json_nested_past_the_stack_is_an_invalid_answer_not_an_internal_error(
        client: TestClient, api_key: str, llm: FakeLLMServer) -> None:
    llm.answer = lambda _body: '{"fields": ' + "[" * 3000
    item = _predict(client, api_key, [("label.png", image_bytes("serial-label.png"))], [{"is_llm": True}],
                    response_schema=FREE_SCHEMA)["items"][0]
    assert item["error"]["code"] == "llm_invalid_output" and item["llm"]["answer"].startswith('{"fields": [[')


def test_ocr_that_cannot_read_the_image_leaves_an_llm_item_unchecked_not_failed(
        client: TestClient, api_key: str, llm: FakeLLMServer) -> None:
    strip = png_bytes(Image.new("RGB", (2000, 10), "white"))  # OCR refuses 200:1; the LLM takes it
    llm.answer = _answers({"serial_number": SERIAL, "model": None})
    item = _predict(client, api_key, [("strip.png", strip)], [{"is_llm": True}], response_schema=FREE_SCHEMA
                    )["items"][0]
    assert item["status"] == "done", item["error"]
    assert item["fields"]["serial_number"] == SERIAL and item["verified"]["serial_number"] is None
    assert item["ocr"] is None
    asked = _predict(client, api_key, [("strip.png", strip)], [{"is_llm": True, "is_ocr": True}],
                     response_schema=FREE_SCHEMA)["items"][0]
    assert asked["error"]["code"] == "invalid_image"  # OCR asked for: its failure is the item's


def test_an_llm_value_that_fits_the_pattern_but_differs_shows_the_ocrs_reading(
        client: TestClient, api_key: str, llm: FakeLLMServer) -> None:
    llm.answer = _answers({"serial_number": "SN-9999-1111-AB"})
    item = _predict(client, api_key, [("label.png", image_bytes("serial-label.png"))], [{"is_llm": True}],
                    response_schema=PATTERN_SCHEMA)["items"][0]
    assert item["fields"] == {"serial_number": "SN-9999-1111-AB"} and item["verified"] == {"serial_number": False}
    (evidence,) = item["evidence"]["serial_number"]
    assert SERIAL in evidence["text"].replace(" ", "")


def test_an_object_valued_property_is_one_field_and_survives_the_merge(client: TestClient, api_key: str,
                                                                       llm: FakeLLMServer) -> None:
    schema = {"type": "object", "properties": {"extra": {"type": "object"}, "serial_number": {"type": "string"}}}
    llm.answer = _answers({"extra": {"colour": "white", "lines": 2}, "serial_number": SERIAL})
    result = _predict(client, api_key, [("label.png", image_bytes("serial-label.png"))], [{"is_llm": True}],
                      response_schema=schema)
    assert result["items"][0]["verified"].keys() == {"extra", "serial_number"}
    assert result["fields"] == {"extra": {"colour": "white", "lines": 2}, "serial_number": SERIAL}


def test_a_request_mixing_schema_and_prose_items_still_condenses_the_prose(client: TestClient, api_key: str,
                                                                           llm: FakeLLMServer) -> None:
    files = [("label.png", image_bytes("serial-label.png")), ("a.png", image_bytes("astronaut.png")),
             ("c.png", image_bytes("coffee.png"))]
    meta = [{"response_schema": PATTERN_SCHEMA}, {"is_llm": True}, {"is_llm": True}]
    result = _predict(client, api_key, files, meta, query="what is in the images?")
    assert result["answer"].startswith("CONDENSED:")
    assert result["fields"] == {"serial_number": SERIAL}
