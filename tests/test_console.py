"""The web console in a real browser: Debian's Chromium, headless, driven by Selenium and Debian's chromedriver,
against the app served in process (real detector, real OCR, the fake LLM on loopback).

Screenshots of every view go to ``test-artifacts/console/`` at the repository root."""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from sight.api.app import create_app
from sight.config import FetchSettings, Settings
from sight.engines.base import Detector, OcrEngine
from sight.models.registry import EngineRegistry
from tests.conftest import IMAGES, ROOT, nudenet_path
from tests.servers import FakeLLMServer, ImageServer, LiveServer

CHROMIUM = Path(os.environ.get("SIGHT_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("SIGHT_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
ARTIFACTS = ROOT / "test-artifacts" / "console"
WAIT = 60.0  # seconds any one DOM condition may take (OCR on two slow CPUs included)
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
SERIAL = "SN-4X7Q-2291-B"  # serial-label.png: "Serial No: SN-4X7Q-2291-B" / "Model: ZX-900  Made in 2024"
SERIAL_PATTERN = "SN-[A-Z0-9]{4}-[0-9]{4}-[A-Z0-9]{1,2}"

@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium with a fresh profile; fails the test on any SEVERE browser console entry. A missing
    browser fails each console test with what to install (scripts/test installs it), never the whole run."""
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.fail("the console tests need Debian's browser: apt-get install chromium chromium-driver "
                    "(scripts/test installs it)", pytrace=False)

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1280,900", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(tmp_path / "downloads"),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver: Selenium Manager would try to download one.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, f"browser console errors: {severe}"
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def artifacts(request: pytest.FixtureRequest) -> Path:
    """A fresh ``test-artifacts/console/``, named on the terminal (past output capture)."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\nconsole screenshots: {ARTIFACTS}")
    return ARTIFACTS


def _key(live: LiveServer) -> str:
    key, _ = live.call(live.app.state.services.keys.create_key, "team-console")
    return str(key)


def _until(driver: WebDriver, condition: Callable[[WebDriver], Any], timeout: float = WAIT) -> Any:
    return WebDriverWait(driver, timeout).until(condition)


def _open(driver: WebDriver, live: LiveServer, key: str, view: str = "predict") -> None:
    driver.get(live.url + "/")
    _until(driver, lambda d: d.find_element(By.ID, "key-state").text == "No key")
    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.ID, "key-save").click()
    _until(driver, lambda d: d.find_element(By.ID, "key-state").text == "Key set for this tab")
    if view != "predict":
        driver.find_element(By.CSS_SELECTOR, f'.tab[data-view="{view}"]').click()


def _screenshot(driver: WebDriver, folder: Path, name: str, phone: bool = False) -> Path:
    """A full-page PNG, at desktop width or as a 390x844 phone (which must not scroll sideways)."""
    if phone:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    try:
        if phone:  # readable on a phone: nothing wider than the screen
            assert driver.execute_script("return document.documentElement.scrollWidth") <= PHONE["width"]
        size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = driver.execute_cdp_cmd("Page.captureScreenshot",
                                      {"format": "png", "captureBeyondViewport": True, "clip": clip})
    finally:
        if phone:
            driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    path = folder / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def _pick(driver: WebDriver, input_id: str, paths: list[Path]) -> None:
    driver.find_element(By.ID, input_id).send_keys("\n".join(str(p) for p in paths))


def _drop(driver: WebDriver, zone_id: str, paths: list[Path]) -> None:
    """Drop files on a drop zone, as a drag from the desktop does: a drop event whose DataTransfer holds them."""
    files = [(p.name, mimetypes.guess_type(p.name)[0], base64.b64encode(p.read_bytes()).decode()) for p in paths]
    driver.execute_script("""
        const [zone, files] = arguments;
        const transfer = new DataTransfer();
        for (const [name, type, b64] of files) {
          transfer.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name, { type }));
        }
        for (const kind of ["dragover", "drop"]) {
          zone.dispatchEvent(new DragEvent(kind, { dataTransfer: transfer, bubbles: true, cancelable: true }));
        }""", driver.find_element(By.ID, zone_id), files)


