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
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800",
                "--ignore-certificate-errors"):   # the HTTPS test serves a certificate from a test CA
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    b = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield b
    finally:
        b.quit()


def _rows(browser) -> list[tuple[str, str]]:
    """(priority, study) of each row, read in one script run: the page reloads itself every 5 s, and rows found
    before a reload and read after it are stale (a fresh-clone run failed on that)."""
    rows = browser.execute_script("return Array.from(document.querySelectorAll('tr.study'), "
                                  "r => [r.getAttribute('data-priority'), r.getAttribute('data-study')]);")
    return [tuple(r) for r in rows]


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
    # a flagged study shows its heatmap's thumbnail, loaded from the node (/heatmap/...); read in one script run,
    # and waited for: a reload may come between the rows and their images
    _, wl = node.get("/worklist")
    flagged = [s for s in wl["studies"] if any(i.get("heatmaps") for i in s["images"])]
    thumbs = ("const t = Array.from(document.querySelectorAll('a.heatmap img')); "
              "return [t.length, t.every(i => i.complete && i.naturalWidth > 0)];")
    peers.wait_until(lambda: browser.execute_script(thumbs) == [len(flagged), True], 30, 0.5,
                     "every flagged study's thumbnail, loaded")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    shot = tmp_path / "console.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("EDGEINFER_SCREENSHOTS"):     # the README's picture: EDGEINFER_SCREENSHOTS=docs/images
        (Path(os.environ["EDGEINFER_SCREENSHOTS"]) / "console.png").write_bytes(shot.read_bytes())


def test_identity_is_shown_only_over_https_to_a_logged_in_user(browser, node_factory, node_phantoms, tls_material,
                                                               tmp_path):
    """With --http-tls-cert/--http-tls-key and --http-auth the console shows each study's patient name and
    accession number to a logged-in user; without credentials it answers 401, repeated failures get 429 and
    are audited; /metrics, /healthz and /readyz stay open and carry no identity. With the login but without
    TLS, identity stays hidden and the page says why."""
    from edgeinfer.node.auth import MAX_FAILURES, set_user

    users = tmp_path / "users"
    password = "console-pass-1234"
    set_user(users, "radiographer", password)
    node = node_factory("--quiet-seconds", "1", "--http-tls-cert", str(tls_material.server_cert), "--http-tls-key",
                        str(tls_material.server_key), "--http-auth", str(users), http_ca=tls_material.ca_cert,
                        auth=("radiographer", password))
    assert node.store([node_phantoms]).returncode == 0
    files = sorted(node_phantoms.rglob("*.dcm"))
    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    studies = {str(h.StudyInstanceUID) for h in heads}
    peers.wait_until(lambda: len(node.get("/worklist")[1]["studies"]) == len(studies), 60, 0.2, "the studies scored")
    names = {str(h.PatientName).split("^")[0] for h in heads if h.get("PatientName")}
    accessions = {str(h.AccessionNumber) for h in heads if h.get("AccessionNumber")}
    assert names and accessions
    # open to monitoring, and without identity
    for path in ("/metrics", "/healthz", "/readyz"):
        code, body = node.get(path, auth=("", ""))
        assert code == 200 and not any(n in str(body) for n in names | accessions), path
    # the console needs a login; guessing is limited and audited, the password never logged
    assert node.get("/", auth=("radiographer", "")) [0] == 401
    for _ in range(MAX_FAILURES):
        node.get("/worklist", auth=("radiographer", "wrong-guess"))
    assert node.get("/", auth=("radiographer", password))[0] == 429       # this address is locked out for a while
    log = node.log.read_text()
    assert "HTTP login failed for user 'radiographer' from 127.0.0.1" in log and "wrong-guess" not in log
    assert password not in log
    # a fresh node (the lock-out is per process) in a real browser: the names and accession numbers are there
    node.stop()
    node = node_factory("--quiet-seconds", "1", "--spool", str(node.spool), "--http-tls-cert",
                        str(tls_material.server_cert), "--http-tls-key", str(tls_material.server_key),
                        "--http-auth", str(users), http_ca=tls_material.ca_cert, auth=("radiographer", password))
    browser.get(f"https://radiographer:{password}@localhost:{node.http_port}/")
    assert "are shown: this page is served over HTTPS to a logged-in user" in browser.find_element("id", "identity").text
    page = browser.page_source
    assert all(a in page for a in accessions) and all(n in page for n in names)
    assert len(_rows(browser)) == len(studies)
    shot = tmp_path / "console-identity.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("EDGEINFER_SCREENSHOTS"):     # docs/node.md's picture (synthetic phantom patients)
        (Path(os.environ["EDGEINFER_SCREENSHOTS"]) / "console-identity.png").write_bytes(shot.read_bytes())
    # a login without TLS: still no identity, and the page says why
    node.stop()
    plain = node_factory("--quiet-seconds", "1", "--spool", str(node.spool), "--http-auth", str(users),
                         auth=("radiographer", password))
    code, html = plain.get("/")
    assert code == 200 and "this HTTP side has no TLS (--http-tls-cert, --http-tls-key)" in html
    assert not any(n in html for n in names | accessions)
