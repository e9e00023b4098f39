"""python -m ftexp.ui in headless Chromium (the system package, driven by Playwright, as the report's
browser test does): a misspelt key shows the CLI's did-you-mean before anything launches; choosing
model=tiny_llama, task=causal_lm, adapter=lora and a step budget launches the CLI, the run
finishes, its loss curve is drawn, it is in the runs table and its report opens; a chat message
gets a reply. FTEXP_UI_SCREENSHOTS=<folder> saves the pages there (`make ui-screenshots`: docs/)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_report_browser import CHROMIUM_ARGS, chromium

pytest.importorskip("gradio")
pytestmark = pytest.mark.slow

RUN_TIMEOUT_MS = 240_000
# A coloured line drawn through at least two points (vega's path of a line mark) inside `root`.
DRAWN_LINE = """root => [...document.querySelectorAll(root + ' path[aria-roledescription="line mark"]')]
    .some(p => /L/.test(p.getAttribute('d')) && (p.getAttribute('stroke') || 'none') !== 'none')"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def ui(tmp_path: Path):
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log = (tmp_path / "ui.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "ftexp.ui", "--port", str(port),
                               "--runs-dir", str(tmp_path / "runs"), "--ui-dir", str(tmp_path / "ui")],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            assert server.poll() is None, (tmp_path / "ui.log").read_text()
            assert time.monotonic() < deadline, "the UI did not start in 120 s"
            time.sleep(0.5)
    yield url, tmp_path
    server.terminate()
    server.wait(timeout=60)
    log.close()


def _choose(page, elem_id: str, option: str, multiselect: bool = False) -> None:
    """Pick an option of a Gradio dropdown as a user does: open it, type, click the option."""
    from playwright.sync_api import expect

    box = page.locator(f"#{elem_id} input")
    box.click()
    box.fill(option)
    page.get_by_role("option", name=option, exact=True).click()
    if multiselect:  # the choice becomes a token beside the input
        expect(page.locator(f"#{elem_id} .token")).to_contain_text(option)
    else:
        expect(box).to_have_value(option)


def _shoot(page, name: str) -> None:
    folder = os.environ.get("FTEXP_UI_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.wait_for_timeout(1500)  # plots finish drawing (a full-page shot would resize and redraw them)
        page.screenshot(path=str(Path(folder) / f"ui_{name}.png"))


def test_compose_launch_watch_compare_and_chat_in_the_browser(ui):
    browser_path = chromium()
    if browser_path is None:
        pytest.skip("no Chromium found (/usr/bin/chromium or on PATH); `make browser` installs it")
    from playwright.sync_api import expect, sync_playwright

    url, tmp_path = ui
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(url, wait_until="load")
            expect(page.locator("#config")).to_contain_text("model:", timeout=60_000)

            # A misspelt key: the CLI's one line, before any launch.
            page.locator("#overrides textarea").fill("trainer.max_stepz=3")
            page.locator("#launch-button").click()
            expect(page.locator("#compose-error")).to_contain_text("Did you mean 'trainer.max_steps'?",
                                                                   timeout=30_000)
            assert not (tmp_path / "runs").exists()

            for group, option in (("model", "tiny_llama"), ("task", "causal_lm"), ("adapter", "lora"),
                                  ("data", "code_alpaca"), ("trainer", "smoke")):
                _choose(page, f"group-{group}", option)
            page.locator("#overrides textarea").fill("trainer.max_steps=4 trainer.precision=32")
            page.locator("#compose-button").click()
            expect(page.locator("#command textarea")).to_have_value(
                "python -m ftexp model=tiny_llama task=causal_lm adapter=lora data=code_alpaca trainer=smoke "
                "trainer.max_steps=4 trainer.precision=32", timeout=30_000)
            expect(page.locator("#compose-error")).not_to_contain_text("Cannot run")
            expect(page.locator("#config")).to_contain_text("name_or_path: random-init")
            _choose(page, "key-group", "adapter")  # the chosen adapter's keys, as composed
            expect(page.locator("#keys")).to_contain_text("lora_alpha")
            _shoot(page, "compose")

            page.locator("#launch-button").click()
            expect(page.locator("#run-status")).to_contain_text("finished", timeout=RUN_TIMEOUT_MS)
            page.wait_for_function(DRAWN_LINE, arg="#loss-curves", timeout=30_000)
            expect(page.locator("#log textarea")).not_to_have_value("")
            _shoot(page, "run")

            run_name = next((tmp_path / "runs").iterdir()).name
            page.get_by_role("tab", name="Runs & compare").click()
            table = page.locator("#runs-table")
            expect(table).to_contain_text(run_name, timeout=30_000)
            expect(table).to_contain_text("tiny_llama")
            _choose(page, "compare-picker", run_name, multiselect=True)
            page.locator("#compare-button").click()
            expect(page.locator("#report-summary")).to_contain_text(run_name, timeout=60_000)
            report = page.frame_locator("#report-frame")
            expect(report.locator("body")).to_contain_text(run_name, timeout=30_000)
            _shoot(page, "compare")

            page.get_by_role("tab", name="Chat").click()
            expect(page.locator("#chat-run input")).to_have_value(run_name, timeout=30_000)
            page.locator("#chat-message textarea").fill("Write a loop in Python.")
            page.locator("#chat-message textarea").press("Enter")
            bot = page.locator("#chatbot .message-row.bot-row, #chatbot [data-testid='bot']")
            expect(bot.first).to_be_visible(timeout=60_000)
            _shoot(page, "chat")
        finally:
            browser.close()
    assert problems == []
