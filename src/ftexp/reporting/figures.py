"""The sections of a report for one comparison: tables, plotly figures, and short notes where a
section cannot be drawn (too few trials, nothing varied). Optuna's own plots and importance
evaluator draw from the comparison's study: the sweep's, or one built in memory from run dirs.

Seeds are replicates, not parameters: with repeats (configurations run under several seeds) the
best is the configuration with the best mean over its seeds, and `seed` is left out of the
importances and the parallel coordinates (their intro gives the seeds per configuration)."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftexp.reporting import stats
from ftexp.reporting.collect import REPLICATE_KEYS, Comparison, Run

FONT = "-apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#db2777", "#65a30d"]
# Metrics the trials table shows besides the objectives: the first _MAX_METRICS the runs have, by
# this priority, shown validation first.
_TABLE_METRICS = ("val/acc", "val/loss", "test/acc", "test/loss", "val/f1_macro", "test/f1_macro",
                  "val/perplexity", "test/perplexity", "val/mse", "test/mse", "val/r2", "test/r2",
                  "val/mae", "test/mae", "val/rewards/accuracy", "val/rewards/margin",
                  "test/rewards/accuracy", "val/accuracy", "val/margin", "test/accuracy")
# Preference runs (dpo / simpo / orpo / kto, reward): the margin between chosen and rejected
# gets its own panel beside the monitored metric and the training loss.
_MARGIN_METRICS = ("val/rewards/margin", "val/margin")
_MAX_METRICS = 4
_MAX_EVAL_METRICS = 3  # benchmark scores (eval/<task>/<metric>) shown besides them
PRUNED_COLOR = "#9ca3af"


@dataclass
class Cell:
    text: str
    kind: str = ""  # "" | num | state | param
    href: str | None = None


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell]]
    marked: set[int] = field(default_factory=set)  # rows to highlight (the best)


@dataclass
class Section:
    id: str
    title: str
    intro: str = ""
    facts: list[tuple[str, str]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sentences: list[str] = field(default_factory=list)  # plain-language findings, one per line


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3g}"
        return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.1f}"
    return str(value)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def fmt_count(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "–"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(int(n))


def _style(fig: Any, height: int = 420) -> Any:
    fig.update_layout(template="plotly_white", height=height, font=dict(family=FONT, size=13),
                      margin=dict(l=60, r=30, t=56, b=50), title_font=dict(size=15),
                      legend=dict(font=dict(size=11)))
    return fig


def _run_label(run: Run) -> str:
    """A sweep trial by its number, another run by its dir."""
    if run.trial.get("number") is not None:
        return f"trial {run.trial['number']}"
    if run.path is None:
        return f"trial {run.number}"
    return f"run {run.name}" if run.name.isdigit() else run.name


def _target(comparison: Comparison, index: int = 0) -> dict[str, Any]:
    """Optuna's plotting arguments for one objective of a (possibly multi-objective) study."""
    name = comparison.objectives[index].metric
    if len(comparison.objectives) == 1:
        return {"target_name": name}
    return {"target": lambda t: t.values[index], "target_name": name}


def _complete_trials(comparison: Comparison) -> list[Any]:
    from optuna.trial import TrialState

    return comparison.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _varied(comparison: Comparison) -> list[str]:
    """Parameters taking more than one value over the complete trials (a seed is no parameter)."""
    trials = _complete_trials(comparison)
    names = [k for k in dict.fromkeys(k for t in trials for k in t.params) if k not in REPLICATE_KEYS]
    return [k for k in names if len({repr(t.params.get(k)) for t in trials}) > 1]


def _seeds_text(comparison: Comparison) -> str:
    """'2 seeds per configuration' (or '1–3 seeds …'), '' without repeats."""
    if not comparison.has_repeats:
        return ""
    counts = sorted({len(g) for g in comparison.ranked_configurations()})
    shown = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"{shown} seeds per configuration"