def _has_ink(driver: WebDriver, canvas: WebElement) -> bool:
    return bool(driver.execute_script("""
        const canvas = arguments[0];
        const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        return pixels.some((value, i) => i % 4 === 3 && value > 0);""", canvas))


def _card(driver: WebDriver, name: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, f'.card[data-name="{name}"]')


def _api_boxes(live: LiveServer, key: str, image: Path, **form: str) -> dict[str, Any]:
    """The same image through POST /api/v1/inference/predict/batch: the API's own boxes."""
    r = httpx.post(live.url + "/api/v1/inference/predict/batch", headers={"Authorization": f"Bearer {key}"},
                   files=[("files", (image.name, image.read_bytes(), "image/png"))],
                   data={"metadata": json.dumps({"is_yolo": True}), **form}, timeout=60)
    assert r.status_code == 200, r.text
    item: dict[str, Any] = r.json()["result"]["items"][0]
    return item


def test_console_predict_streams_annotated_cards_and_item_errors(
        browser: WebDriver, live: LiveServer, llm: FakeLLMServer, tmp_path: Path, artifacts: Path) -> None:
    key = _key(live)
    broken = tmp_path / "broken.png"
    broken.write_bytes(os.urandom(4096))
    astronaut, label = IMAGES / "astronaut.png", IMAGES / "serial-label.png"
    _open(browser, live, key)
    _pick(browser, "predict-files", [astronaut, label, broken])
    _until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#predict-queue li")) == 3)
    for stage in ("ocr", "llm"):
        browser.find_element(By.CSS_SELECTOR, f'#predict-queue li[data-name="serial-label.png"] '
                                              f'input[data-stage="{stage}"]').click()
    browser.find_element(By.ID, "predict-query").send_keys("find the serial number")
    browser.find_element(By.ID, "predict-run").click()
    _until(browser, lambda d: "of 3 in" in d.find_element(By.ID, "predict-summary").text)

    statuses = {c.get_attribute("data-name"): c.get_attribute("data-status")
                for c in browser.find_elements(By.CSS_SELECTOR, ".card")}
    assert statuses == {"astronaut.png": "done", "serial-label.png": "done", "broken.png": "error"}
    assert "2 done, 1 failed, of 3" in browser.find_element(By.ID, "predict-summary").text
    error = _card(browser, "broken.png").find_element(By.CSS_SELECTOR, ".item-error")
    assert error.get_attribute("data-code") == "invalid_image"
    assert "invalid_image" in error.text

    serial = _card(browser, "serial-label.png")
    lines = [e.text for e in serial.find_elements(By.CSS_SELECTOR, ".ocr-lines .text")]
    assert any("SN-4X7Q-2291-B" in line.replace(" ", "") for line in lines), lines
    assert "SN-4X7Q-2291-B" in serial.find_element(By.CSS_SELECTOR, ".llm .answer").text
    assert {"decode", "yolo", "ocr", "llm"} <= {e.text for e in serial.find_elements(By.CSS_SELECTOR, ".timings dt")}
    assert llm.requests, "the LLM stage ran against the fake LLM"

    # The overlay: each drawn box is the API's box scaled to the displayed image, within 1.5 px, and the
    # canvas has ink on its edges.
    item = _api_boxes(live, key, astronaut)
    card = _card(browser, "astronaut.png")
    entries = _until(browser, lambda d: [e for e in card.find_elements(By.CSS_SELECTOR, ".detections li")
                                         if e.get_attribute("data-w")] or False)
    shown = browser.execute_script("return arguments[0].getBoundingClientRect().width",
                                   card.find_element(By.CSS_SELECTOR, ".frame img"))
    scale = shown / item["image"]["width"]
    detections = item["yolo"]["detections"]
    assert detections and len(entries) == len(detections)
    for entry, detection in zip(entries, detections, strict=True):
        box = detection["box"]
        drawn = {k: float(entry.get_attribute(f"data-{k}")) for k in "xywh"}
        expected = {"x": box["x1"] * scale, "y": box["y1"] * scale,
                    "w": (box["x2"] - box["x1"]) * scale, "h": (box["y2"] - box["y1"]) * scale}
        assert all(abs(drawn[k] - expected[k]) <= 1.5 for k in drawn), (drawn, expected)
        assert entry.get_attribute("data-name") == detection["name"]
        ink = browser.execute_script("""
            const [canvas, x, y] = arguments; const dpr = canvas.width / canvas.clientWidth;
            return canvas.getContext('2d').getImageData(Math.round(x * dpr), Math.round(y * dpr), 1, 1).data[3];""",
                                     card.find_element(By.CSS_SELECTOR, "canvas.overlay"),
                                     expected["x"], expected["y"] + expected["h"] / 2)
        assert ink > 0, "no box drawn on the canvas where the API put it"

    # Hovering an OCR line draws its box (the label has no detections: its canvas was blank).
    overlay = serial.find_element(By.CSS_SELECTOR, "canvas.overlay")
    assert not _has_ink(browser, overlay)
    webdriver.ActionChains(browser).move_to_element(serial.find_element(By.CSS_SELECTOR, ".ocr-lines li")).perform()
    _until(browser, lambda d: _has_ink(d, overlay))
    _screenshot(browser, artifacts, "predict-desktop")
    _screenshot(browser, artifacts, "predict-phone", phone=True)
    _assert_key_only_in_session_storage(browser, key)


