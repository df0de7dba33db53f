"""The explorer in a real headless browser: Debian's Chromium driven by Selenium through its chromedriver.

Load the page, move the context slider and type a channel count, and check that the numbers the page shows equal
what `aqpim-sim run --json-out` writes for the command the page itself gives; a bad value shows its one-line
message and the page recovers; the URL reproduces the state. The screenshots in docs/explore.md are taken here.

Without Chromium, chromedriver or Selenium the tests skip and say what is missing, except when ``CI`` is set
(fresh-clone CI sets CI=true and `.ci/run` installs them): then they fail.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from sim.explore.server import make_server

ROOT = Path(__file__).resolve().parents[1]
# The docs' screenshots are retaken with EXPLORE_SCREENSHOTS=docs/img; otherwise they go to a temporary folder, so
# a test run never rewrites tracked files.
SHOTS = Path(os.environ.get("EXPLORE_SCREENSHOTS") or tempfile.mkdtemp(prefix="explore-shots-"))
CHROMIUM = next((p for p in (os.environ.get("CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium",
                             shutil.which("chromium-browser")) if p and Path(p).exists()), None)
DRIVER = next((p for p in (os.environ.get("CHROMEDRIVER"), shutil.which("chromedriver"), "/usr/bin/chromedriver")
               if p and Path(p).exists()), None)


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install '.[test]')"
    if CHROMIUM is None:
        return "no Chromium found (apt-get install -y chromium chromium-driver)"
    if DRIVER is None:
        return "no chromedriver found (apt-get install -y chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    reason = _missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the browser tests cannot run: {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    server = make_server(0, str(tmp_path_factory.mktemp("explore")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1900",
                "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        yield driver
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()


def status(driver) -> tuple[int, str]:
    s = driver.find_element("id", "status")
    return int(s.get_attribute("data-seq") or 0), s.get_attribute("data-run")


def wait_run(driver, after: int = 0, timeout: float = 30) -> str:
    """Wait until an update newer than ``after`` has finished (simulated, or stopped on an error)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        seq, state = status(driver)
        if seq > after and state in ("done", "error"):
            return state
        time.sleep(0.05)
    raise AssertionError(f"the page did not finish updating: {status(driver)}")


def shown(driver) -> dict[str, dict]:
    """label -> the closed-form row's values and the simulated latency bar, as the page holds them."""
    out = {}
    for tr in driver.find_elements("css selector", "#estimate tbody tr"):
        cells = {td.get_attribute("class"): td for td in tr.find_elements("tag name", "td")}
        out[tr.get_attribute("data-label")] = {
            "closed_form_s": float(cells["lat"].get_attribute("data-value")), "closed_form_text": cells["lat"].text,
            "fits": cells["fits"].text == "yes"}
    for rect in driver.find_elements("css selector", "#latency-chart rect[data-label]"):
        out[rect.get_attribute("data-label")]["simulated_s"] = float(rect.get_attribute("data-value"))
    return out