def _seed_note(section: Section, comparison: Comparison) -> None:
    seeds = _seeds_text(comparison)
    if seeds:
        section.notes.append(f"seed is left out: it picks a replicate, not a setting ({seeds}).")


def best_section(comparison: Comparison, link: Any) -> Section:
    if comparison.has_repeats and len(comparison.objectives) == 1:
        return _best_configuration_section(comparison, link)
    section = Section("best", "Best trial" if len(comparison.objectives) == 1 else "Best trials")
    ranked = comparison.ranked()
    if not ranked:
        section.notes.append("No complete trial yet: nothing to rank.")
        return section
    if len(comparison.objectives) > 1:
        section.intro = "Pareto-optimal trials: no other trial is at least as good on every objective."
        section.tables.append(trials_table(comparison, link, only=_pareto_runs(comparison)))
        return section
    best = ranked[0]
    objective = comparison.objectives[0]
    # A sweep with repeats: the trial's value is the study's mean over its seeds.
    seeds = [best] + [r for r in comparison.repeats if best.trial.get("number") is not None
                      and r.trial.get("number") == best.trial.get("number")]
    section.facts = [("trial", _run_label(best)),
                     (objective.metric, f"{fmt(best.values[0])} ({objective.direction}"
                      + (f", mean over {len(seeds)} seeds)" if len(seeds) > 1 else ")"))]
    section.facts += [(k, fmt(v)) for k, v in best.params.items()]
    for metric in _metric_columns(comparison):
        found = [r.metrics[metric] for r in seeds if isinstance(r.metrics.get(metric), (int, float))]
        if found:
            section.facts.append((metric, _mean_sd(found)))
    section.facts += [("duration", fmt_duration(best.duration_s)),
                      ("peak memory", _memory(best)),
                      ("trainable parameters", fmt_count(best.metrics.get("trainable_params")))]
    if best.path is not None:
        section.facts.append(("run dir", str(best.path)))
    if len(ranked) > 1:
        gap = abs(ranked[0].values[0] - ranked[1].values[0])  # type: ignore[operator]
        runner_up = _run_label(ranked[1])
        section.intro = (f"Ahead of the runner-up ({runner_up}) by {fmt(gap)} {objective.metric}." if gap
                         else f"Tied with {runner_up} on {objective.metric}; the earlier trial is shown.")
    return section


def _mean(values: list[Any]) -> float | None:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(numbers) / len(numbers) if numbers else None


def _mean_sd(values: list[float]) -> str:
    mean = sum(values) / len(values)
    if len(values) == 1:
        return fmt(mean)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{fmt(mean)} ± {fmt(sd)}"


def _best_configuration_section(comparison: Comparison, link: Any) -> Section:
    """With repeats: the configuration with the best mean objective over its seeds."""
    groups = comparison.ranked_configurations()
    runs, objective = groups[0], comparison.objectives[0]
    section = Section("best", "Best configuration")
    values = [r.values[0] for r in runs]
    section.facts = [("configuration", ", ".join(_run_label(r) for r in runs)),
                     ("seeds", str(len(runs))),
                     (objective.metric, f"{_mean_sd(values)} ({objective.direction}, mean ± sd over seeds)")]
    section.facts += [(k, fmt(v)) for k, v in runs[0].params.items() if k not in REPLICATE_KEYS]
    for metric in _metric_columns(comparison):
        found = [r.metrics[metric] for r in runs if isinstance(r.metrics.get(metric), (int, float))]
        if found:
            section.facts.append((metric, _mean_sd(found)))
    section.facts += [("duration", fmt_duration(_mean([r.duration_s for r in runs])) + " (mean)"),
                      ("peak memory", _memory(runs[0])),
                      ("trainable parameters", fmt_count(runs[0].metrics.get("trainable_params")))]
    section.facts += [("run dir", str(r.path)) for r in runs if r.path is not None]
    section.intro = (f"The best mean {objective.metric} over its {len(runs)} seeds (seeds are replicates: "
                     "the configurations over seeds and paired tests below say whether it is better "
                     "beyond noise).")
    if len(groups) > 1:
        gap = abs(comparison.best_value - sum(r.values[0] for r in groups[1]) / len(groups[1]))
        runner_up = ", ".join(_run_label(r) for r in groups[1])
        section.intro += f" Ahead of the runner-up configuration ({runner_up}) by {fmt(gap)}."
    return section