def test_console_keeps_what_worked_beside_a_failed_stage_and_each_image_picks_its_detector(
        browser: WebDriver, settings: Settings, nudenet_detector: Detector, ocr_engine: OcrEngine, tmp_path: Path,
        llm: FakeLLMServer) -> None:
    """An image sent to a detector whose file is missing still shows its OCR text and the LLM's answer beside
    the error; a typed query turns the LLM on, as `sight predict --query` does."""
    models = {"nudenet": nudenet_path(), "broken": tmp_path / "missing.onnx"}
    cfg = settings.model_copy(update={"yolo": settings.yolo.model_copy(update={"models": models})})
    engines = EngineRegistry(cfg, detectors={"nudenet": nudenet_detector}, ocr=ocr_engine)
    with LiveServer(create_app(cfg, engines=engines)) as live:
        _open(browser, live, _key(live))
        _pick(browser, "predict-files", [IMAGES / "serial-label.png"])
        item = '#predict-queue li[data-name="serial-label.png"]'
        select = _until(browser, lambda d: d.find_element(By.CSS_SELECTOR, f'{item} select[data-role="model"]'))
        assert [o.text for o in select.find_elements(By.TAG_NAME, "option")] == ["default", "nudenet", "broken"]
        select.find_element(By.CSS_SELECTOR, 'option[value="broken"]').click()
        browser.find_element(By.CSS_SELECTOR, f'{item} input[data-stage="ocr"]').click()
        llm_box = browser.find_element(By.CSS_SELECTOR, f'{item} input[data-stage="llm"]')
        assert not llm_box.is_selected()
        browser.find_element(By.ID, "predict-query").send_keys("find the serial number")
        assert browser.find_element(By.CSS_SELECTOR, f'{item} input[data-stage="llm"]').is_selected()
        browser.find_element(By.ID, "predict-run").click()
        _until(browser, lambda d: "of 1 in" in d.find_element(By.ID, "predict-summary").text)
        card = _card(browser, "serial-label.png")
        assert card.get_attribute("data-status") == "error"
        assert card.find_element(By.CSS_SELECTOR, ".item-error").get_attribute("data-code") == "model_unavailable"
        lines = [e.text for e in card.find_elements(By.CSS_SELECTOR, ".ocr-lines .text")]
        assert any("SN-4X7Q-2291-B" in line.replace(" ", "") for line in lines), lines
        assert "SN-4X7Q-2291-B" in card.find_element(By.CSS_SELECTOR, ".llm .answer").text
        assert llm.requests, "the LLM stage ran"


