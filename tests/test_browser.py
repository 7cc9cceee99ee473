"""The dashboard in real headless Chromium (Debian `chromium`, driven by Playwright) on a real `biopilot up`:
live points arrive against the recipe's reference band, a fault injected from the page raises an incident, the
agent's explanation streams in and so does its answer to a question asked on the page, the fleet overview puts
that reactor first and opens another in one click, and a setpoint lowered there from the page is marked on the
time axis as the band bends with it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.services import free_port, wait_port
from tests.browser_helpers import needs_chromium

SCREENSHOTS = Path(__file__).parent.parent / "docs" / "screenshots"
SCREENSHOT = SCREENSHOTS / "dashboard.png"
pytestmark = pytest.mark.integration  # `biopilot up` in a subprocess


@pytest.fixture
def stack(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIOPILOT_")}
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "biopilot.cli", "up", "--reactors", "2", "--speed", "1200",
                             "--lake", str(tmp_path / "lake"), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = None
    deadline = time.monotonic() + 90
    lines = []
    while url is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if m := re.search(r"(http://\S+/login\?code=\S+)", line):
            url = m.group(1)
    assert url, "".join(lines)
    wait_port(port, timeout_s=30, proc=proc)  # the link is printed as the dashboard starts, not once it listens
    yield url
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


@needs_chromium
def test_live_points_band_fault_injection_agent_fleet_and_a_setpoint_change_marked(stack, chromium_page):
    from playwright.sync_api import expect

    watched = chromium_page()
    page = watched.page
    response = page.goto(stack)
    assert "script-src 'self'" in response.headers["content-security-policy"]
    expect(page.locator("#status")).to_have_text("live", timeout=30_000)
    # a function, not an expression: the page's CSP refuses the eval an expression needs
    page.wait_for_function("() => Number(document.body.dataset.points || 0) > 20", timeout=60_000)
    expect(page.locator("#reactor option")).to_have_count(2, timeout=30_000)
    # the flow's soft-sensor estimates (VCD, glucose between assays) reach the assay panel
    page.wait_for_function("() => (state.data[state.reactor]?.soft?.t?.length || 0) > 0", timeout=30_000)
    # each signal against its recipe's reference band, from the run's first tick
    page.wait_for_function("() => Number(document.body.dataset.band || 0) > 0", timeout=30_000)
    expect(page.locator("#band-note")).to_contain_text("golden trajectory")
    expect(page.locator("#recipe")).to_contain_text("default recipe")
    expect(page.locator("#fleet tbody tr")).to_have_count(2, timeout=15_000)
    expect(page.locator("#fleet tbody tr.normal")).to_have_count(2)
    first = page.eval_on_selector("#reactor", "s => s.value")

    page.select_option("#fault-name", "temperature_spike")
    page.fill("#fault-mag", "4")
    page.fill("#fault-dur", "8")
    page.click("#fault-form button")
    expect(page.locator("#control-msg")).to_contain_text("fault temperature_spike sent", timeout=10_000)

    expect(page.locator("#incidents li[data-id]").first).to_be_visible(timeout=90_000)
    expect(page.locator("#agent")).to_contain_text("opened on", timeout=30_000)
    expect(page.locator("#agent")).to_contain_text(re.compile("Most likely cause|Insufficient evidence"),
                                                   timeout=60_000)
    # a question to the agents from the page: the answer streams in under it (POST /api/chat)
    page.fill("#chat-q", "why did the temperature rise?")
    page.click("#chat-form button")
    expect(page.locator("#agent p.q")).to_contain_text("why did the temperature rise?")
    expect(page.locator("#agent p.q + p.chunk")).to_be_visible(timeout=60_000)
    expect(page.locator("#agent")).not_to_contain_text("chat failed")
    page.wait_for_timeout(1500)  # let the plots catch up for the picture
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # the fleet: the reactor with the open incident first, and one click opens the other
    expect(page.locator("#fleet tbody tr").first).to_have_attribute("data-reactor", first, timeout=30_000)
    expect(page.locator("#fleet tbody tr").first).to_have_class(re.compile("warning|critical"))
    expect(page.locator("#fleet tbody tr").first).to_contain_text("temp_c")
    page.locator("#fleet tbody tr").nth(1).click()
    other = page.eval_on_selector("#reactor", "s => s.value")
    assert other != first and page.url.endswith(f"#{other}")

    # lower its DO setpoint from the page: the change is marked on the time axis and the band follows it
    page.select_option("#sp-name", "do_setpoint_pct")
    page.fill("#sp-value", "30")
    page.click("#setpoint-form button")
    expect(page.locator("#control-msg")).to_contain_text("setpoint sent", timeout=10_000)
    expect(page.locator("#annotations")).to_contain_text("DO setpoint lowered to 30", timeout=60_000)
    page.wait_for_function("() => Number(document.body.dataset.markers || 0) > 0", timeout=10_000)
    expect(page.locator("#recipe")).to_contain_text("DO setpoint lowered to 30")
    page.wait_for_timeout(5000)  # a few simulated hours after the change, for the picture
    page.screenshot(path=str(SCREENSHOTS / "reference_band.png"), full_page=True)
    expect(page.locator("#fleet tbody tr").nth(1)).to_contain_text("DO setpoint lowered to 30", timeout=10_000)
    page.locator("section.overview").screenshot(path=str(SCREENSHOTS / "fleet.png"))
    assert watched.csp_violations == []  # the page, uPlot included, lives within its own policy