def _memory(run: Run) -> str:
    value = run.metrics.get("peak_memory_gib")
    return f"{value:.2f} GiB" if isinstance(value, (int, float)) else "–"


def _metric_columns(comparison: Comparison) -> list[str]:
    objectives = {o.metric for o in comparison.objectives}
    present = {k for r in comparison.runs for k in r.metrics}
    chosen = [m for m in _TABLE_METRICS if m in present and m not in objectives][:_MAX_METRICS]
    scores = sorted(k for k in present if k.startswith("eval/") and not k.endswith("_stderr")
                    and k not in objectives)
    return sorted(chosen, key=lambda m: (not m.startswith("val/"), _TABLE_METRICS.index(m))
                  ) + scores[:_MAX_EVAL_METRICS]


def _pareto_runs(comparison: Comparison) -> list[Run]:
    numbers = {t.number for t in comparison.study.best_trials}  # in-memory studies: number = place
    return [r for r in comparison.runs if r.number in numbers]


def trials_table(comparison: Comparison, link: Any, only: list[Run] | None = None) -> Table:
    params = comparison.param_names
    metrics = _metric_columns(comparison)
    headers = (["#", "run", "state"] + params + [o.metric + (" ↑" if o.sign > 0 else " ↓")
                                                 for o in comparison.objectives]
               + metrics + ["duration", "peak memory", "trainable params"])
    groups = comparison.ranked_configurations() if len(comparison.objectives) == 1 else []
    best = {id(r) for r in groups[0]} if groups else set()  # with repeats: every seed of the best
    table = Table(headers, [])
    for run in only if only is not None else comparison.runs:
        if id(run) in best:
            table.marked.add(len(table.rows))
        row = [Cell(str(run.number), "num"), Cell(run.name, href=link(run.path) if run.path else None),
               Cell(run.state, "state")]
        row += [Cell(fmt(run.params.get(k)), "param") for k in params]
        row += [Cell(fmt(v), "num") for v in (run.values or [None] * len(comparison.objectives))]
        row += [Cell(fmt(run.metrics.get(m)), "num") for m in metrics]
        row += [Cell(fmt_duration(run.duration_s), "num"), Cell(_memory(run), "num"),
                Cell(fmt_count(run.metrics.get("trainable_params")), "num")]
        table.rows.append(row)
    return table


def runs_section(comparison: Comparison, link: Any) -> Section:
    counts = ", ".join(f"{comparison.count(s)} {s}" for s in ("complete", "pruned", "failed", "running")
                       if comparison.count(s) or s in ("complete", "failed"))
    section = Section("trials", "Trials", intro=f"{_plural(len(comparison.runs), 'trial')}: {counts}. "
                      + ("Parameters are the overrides that differ between runs." if comparison.param_names
                         else "No parameter differs between the runs."))
    section.tables.append(trials_table(comparison, link))
    section.notes += comparison.notes
    return section


def history_section(comparison: Comparison) -> Section:
    import optuna.visualization as vis

    section = Section("history", "Optimization history")
    complete = _complete_trials(comparison)
    ranked = comparison.ranked()
    if ranked:
        first = comparison.objectives[0]
        section.intro = (f"{first.metric}: best {fmt(ranked[0].values[0])}, first reached by "
                         f"{_run_label(ranked[0])} ({_plural(len(comparison.runs), 'trial')}).")
    if len(complete) < 2:
        section.notes.append(f"A history needs at least 2 complete trials (here: {len(complete)}).")
        return section
    for index, objective in enumerate(comparison.objectives):
        fig = vis.plot_optimization_history(comparison.study, **_target(comparison, index))
        fig.update_layout(title=f"{objective.metric} by trial ({objective.direction})")
        if len(comparison.runs) <= 25:
            fig.update_xaxes(dtick=1)
        section.figures.append(_style(fig, 380 if len(comparison.objectives) == 1 else 320))
    return section


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _varied_or_note(section: Section, comparison: Comparison, what: str) -> list[str]:
    """The parameters that vary between complete trials, or [] with a note on the section when
    there are fewer than 2 complete trials or none varies."""
    _seed_note(section, comparison)
    complete, varied = _complete_trials(comparison), _varied(comparison)
    if len(complete) < 2 or not varied:
        section.notes.append(f"{what} need at least 2 complete trials and a parameter that varies "
                             f"between them (here: {len(complete)} complete, {len(varied)} varied).")
        return []
    return varied