def test_console_url_items_go_over_the_json_stream_with_boxes_on_a_blank_frame(
        browser: WebDriver, settings: Settings, engines: EngineRegistry, image_server: ImageServer) -> None:
    cfg = settings.model_copy(update={"fetch": FetchSettings(allow_networks=["127.0.0.0/8"])})
    hits = len(image_server.hits)  # the image host is shared by the session
    with LiveServer(create_app(cfg, engines=engines)) as live:
        key = _key(live)
        _open(browser, live, key)
        _pick(browser, "predict-files", [IMAGES / "chelsea.png"])
        browser.find_element(By.ID, "predict-urls").send_keys(f"{image_server.url}/astronaut.png")
        browser.find_element(By.ID, "predict-add-urls").click()
        _until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#predict-queue li")) == 2)
        _add_field(browser, "serial_number", SERIAL_PATTERN)  # the schema goes in the JSON body too
        browser.find_element(By.ID, "predict-run").click()
        _until(browser, lambda d: "2 done, 0 failed, of 2" in d.find_element(By.ID, "predict-summary").text)
        for scope in (_card(browser, "astronaut.png"), browser.find_element(By.ID, "predict-merged")):
            assert _field(scope, "serial_number").find_element(By.CSS_SELECTOR, ".value").text == "not found"

        # The page loads nothing from the image host (its CSP would refuse): the boxes go on a blank frame of
        # the image's shape, at the same scale.
        frame = _card(browser, "astronaut.png").find_element(By.CSS_SELECTOR, ".frame.blank")
        entry = _until(browser, lambda d: frame.find_element(By.XPATH, "..").find_element(
            By.CSS_SELECTOR, ".detections li[data-w]"))
        item = _api_boxes(live, key, IMAGES / "astronaut.png")
        scale = frame.rect["width"] / item["image"]["width"]
        assert abs(frame.rect["height"] - item["image"]["height"] * scale) <= 1.5
        assert abs(float(entry.get_attribute("data-x")) - item["yolo"]["detections"][0]["box"]["x1"] * scale) <= 1.5
        assert image_server.hits[hits:] == ["/astronaut.png"]  # fetched once, by the server


def _add_field(driver: WebDriver, name: str, pattern: str = "") -> WebElement:
    """A field row, typed as a keyboard user does: "Add field" focuses the new row's name, Tab its pattern."""
    driver.find_element(By.ID, "predict-add-field").click()
    row: WebElement = driver.find_elements(By.CSS_SELECTOR, "#predict-fields li")[-1]
    assert driver.switch_to.active_element == row.find_element(By.CSS_SELECTOR, ".field-name")
    webdriver.ActionChains(driver).send_keys(name, Keys.TAB, pattern).perform()
    assert row.find_element(By.CSS_SELECTOR, ".field-pattern").get_attribute("value") == pattern
    return row


def _field(scope: WebElement, path: str) -> WebElement:
    return scope.find_element(By.CSS_SELECTOR, f'.fields-table tr[data-path="{path}"]')


def _evidence(card: WebElement) -> list[WebElement]:
    return card.find_elements(By.CSS_SELECTOR, ".evidence-layer .evidence")


def _rect(driver: WebDriver, element: WebElement) -> dict[str, float]:
    rect: dict[str, float] = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect(); return {x: r.x, y: r.y, w: r.width, h: r.height};", element)
    return rect


