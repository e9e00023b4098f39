"""report.html opened in headless Chromium (the system package, driven by Playwright; `make
browser` installs it): the page loads from file:// without asking the network for anything, runs
without console or page errors, every figure container holds a plot plotly drew (`svg.main-svg`),
and the configurations table, the paired-test sentences, the per-class table and the examples
the configurations disagree on are on the page as a reader sees them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ftexp.report import write_report
from test_report_stats import FAR_A, FAR_B, classifier_run

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str | None:
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    names = ("chromium", "chromium-browser", "google-chrome")
    return next((shutil.which(n) for n in names if shutil.which(n)), None)


def test_report_page_draws_every_figure_and_shows_the_statistics(tmp_path: Path):
    browser_path = chromium()
    if browser_path is None:
        pytest.skip("no Chromium found (/usr/bin/chromium or on PATH); `make browser` installs it "
                    "(Debian: apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    runs = [classifier_run(tmp_path / "runs" / "a" / f"seed_{s}", FAR_A, group="lora", seed=s,
                           adapter__method="lora") for s in range(2)]
    runs.append(classifier_run(tmp_path / "runs" / "b", FAR_B, group="none", adapter__method="none"))
    html = write_report([tmp_path / "runs" / "a", tmp_path / "runs" / "b"], tmp_path / "report")[0]

    problems, requested = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: requested.append(r.url))
            page.goto(html.as_uri(), wait_until="load")
            figures = page.locator("div.figure")
            count = figures.count()
            page.wait_for_function("n => document.querySelectorAll('div.figure svg.main-svg').length >= n "
                                   "&& [...document.querySelectorAll('div.figure')].every("
                                   "f => f.querySelector('svg.main-svg'))", arg=count, timeout=30_000)
            marks = "svg.main-svg .trace, svg.main-svg .hm, svg.main-svg .parcoords"
            script = f"f => [f.closest('section').id, f.querySelectorAll('{marks}').length]"
            drawn = [figures.nth(i).evaluate(script) for i in range(count)]
            seeds = page.locator("#cmp-seeds table tbody tr").all_inner_texts()
            sentences = page.locator("#cmp-paired ul.sentences li").all_inner_texts()
            per_class = page.locator("#cmp-classes table tbody tr").all_inner_texts()
            disagreements = page.locator("#cmp-disagreements table tbody tr").all_inner_texts()
            visible = page.locator("#cmp-paired").is_visible()
        finally:
            browser.close()

    assert problems == []
    assert [u for u in requested if not u.startswith("file://")] == []  # opens offline
    sections = [section for section, _ in drawn]
    assert {"history", "cmp-confusion", "cmp-calibration"} <= set(sections), sections
    # Each plot holds drawn data (scatter / bar traces, heatmaps), not only axes.
    assert all(marks > 0 for _, marks in drawn), drawn
    assert len(seeds) == 2 and seeds[0].startswith("A\t") and "\t2\t" in seeds[0] and "±" in seeds[0]
    # 2 seeds against 1: the seed permutation test cannot go below p = 1/3, so no verdict.
    assert visible and any(s.startswith("A vs B: +7.5 accuracy points (95% CI +") and
                           s.endswith("p = 0.33 — within noise.") for s in sentences), sentences
    assert len(per_class) == 3 * 2  # 3 runs × 2 classes
    assert len(disagreements) == 20 + 5 and any("review number 29" in row for row in disagreements)