def importance_section(comparison: Comparison) -> Section:
    import optuna
    import optuna.visualization as vis

    section = Section("importance", "Parameter importances")
    varied = _varied_or_note(section, comparison, "Importances")
    if not varied:
        return section
    section.intro = ("How much each parameter explains the objective: Optuna's default evaluator "
                     "(PED-ANOVA), normalised to sum to 1. Few trials make it a rough guide.")
    rows = []
    for index, objective in enumerate(comparison.objectives):
        target = None  # one objective: the study's direction applies
        if len(comparison.objectives) > 1:  # the evaluator takes a target as lower-is-better
            def target(t: Any, i: int = index, sign: int = objective.sign) -> float:
                return -sign * t.values[i]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                values = optuna.importance.get_param_importances(comparison.study, params=varied,
                                                                 target=target)
                fig = vis.plot_param_importances(comparison.study, params=varied, target=target,
                                                 target_name=objective.metric)
        except (ValueError, RuntimeError) as err:
            section.notes.append(f"Importances for {objective.metric}: {str(err).splitlines()[0]}")
            continue
        fig.update_layout(title=f"Importance for {objective.metric}")
        section.figures.append(_style(fig, 120 + 40 * len(varied)))
        rows += [[Cell(objective.metric), Cell(name, "param"), Cell(f"{value:.3f}", "num")]
                 for name, value in values.items()]
    if rows:
        section.tables.append(Table(["objective", "parameter", "importance"], rows))
    return section


def parallel_section(comparison: Comparison) -> Section:
    import optuna.visualization as vis

    section = Section("parallel", "Parallel coordinates")
    varied = _varied_or_note(section, comparison, "Parallel coordinates")
    if not varied:
        return section
    first = comparison.objectives[0].metric
    section.intro = f"One line per complete trial, through its parameters to {first} (its colour)."
    for index, objective in enumerate(comparison.objectives[:1]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = vis.plot_parallel_coordinate(comparison.study, params=varied, **_target(comparison, index))
        fig.update_layout(title=f"Parameters and {objective.metric}")
        section.figures.append(_style(fig, 420))
    return section


def pareto_section(comparison: Comparison, link: Any) -> Section:
    import optuna.visualization as vis

    names = [o.metric for o in comparison.objectives]
    section = Section("pareto", "Pareto front", intro=f"Trade-off between {' and '.join(names)}; "
                      "Pareto-optimal trials are those no other trial beats on every objective.")
    if not _complete_trials(comparison):
        section.notes.append("No complete trial: no front to draw.")
        return section
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig = vis.plot_pareto_front(comparison.study, target_names=names[:3])
    fig.update_traces(marker=dict(size=11, line=dict(width=1, color="#374151")))
    fig.update_layout(title=f"Pareto front: {' vs '.join(names[:3])}")
    section.figures.append(_style(fig, 460))
    section.tables.append(trials_table(comparison, link, only=_pareto_runs(comparison)))
    return section


def _curves(run: Run) -> Any:
    import pandas as pd

    path = run.path / "csv" / "metrics.csv" if run.path is not None else None
    if path is None or not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError):
        return None


