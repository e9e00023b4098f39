"""Publish a report's comparison as a W&B Report (W&B workspaces API), when online.

Online means WANDB_API_KEY is set (and WANDB_MODE is not offline / disabled). The runs must have
been logged with `logger=wandb` (their run dirs keep `wandb_run_id`) and synced to W&B; the report
shows them by id, grouped by the runs' `group` (the seeds of one configuration): the summary
table, parallel coordinates, parameter importance, learning curves and, with two objectives,
their scatter plot; then the configurations over seeds and the paired tests, as Markdown.
"""

from __future__ import annotations

import os
from typing import Any

from ftexp.reporting import ReportError
from ftexp.reporting.collect import Comparison

API_TIMEOUT_S = 30


def offline_reason(environ: dict[str, str] | None = None) -> str | None:
    """Why a W&B report cannot be published from here, or None when it can be tried."""
    env = os.environ if environ is None else environ
    if not env.get("WANDB_API_KEY"):
        return "WANDB_API_KEY is not set"
    if env.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled"):
        return f"WANDB_MODE={env['WANDB_MODE']}"
    return None


def check_can_publish(environ: dict[str, str] | None = None) -> None:
    """Raise a one-line ReportError when offline or without the workspaces package, before the
    report writes anything."""
    reason = offline_reason(environ)
    if reason:
        raise ReportError(f"--wandb: W&B is offline here ({reason}); no W&B report made and nothing "
                          f"written. Drop --wandb for the local report, or set WANDB_API_KEY.")
    try:
        import wandb_workspaces.reports.v2  # noqa: F401
    except ImportError as err:
        raise ReportError("--wandb needs the W&B workspaces API: pip install wandb-workspaces.") from err


def _wandb_place(logger: dict[str, Any]) -> tuple[str | None, str]:
    """(entity, project) from a run's saved `logger` config: the `wandb` node, or the flat
    `wandb_entity` / `wandb_project` keys of run dirs written before loggers were nodes."""
    node = logger.get("wandb")
    if isinstance(node, dict):
        return node.get("entity"), node.get("project") or "ftexp"
    return logger.get("wandb_entity"), logger.get("wandb_project") or "ftexp"


def logged_runs(comparisons: list[Comparison]) -> tuple[str | None, str, list[str]]:
    """(entity, project, W&B run ids) of the runs that logged to W&B; ReportError when none did
    or when they logged to several projects."""
    ids, places = [], set()
    for comparison in comparisons:
        for run in comparison.runs:
            if run.wandb_id:
                ids.append(run.wandb_id)
                places.add(_wandb_place(run.config.get("logger") or {}))
    if not ids:
        raise ReportError("--wandb: none of these runs logged to W&B (train with logger=wandb, then "
                          "`wandb sync` offline runs); nothing written.")
    if len(places) > 1:
        raise ReportError(f"--wandb: the runs logged to several W&B projects ({sorted(map(str, places))}); "
                          f"report on one project at a time. Nothing written.")
    entity, project = places.pop()
    return entity, project, ids


def build_report(comparisons: list[Comparison], entity: str, project: str, title: str,
                 summaries: list[str], configurations: str = "") -> Any:
    """The W&B Report object (nothing is sent): per comparison, its Markdown summary and a panel
    grid over its runs, grouped by the runs' `group` (seeds of one configuration) where they have
    one; then `configurations`, the Markdown of the seeds table and paired tests."""
    import wandb_workspaces.reports.v2 as wr

    blocks: list[Any] = [wr.P(f"Made by ftexp.report from {sum(len(c.runs) for c in comparisons)} runs.")]
    for comparison, summary in zip(comparisons, summaries, strict=True):
        ids = [r.wandb_id for r in comparison.runs if r.wandb_id]
        if not ids:
            continue
        metrics = [o.metric for o in comparison.objectives]
        params = [p for p in comparison.param_names if "." in p]  # config values, not group choices
        panels: list[Any] = [
            wr.ParallelCoordinatesPlot(columns=[wr.ParallelCoordinatesPlotColumn(metric=wr.Config(p))
                                                for p in params]
                                       + [wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(m))
                                          for m in metrics]),
            wr.ParameterImportancePlot(with_respect_to=metrics[0]),
            wr.LinePlot(title=f"{metrics[0]} vs step", x="trainer/global_step", y=[metrics[0]]),
            wr.LinePlot(title="train loss vs step", x="trainer/global_step", y=["train/loss_step"]),
            wr.RunComparer(diff_only="split"),
        ]
        if len(metrics) > 1:
            panels.insert(1, wr.ScatterPlot(title=f"{metrics[0]} vs {metrics[1]}",
                                            x=wr.SummaryMetric(metrics[0]), y=wr.SummaryMetric(metrics[1])))
        grouped = any(r.config.get("group") for r in comparison.runs if r.wandb_id)
        runset = wr.Runset(entity=entity, project=project, name=comparison.title or "runs",
                           filters=f"Metric('ID') in {ids!r}", groupby=["config.group"] if grouped else [])
        if comparison.title:
            blocks.append(wr.H2(comparison.title))
        blocks += [wr.MarkdownBlock(summary), wr.PanelGrid(runsets=[runset], panels=panels)]
    if configurations:
        blocks.append(wr.MarkdownBlock(configurations))
    return wr.Report(project=project, entity=entity, title=title[:128],
                     description="Trials, best trial, importances and learning curves (ftexp.report).",
                     blocks=blocks, width="fluid")


def connect(comparisons: list[Comparison]) -> tuple[str, str]:
    """(entity, project) after checking the key with W&B, within a bounded time (W&B's own
    default waits much longer when the network is down); ReportError when that fails."""
    entity, project, _ = logged_runs(comparisons)
    try:
        import wandb

        default_entity = wandb.Api(timeout=API_TIMEOUT_S).default_entity
    except Exception as err:  # no network, a bad key, the API
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ReportError(f"--wandb: cannot reach W&B ({reason}); nothing written.") from err
    return entity or default_entity, project


def publish(comparisons: list[Comparison], entity: str, project: str, title: str,
            summaries: list[str], configurations: str = "") -> str:
    """Save the report to W&B; its URL."""
    try:
        report = build_report(comparisons, entity, project, title, summaries, configurations)
        report.save()
    except Exception as err:  # network, auth, API: one line; the local report stays as written
        raise ReportError(f"--wandb: publishing the W&B report failed: {str(err).splitlines()[0]}") from err
    return report.url
