"""`python -m ftexp.report <sweep or run dirs…> [--out DIR] [--wandb]`: compare runs.

Writes `report.html` (self-contained: plotly figures with plotly.js inlined once, opens offline)
and `report.md` (the same tables and facts) to `--out` (default: `<path>/report` for one path,
else `outputs/reports/<date>_<time>`). Sections: the best trial, a table of trials (the
overrides that differ, objectives, metrics, state, duration, peak memory, trainable
parameters), optimization history, parameter importances, parallel coordinates, the Pareto
front (two or more objectives) and learning curves of the top runs. Runs that differ only in
seed form one configuration: each gets mean ± std and a bootstrap CI over its seeds, and
configurations are compared on the same test examples (paired bootstrap CIs, McNemar / permutation
p-values, a plain sentence each), with what changed between them, per-class scores, confusion
matrices, calibration and the examples they disagree on (reporting/comparisons.py). A sweep dir with an Optuna
study (`optuna.db`) is drawn with Optuna's own plots from the study; plain run dirs (a Hydra
multirun, single runs) get the same sections from an in-memory study built from them.
With `--wandb` the comparison is also published as a W&B Report (online only).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ftexp.reporting import ReportError
from ftexp.reporting.collect import Comparison, collect
from ftexp.runs import atomic
from ftexp.runs.errors import reported_as_one_line
from ftexp.runs.objective import Objective

HTML_FILE = "report.html"
MARKDOWN_FILE = "report.md"
COMPARISON_TITLE = "Configurations and paired tests"


def parse_objective(text: str) -> Objective:
    """`val/acc`, `val/acc:max` or `peak_memory_gib:min`; without a mode, the metric's own
    direction (ftexp.runs.objective.lower_is_better: losses, errors, memory, seconds, … are minimized)."""
    metric, _, mode = text.rpartition(":") if text.endswith((":max", ":min")) else (text, "", "")
    if not metric:
        raise ReportError(f"bad --objective '{text}': expected METRIC, METRIC:max or METRIC:min.")
    return Objective.for_metric(metric, mode or None)


def _default_out(paths: list[Path]) -> Path:
    if len(paths) == 1 and paths[0].is_dir():
        return paths[0] / "report"
    return Path("outputs") / "reports" / time.strftime("%Y-%m-%d_%H-%M-%S")


def build_page(comparisons: list[Comparison], paths: list[Path], out_dir: Path, top: int, title: str | None):
    from ftexp.reporting.comparisons import comparison_sections
    from ftexp.reporting.configurations import group_runs
    from ftexp.reporting.figures import fmt, sections
    from ftexp.reporting.render import Page, slug

    runs = [r for c in comparisons for r in c.runs]
    chips = [("trials", str(len(runs)))]
    chips += [(state, str(n)) for state in ("complete", "pruned", "failed", "running")
              if (n := sum(r.state == state for r in runs)) or state == "complete"]
    several = len(comparisons) > 1
    groups = []
    for comparison in comparisons:
        objectives = ", ".join(f"{o.metric} ({o.mode})" for o in comparison.objectives)
        best = comparison.best
        if not several:
            chips.append(("objective", objectives))
            if best is not None:
                chips.append(("best", f"{fmt(best.values[0])} at #{best.number}"))
        prefix = f"{slug(comparison.title)}-" if several else ""
        groups.append((comparison.title if several else "", prefix, sections(comparison, top, out_dir)))
    configurations = group_runs([r for c in comparisons for r in [*c.runs, *c.repeats]], paths)
    if len(configurations) > 1 or any(len(c.runs) > 1 for c in configurations):
        # Seeds and paired tests: a group of its own, after the trials the runs came from.
        groups.append((COMPARISON_TITLE, "cmp-",
                       comparison_sections(configurations, comparisons[0].objectives, paths)))
        chips.append(("configurations", str(len(configurations))))
    names = ", ".join(p.name or str(p) for p in paths)
    if title is None:
        title = f"ftexp report: {comparisons[0].title.removeprefix('Study ')}" if (
            len(comparisons) == 1 and comparisons[0].from_storage) else f"ftexp report: {names}"
    subtitle = (f"{', '.join(str(p) for p in paths)} · made {time.strftime('%Y-%m-%d %H:%M')}"
                + (f" · {len(comparisons)} comparisons" if several else ""))
    return Page(title, subtitle, chips, groups)


def write_report(paths: list[Path], out_dir: Path | None = None, objectives: list[Objective] | None = None,
                 top: int = 5, title: str | None = None, wandb: bool = False) -> tuple[Path, Path]:
    """Collect, render and write the report; (html path, markdown path)."""
    from ftexp.reporting import wandb_report
    from ftexp.reporting.render import to_html, to_markdown

    if wandb:
        wandb_report.check_can_publish()
    comparisons = collect(paths, objectives)
    if wandb:  # everything W&B needs is checked before anything is written
        entity, project = wandb_report.connect(comparisons)
    out_dir = out_dir or _default_out(paths)
    page = build_page(comparisons, paths, out_dir, top, title)
    html, markdown = to_html(page), to_markdown(page, HTML_FILE)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out_dir / HTML_FILE, html)
    atomic.write_text(out_dir / MARKDOWN_FILE, markdown)
    if wandb:
        summaries = [to_markdown(type(page)("", "", [], [group]), HTML_FILE) for group in page.groups]
        url = wandb_report.publish(comparisons, entity, project, page.title, summaries[:len(comparisons)],
                                   "\n".join(summaries[len(comparisons):]))
        print(f"W&B report: {url}")
    return out_dir / HTML_FILE, out_dir / MARKDOWN_FILE


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="ftexp-report", description="Compare runs: a self-contained HTML report and a Markdown summary "
        "of sweep dirs (with an Optuna study or plain Hydra multiruns) and run dirs.")
    parser.add_argument("paths", nargs="+", type=Path, help="sweep dirs, multirun dirs or run dirs")
    parser.add_argument("--out", type=Path, help="folder for report.html and report.md "
                        "(default: <path>/report for one path, else outputs/reports/<date>_<time>)")
    parser.add_argument("--objective", action="append", metavar="METRIC[:max|min]",
                        help="what runs are ranked by, repeatable (two give a Pareto front); default: "
                        "the runs' task.monitor. A sweep's study keeps its own objectives.")
    parser.add_argument("--top", type=int, default=5, help="learning curves of this many best runs (5)")
    parser.add_argument("--title", help="report title")
    parser.add_argument("--wandb", action="store_true",
                        help="also publish a W&B Report (needs WANDB_API_KEY)")
    args = parser.parse_args(argv)
    with reported_as_one_line():
        objectives = [parse_objective(o) for o in args.objective] if args.objective else None
        html, markdown = write_report(args.paths, args.out, objectives, max(args.top, 1), args.title,
                                      args.wandb)
    print(f"report: {html}\nsummary: {markdown}")


if __name__ == "__main__":
    from ftexp.runs.process import run_command

    run_command(main)  # main() reads sys.argv; then exits without the interpreter's teardown