def curves_section(comparison: Comparison, top: int) -> Section:
    from plotly.subplots import make_subplots

    ranked = comparison.ranked()
    pruned = [r for r in comparison.runs if r.state == "pruned"]
    chosen = ranked[:top] + pruned[:top]
    metric = comparison.curve_metric
    section = Section("curves", "Learning curves",
                      intro=f"{metric} at each evaluation and training loss at each logged step, for the "
                            f"top {_plural(min(top, len(ranked)), 'trial')} (best first)"
                            + (f" and {min(top, len(pruned))} pruned (grey, dotted)." if pruned else "."))
    frames = [(i, run, _curves(run)) for i, run in enumerate(chosen)]
    frames = [(i, run, frame) for i, run, frame in frames if frame is not None and "step" in frame]
    margin = next((m for m in _MARGIN_METRICS if m != metric and any(m in f for _, _, f in frames)), None)
    titles = (f"{metric} vs step", "train loss vs step") + ((f"{margin} vs step",) if margin else ())
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.08)
    rows, drawn = [], 0
    for i, run, frame in frames:
        pruned_run = run.state == "pruned"
        color = PRUNED_COLOR if pruned_run else COLORS[i % len(COLORS)]
        label = _run_label(run) + (" (pruned)" if pruned_run else "")
        val = frame[["step", metric]].dropna() if metric in frame else None
        loss_col = next((c for c in ("train/loss_step", "train/loss") if c in frame), None)
        loss = frame[["step", loss_col]].dropna() if loss_col else None
        dash = "dot" if pruned_run else "solid"
        if val is not None and len(val):
            fig.add_scatter(x=val["step"], y=val[metric], mode="lines+markers", name=label, legendgroup=label,
                            line=dict(color=color, dash=dash), row=1, col=1)
        if loss is not None and len(loss):
            fig.add_scatter(x=loss["step"], y=loss[loss_col], mode="lines", name=label, legendgroup=label,
                            showlegend=val is None or not len(val),
                            line=dict(color=color, dash=dash, width=1.5),
                            opacity=0.85, row=1, col=2)
        gap = frame[["step", margin]].dropna() if margin and margin in frame else None
        if gap is not None and len(gap):
            fig.add_scatter(x=gap["step"], y=gap[margin], mode="lines+markers", name=label, legendgroup=label,
                            showlegend=False, line=dict(color=color, dash=dash), row=1, col=3)
        drawn += 1
        last_val = float(val[metric].iloc[-1]) if val is not None and len(val) else None
        last_loss = float(loss[loss_col].iloc[-1]) if loss is not None and len(loss) else None
        rows.append([Cell(_run_label(run)), Cell(run.state, "state"),
                     Cell(str(int(frame["step"].max())), "num"), Cell(fmt(last_val), "num"),
                     Cell(fmt(last_loss), "num")])
    if not drawn:
        section.notes.append("No run has a csv/metrics.csv (logger=csv) to draw curves from.")
        return section
    fig.update_xaxes(title_text="step")
    section.figures.append(_style(fig, 430))
    section.tables.append(Table(["trial", "state", "last step", f"last {metric}", "last train loss"], rows))
    return section


def sections(comparison: Comparison, top: int, out_dir: Path) -> list[Section]:
    """Every section of one comparison, in reading order."""
    def link(path: Path | None) -> str | None:
        return os.path.relpath(path, out_dir) if path is not None else None

    found = [best_section(comparison, link), runs_section(comparison, link), history_section(comparison),
             importance_section(comparison), parallel_section(comparison)]
    if len(comparison.objectives) > 1:
        found.append(pareto_section(comparison, link))
    found.append(curves_section(comparison, top))
    return found


def difference_cells(diff: stats.Difference) -> list[Cell]:
    """A − B, CI low, CI high, p, test."""
    return [Cell(fmt(diff.estimate * diff.scale), "num"), Cell(fmt(diff.low * diff.scale), "num"),
            Cell(fmt(diff.high * diff.scale), "num"), Cell(stats.fmt_p(diff.p_value), "num"),
            Cell(diff.test or "–")]