def _label(path: Path, text: str) -> Path:
    """A plain printed label: black DejaVu Sans on white, 40 px."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (900, 160), "white")
    ImageDraw.Draw(image).text((40, 45), text, fill="black",
                               font=ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 40))
    image.save(path)
    return path


def test_console_fields_show_per_card_and_merged_and_their_rows_draw_evidence(
        browser: WebDriver, live: LiveServer, artifacts: Path) -> None:
    key = _key(live)
    label = IMAGES / "serial-label.png"
    _open(browser, live, key)
    _pick(browser, "predict-files", [label])
    _until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#predict-queue li")) == 1)
    _add_field(browser, "serial_number", SERIAL_PATTERN)
    browser.find_element(By.ID, "predict-run").click()
    _until(browser, lambda d: "of 1 in" in d.find_element(By.ID, "predict-summary").text)

    # The card's table: the pattern's match (never the whole line), read by the OCR alone: unchecked.
    card = _card(browser, "serial-label.png")
    row = _field(card, "serial_number")
    assert row.find_element(By.CSS_SELECTOR, ".value").text == SERIAL
    assert row.find_element(By.CSS_SELECTOR, ".badge.verify").text == "unchecked"
    assert row.get_attribute("data-verified") == "null" and row.get_attribute("tabindex") == "0"
    assert "exact" in row.find_element(By.CSS_SELECTOR, ".evidence").text

    # Above the cards: the request's fields, each with the image it came from (and no answer text repeating it).
    merged = browser.find_element(By.ID, "predict-merged")
    assert merged.is_displayed()
    merged_row = _field(merged, "serial_number")
    assert merged_row.find_element(By.CSS_SELECTOR, ".value").text == SERIAL
    assert merged_row.find_element(By.CSS_SELECTOR, ".from").text == "serial-label.png"
    assert merged.rect["y"] + merged.rect["height"] <= browser.find_element(By.ID, "predict-results").rect["y"]
    assert "Answer" not in browser.find_element(By.ID, "predict-summary").text
    assert not merged.find_elements(By.CSS_SELECTOR, ".conflicts li")

    # Keyboard: focusing the merged row, then Tab to the card's row, draws the evidence where the API put it;
    # Tab on past it takes the boxes away.
    schema = {"type": "object", "properties": {"serial_number": {"type": "string", "pattern": SERIAL_PATTERN}}}
    item = _api_boxes(live, key, label, response_schema=json.dumps(schema))
    (cited,) = item["evidence"]["serial_number"]
    image = card.find_element(By.CSS_SELECTOR, ".frame img")
    scale = _rect(browser, image)["w"] / item["image"]["width"]
    assert not _evidence(card)
    browser.execute_script("arguments[0].focus()", merged_row)
    _until(browser, lambda d: len(_evidence(card)) == 1)
    webdriver.ActionChains(browser).send_keys(Keys.TAB).perform()
    assert browser.switch_to.active_element == row
    (box,) = _until(browser, lambda d: _evidence(card))
    drawn, origin = _rect(browser, box), _rect(browser, image)
    expected = {"x": cited["box"]["x1"] * scale, "y": cited["box"]["y1"] * scale,
                "w": (cited["box"]["x2"] - cited["box"]["x1"]) * scale,
                "h": (cited["box"]["y2"] - cited["box"]["y1"]) * scale}
    got = {"x": drawn["x"] - origin["x"], "y": drawn["y"] - origin["y"], "w": drawn["w"], "h": drawn["h"]}
    assert all(abs(got[k] - expected[k]) <= 1.5 for k in expected), (got, expected)
    webdriver.ActionChains(browser).send_keys(Keys.TAB).perform()
    _until(browser, lambda d: not _evidence(card))

    # The mouse: hovering the row draws them, leaving it takes them away.
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", row)
    webdriver.ActionChains(browser).move_to_element(row).perform()
    _until(browser, lambda d: len(_evidence(card)) == 1)
    _screenshot(browser, artifacts, "fields-desktop")
    webdriver.ActionChains(browser).move_to_element(card.find_element(By.CSS_SELECTOR, "header h3")).perform()
    _until(browser, lambda d: not _evidence(card))
    _screenshot(browser, artifacts, "fields-phone", phone=True)


def test_console_merged_fields_name_their_image_and_list_conflicts(
        browser: WebDriver, live: LiveServer, tmp_path: Path) -> None:
    other_serial = "SN-8KD9-0415-QX"
    other = _label(tmp_path / "other.png", f"S/N: {other_serial}")
    _open(browser, live, _key(live))
    _pick(browser, "predict-files", [IMAGES / "serial-label.png", other])
    _until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#predict-queue li")) == 2)
    _add_field(browser, "serial_number", SERIAL_PATTERN)
    _add_field(browser, "year", "20[0-9]{2}")
    browser.find_element(By.ID, "predict-run").click()
    _until(browser, lambda d: "2 done, 0 failed, of 2" in d.find_element(By.ID, "predict-summary").text)

    assert _field(_card(browser, "other.png"), "serial_number").find_element(
        By.CSS_SELECTOR, ".value").text == other_serial
    missing = _field(_card(browser, "other.png"), "year")
    assert missing.find_element(By.CSS_SELECTOR, ".value").text == "not found"
    assert missing.find_element(By.CSS_SELECTOR, ".badge.verify").text == "unchecked"

    merged = browser.find_element(By.ID, "predict-merged")
    for path, value in (("serial_number", SERIAL), ("year", "2024")):  # neither verified: the first image's
        row = _field(merged, path)
        assert row.find_element(By.CSS_SELECTOR, ".value").text == value
        assert row.find_element(By.CSS_SELECTOR, ".from").text == "serial-label.png"
    (conflict,) = merged.find_elements(By.CSS_SELECTOR, ".conflicts li")
    assert conflict.get_attribute("data-path") == "serial_number"
    assert f"{SERIAL} in serial-label.png" in conflict.text and f"{other_serial} in other.png" in conflict.text

    # Merged evidence is drawn on the image it came from, only there.
    browser.execute_script("arguments[0].focus()", _field(merged, "serial_number"))
    _until(browser, lambda d: len(_evidence(_card(d, "serial-label.png"))) == 1)
    assert not _evidence(_card(browser, "other.png"))


def test_console_shows_unnamed_fields_and_invalid_schema_in_the_form(browser: WebDriver, live: LiveServer) -> None:
    _open(browser, live, _key(live))
    _pick(browser, "predict-files", [IMAGES / "serial-label.png"])
    _until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#predict-queue li")) == 1)
    row = _add_field(browser, "", "SN-[0-9]+")
    browser.find_element(By.ID, "predict-run").click()
    alert = browser.find_element(By.ID, "predict-error")
    _until(browser, lambda d: alert.is_displayed())
    assert "name" in alert.text
    name = row.find_element(By.CSS_SELECTOR, ".field-name")
    assert browser.switch_to.active_element == name  # on the input to fix; nothing was sent
    assert not browser.find_elements(By.CSS_SELECTOR, ".card")

    # A pattern RE2 cannot run (a backreference): the server's 400 invalid_schema, readable in the form.
    name.send_keys("serial_number")
    pattern = row.find_element(By.CSS_SELECTOR, ".field-pattern")
    pattern.clear()
    pattern.send_keys("(a)\\1")
    browser.find_element(By.ID, "predict-run").click()
    _until(browser, lambda d: "invalid_schema" in alert.text)
    assert "HTTP 400" in alert.text and "pattern" in alert.text  # the server's reason, as it gave it
    assert not browser.find_elements(By.CSS_SELECTOR, ".card")
    assert not browser.find_element(By.ID, "predict-merged").is_displayed()
    # Chromium reports every 4xx fetch in the console: the expected 400 is the only entry allowed here.
    entries = browser.get_log("browser")
    assert all("400" in e["message"] for e in entries if e["level"] == "SEVERE"), entries

    # Removing a row by keyboard leaves the focus on "Add field", not lost to the top of the page.
    remove = row.find_element(By.TAG_NAME, "button")
    assert remove.get_attribute("aria-label") == "Remove field serial_number"
    browser.execute_script("arguments[0].focus()", remove)
    webdriver.ActionChains(browser).send_keys(Keys.ENTER).perform()
    _until(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, "#predict-fields li"))
    assert browser.switch_to.active_element.get_attribute("id") == "predict-add-field"


def _assert_key_only_in_session_storage(driver: WebDriver, key: str) -> None:
    assert key not in driver.current_url
    assert driver.execute_script("return sessionStorage.getItem('sight.key')") == key
    assert driver.execute_script("return localStorage.length") == 0
    assert key not in driver.page_source
    assert not driver.get_cookies()


def test_console_batch_reaches_full_progress_and_downloads_results(
        browser: WebDriver, live: LiveServer, tmp_path: Path, artifacts: Path) -> None:
    key = _key(live)
    _open(browser, live, key, "batches")
    _until(browser, lambda d: not d.find_element(By.ID, "batches").get_attribute("hidden"))
    browser.find_element(By.ID, "batch-name").clear()
    browser.find_element(By.ID, "batch-name").send_keys("from the console")
    _drop(browser, "batch-drop", [IMAGES / "astronaut.png", IMAGES / "bus.jpg"])
    _until(browser, lambda d: d.find_element(By.ID, "batch-picked").text == "astronaut.png, bus.jpg")
    browser.find_element(By.ID, "batch-create").click()

    row = _until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#batch-table tbody tr"))
    _until(browser, lambda d: row.get_attribute("data-progress") == "100")
    assert "100%" in row.text and "2 ok" in row.text
    assert browser.find_element(By.ID, "batches-error").get_attribute("hidden") is not None
    batch_id = row.get_attribute("data-batch-id")
    listed = httpx.get(live.url + "/v1/batches", headers={"Authorization": f"Bearer {key}"}).json()["batches"]
    assert [b["batch_id"] for b in listed] == [batch_id] and listed[0]["name"] == "from the console"

    row.find_element(By.XPATH, './/button[text()="Results (JSONL)"]').click()
    download = tmp_path / "downloads" / f"{batch_id}.jsonl"
    _until(browser, lambda d: download.is_file())
    results = [json.loads(line) for line in download.read_text().splitlines()]
    assert sorted(r["batch_request_id"] for r in results) == ["1-astronaut.png", "2-bus.jpg"]
    assert all(r["batch_result"]["response"]["vision_predict"]["yolo"] for r in results)

    # A batch nothing was added to yet waits for requests: it does not read "processing 0%" for ever.
    empty = httpx.post(live.url + "/v1/batches", json={"name": "nothing yet"},
                       headers={"Authorization": f"Bearer {key}"}).json()["batch_id"]
    browser.find_element(By.ID, "batch-refresh").click()
    waiting = _until(browser, lambda d: d.find_element(By.CSS_SELECTOR, f'#batch-table tr[data-batch-id="{empty}"]'))
    assert "open" in waiting.text and "no requests" in waiting.text and "0%" not in waiting.text

    _screenshot(browser, artifacts, "batches-desktop")
    _screenshot(browser, artifacts, "batches-phone", phone=True)
    _assert_key_only_in_session_storage(browser, key)


def test_console_models_view_shows_detector_ready_after_a_prediction(
        browser: WebDriver, settings: Settings, nudenet_detector: Detector, ocr_engine: OcrEngine, tmp_path: Path,
        artifacts: Path) -> None:
    # The model's file at a long path (a deep checkout, say): long values wrap, the phone layout never scrolls
    # sideways, however long the path.
    deep = tmp_path.joinpath(*["a_rather_long_folder_name_for_models"] * 8)
    deep.mkdir(parents=True)
    (deep / "nudenet_with_a_long_file_name.onnx").symlink_to(nudenet_path())
    cfg = settings.model_copy(update={"yolo": settings.yolo.model_copy(
        update={"models": {"nudenet": deep / "nudenet_with_a_long_file_name.onnx"}})})
    engines = EngineRegistry(cfg, detectors={"nudenet": nudenet_detector}, ocr=ocr_engine)
    with LiveServer(create_app(cfg, engines=engines)) as live:
        _models_view(browser, live, artifacts)


def _models_view(browser: WebDriver, live: LiveServer, artifacts: Path) -> None:
    key = _key(live)
    _api_boxes(live, key, IMAGES / "astronaut.png")
    _open(browser, live, key, "models")
    row = _until(browser, lambda d: d.find_element(By.CSS_SELECTOR, '#models-table tr[data-name="nudenet"]'))
    assert row.get_attribute("data-state") == "ready"
    assert "latest" in row.text and "detect" in row.text
    assert "Vision LLM" in browser.find_element(By.ID, "models-llm").text

    row.find_element(By.TAG_NAME, "button").click()
    detail = _until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#model-detail h3"))
    assert detail.text == "nudenet"
    assert browser.switch_to.active_element == detail  # focus follows, for keyboard and screen reader users
    assert "Serves version 1" in browser.find_element(By.ID, "model-detail").text
    assert "nudenet_with_a_long_file_name.onnx" in browser.find_element(By.ID, "model-detail").text

    _screenshot(browser, artifacts, "models-desktop")
    _screenshot(browser, artifacts, "models-phone", phone=True)


def test_console_shows_api_errors_with_their_code(browser: WebDriver, live: LiveServer) -> None:
    _open(browser, live, "sk-sight-not-a-real-key", "models")
    alert = browser.find_element(By.ID, "models-error")
    _until(browser, lambda d: alert.text)
    assert "unauthorized" in alert.text and "401" in alert.text
    # Chromium reports every 4xx fetch in the console: the expected 401 is the only entry allowed here.
    entries = browser.get_log("browser")
    assert all("401" in e["message"] for e in entries if e["level"] == "SEVERE"), entries


def test_console_page_has_strict_csp_and_loads_only_its_own_files(browser: WebDriver, live: LiveServer) -> None:
    page = httpx.get(live.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self' blob: data:",
                      "connect-src 'self'", "frame-ancestors 'none'"):
        assert directive in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    script = httpx.get(live.url + "/console/app.js")
    assert script.headers["content-security-policy"] == csp
    assert script.headers["x-content-type-options"] == "nosniff"
    assert "javascript" in script.headers["content-type"]
    # Nothing inline, which the CSP would block: every script has a src, no style element or attribute.
    assert not re.search(r"<script(?![^>]*\bsrc=)|<style|style=", page.text)
    assert "/console/" not in str(httpx.get(live.url + "/openapi.json").json()["paths"])

    browser.get(live.url + "/")
    _until(browser, lambda d: d.find_element(By.ID, "key-state").text == "No key")  # the scripts ran
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(urlparse(u).netloc == urlparse(live.url).netloc for u in resources), resources


def test_console_controls_are_labelled_and_reachable_by_keyboard(browser: WebDriver, live: LiveServer) -> None:
    browser.get(live.url + "/")
    _until(browser, lambda d: d.find_element(By.ID, "key-state").text == "No key")
    unnamed = browser.execute_script("""
        return [...document.querySelectorAll('input, textarea, button, select')].filter(el => {
          const labelled = el.labels && [...el.labels].some(l => l.textContent.trim());
          return !(labelled || el.getAttribute('aria-label') || (el.tagName === 'BUTTON' && el.textContent.trim()));
        }).map(el => el.outerHTML);""")
    assert unnamed == []
    assert browser.find_elements(By.CSS_SELECTOR, "[onclick], a[href^='javascript']") == []

    title = browser.find_element(By.TAG_NAME, "h1")
    title.click()  # Tab order starts from the top of the page
    reached = []
    for _ in range(12):
        webdriver.ActionChains(browser).send_keys(Keys.TAB).perform()
        reached.append(browser.switch_to.active_element.get_attribute("id") or
                       browser.switch_to.active_element.get_attribute("data-view"))
    assert reached[:6] == ["key", "key-save", "key-forget", "predict", "batches", "models"]
    assert "predict-files" in reached and "predict-urls" in reached

    title.click()
    for _ in range(6):
        webdriver.ActionChains(browser).send_keys(Keys.TAB).perform()
    assert browser.switch_to.active_element.get_attribute("data-view") == "models"
    webdriver.ActionChains(browser).send_keys(Keys.ENTER).perform()
    _until(browser, lambda d: d.find_element(By.ID, "models").is_displayed())
    assert browser.find_element(By.ID, "predict").get_attribute("hidden") is not None
