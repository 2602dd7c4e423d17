"""The console page in a real headless Chromium (Debian's chromium and chromium-driver, driven by Selenium):
no console errors, one row per study in priority order, a new study appears without a reload by the test,
no patient identity, and a screenshot."""
from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest

import peers


@pytest.fixture
def browser():
    chromium, driver = peers.require_binary("chromium"), peers.require_binary("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    b = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield b
    finally:
        b.quit()


def _rows(browser) -> list[tuple[str, str]]:
    from selenium.webdriver.common.by import By

    return [(r.get_attribute("data-priority"), r.get_attribute("data-study"))
            for r in browser.find_elements(By.CSS_SELECTOR, "tr.study")]


def test_the_console_page_in_a_real_browser(browser, node_factory, node_phantoms, tmp_path):
    from edgeinfer import phantom

    node = node_factory("--quiet-seconds", "1")
    files = sorted(node_phantoms.rglob("*.dcm"))
    assert node.store([node_phantoms]).returncode == 0
    studies = {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}
    peers.wait_until(lambda: len(node.get("/worklist")[1]["studies"]) == len(studies), 60, 0.2, "the studies scored")
    url = f"http://127.0.0.1:{node.http_port}/"
    browser.get(url)
    _, wl = node.get("/worklist")
    assert _rows(browser) == [(s["priority"], s["study_uid"]) for s in wl["studies"]]     # the worklist's order
    assert "edgeinfer EDGEINFER" in browser.title or "edgeinfer" in browser.title
    text = browser.find_element("id", "identity").text
    assert "Patient names and accession numbers are not shown" in text
    names = {str(pydicom.dcmread(f, stop_before_pixels=True).PatientName) for f in files}
    assert not any(n and n in browser.page_source for n in names)                        # no identity on the page
    # a new study appears by itself: the page reloads itself (the test never does)
    more = tmp_path / "more"
    phantom.generate(more, 1, seed=77, max_size=256)
    assert node.store([more]).returncode == 0
    new = str(pydicom.dcmread(next(more.rglob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)
    peers.wait_until(lambda: new in {uid for _, uid in _rows(browser)}, 60, 0.5, "the new study's row")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    shot = tmp_path / "console.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("EDGEINFER_SCREENSHOTS"):     # the README's picture: EDGEINFER_SCREENSHOTS=docs/images
        (Path(os.environ["EDGEINFER_SCREENSHOTS"]) / "console.png").write_bytes(shot.read_bytes())