def test_controls_match_the_command_line(browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    d = browser
    d.get(d.base + "?variants=pim,aqpim,gpu")
    assert wait_run(d) == "done"
    seq, _ = status(d)
    slider = d.find_element("id", "slider-context")
    slider.send_keys(*[Keys.ARROW_RIGHT] * 4)  # 2^15 -> 2^16 tokens, a quarter octave per step
    channels = d.find_element("id", "opt-channels")
    channels.clear()
    channels.send_keys("320", Keys.TAB)
    assert wait_run(d, seq) == "done"
    assert d.find_element("id", "opt-context").get_attribute("value") == "65536"
    assert "context=65536" in d.current_url and "channels=320" in d.current_url
    d.save_screenshot(str(SHOTS / "explore-main.png"))
    values = shown(d)
    d.find_element("id", "show-command").click()
    commands = [e.text for e in d.find_elements("css selector", "#command-body pre.command")]
    d.save_screenshot(str(SHOTS / "explore-command.png"))
    d.find_element("css selector", "#command-dialog button").click()
    assert len(commands) == 3
    runs = {}
    for command in commands:  # the three runs side by side: the test waits for the slowest only
        argv = shlex.split(command)
        label = argv[argv.index("--system") + 1]
        assert "--context" in argv and "65536" in argv
        assert label == "gpu" or argv[argv.index("--channels") + 1] == "320"
        out = tmp_path / f"{label}.json"
        runs[label] = (out, subprocess.Popen([sys.executable, "-m", "sim.cli", *argv[1:], "--json-out", str(out)],
                                             stdout=subprocess.DEVNULL, cwd=tmp_path))
    assert set(runs) == {"pim", "aqpim", "gpu"}
    for label, (out, proc) in runs.items():
        assert proc.wait(timeout=60) == 0
        result = json.loads(out.read_text())
        assert values[label]["closed_form_s"] == result["analytic_mean_step_latency_s"], label
        assert values[label]["simulated_s"] == result["mean_step_latency_s"], label
        assert values[label]["fits"] == result["fits"]
        assert values[label]["closed_form_text"].startswith(f"{result['analytic_mean_step_latency_s'] * 1e3:.3f} ms")


def test_bad_input_shows_its_message_and_the_page_recovers(browser):
    from selenium.webdriver.common.keys import Keys

    d = browser
    d.get(d.base + "?variants=pim,aqpim")
    wait_run(d)
    seq, _ = status(d)
    batch = d.find_element("id", "opt-batch")
    batch.clear()
    batch.send_keys("-5", Keys.TAB)
    assert wait_run(d, seq) == "error"
    error = d.find_element("id", "error")
    assert error.is_displayed() and error.text == "page: batch must be a positive integer, got -5"
    d.save_screenshot(str(SHOTS / "explore-error.png"))
    seq, _ = status(d)
    batch.clear()
    batch.send_keys("8", Keys.TAB)
    assert wait_run(d, seq) == "done" and not d.find_element("id", "error").is_displayed()
    d.get(d.base + "?model=llama-9")  # a hand-edited link
    assert wait_run(d) == "error"
    assert d.find_element("id", "error").text.startswith("page: unknown model preset 'llama-9'")


def test_the_url_reproduces_the_state(browser):
    from selenium.webdriver.support.ui import Select

    d = browser
    d.get(d.base + "?variants=pim,pim%2Blimit,aqpim&batch=32&context=131072&pq_m=8&capacity_policy=limit"
                   "&pcie_gbps=64&log=0")
    assert wait_run(d) == "done", d.find_element("id", "error").text
    first = shown(d)
    assert d.find_element("id", "opt-pq_m").get_attribute("value") == "8"
    assert Select(d.find_element("id", "opt-capacity_policy")).first_selected_option.text == "limit"
    assert not d.find_element("id", "log").is_selected()
    Select(d.find_element("id", "sweep_x")).select_by_value("channels")
    d.find_element("id", "sweep-go").click()
    end = time.monotonic() + 30
    while d.find_element("id", "sweep-section").get_attribute("data-state") != "done" and time.monotonic() < end:
        time.sleep(0.05)
    assert d.find_elements("css selector", "#sweep-chart path[data-label]")
    url = d.current_url
    assert "sweep_x=channels" in url
    d.find_element("id", "sweep-section").screenshot(str(SHOTS / "explore-sweep.png"))
    d.get(url)
    assert wait_run(d) == "done"
    assert shown(d) == first
    assert d.current_url == url
    for cb in d.find_elements("css selector", "input[name=variant]"):
        assert cb.is_selected() == (cb.get_attribute("value") in ("pim", "pim+limit", "aqpim"))


def tutorial_page_urls() -> list[tuple[str, str]]:
    """The explorer states the tutorial's chapter on the page quotes (``page("?...", api)`` annotations), each with
    the API whose answer the tutorial checks its numbers against."""
    import re

    text = (ROOT / "docs" / "tutorial.md").read_text()
    found = re.findall(r'page\("(\?[^"]+)"(?:,\s*"(\w+)")?\)', text)
    return sorted({(url, api or "estimate") for url, api in found})


def test_the_tutorial_exercises_show_their_answers(browser, tmp_path):
    """Each state the tutorial's explorer chapter quotes, loaded in the browser: the page shows what the API answers
    (which tests/test_tutorial.py checks against the text): per variant the closed-form step latency and the
    admitted batch; for a sweep, where the winner changes."""
    from sim.explore.server import App

    app = App(str(tmp_path))
    urls = tutorial_page_urls()
    assert len(urls) >= 5 and any(api == "sweep" for _, api in urls)
    d = browser
    for url, api in urls:
        state = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
        status_code, _, body = app.dispatch("POST", f"/api/{api}", json.dumps(state).encode())
        assert status_code == 200, body
        answer = json.loads(body)
        d.get(d.base + url)
        assert wait_run(d) == "done", (url, d.find_element("id", "error").text)
        if api == "sweep":
            end = time.monotonic() + 60
            while d.find_element("id", "sweep-section").get_attribute("data-state") != "done":
                assert time.monotonic() < end, f"{url}: the sweep did not finish"
                time.sleep(0.05)
            lines = d.find_elements("css selector", "#sweep-chart line.change")
            assert [float(x.get_attribute("data-x")) for x in lines] == [float(c["x"]) for c in answer["changes"]], url
            continue
        rows = {tr.get_attribute("data-label"): tr for tr in d.find_elements("css selector", "#estimate tbody tr")}
        assert set(rows) == {r["label"] for r in answer["rows"]}, url
        for r in answer["rows"]:
            cell = {td.get_attribute("class"): td for td in rows[r["label"]].find_elements("tag name", "td")}
            assert float(cell["lat"].get_attribute("data-value")) == r["step_latency_s"], (url, r["label"])
            assert int(cell["admitted"].get_attribute("data-value")) == r["peak_batch"], (url, r["label"])
