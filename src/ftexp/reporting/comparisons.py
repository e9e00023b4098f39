"""The report's research sections: configurations over seeds (mean ± std, bootstrap CI), paired
tests between configurations on the same test examples, what changed between them (config,
environment, test set), and, for classifiers, per-class scores, confusion matrices, calibration
and the examples where configurations disagree; for language models, sample generations side by
side and per-example loss differences.

Which pairs: with several paths given (`ftexp-report A B C`), the first configuration against
each other; with one path (a sweep or multirun dir), the best configuration by the mean of the
objective against each other. The seeds of a configuration are its replicates: a paired test
compares the mean over each side's runs, resampling seeds and examples (stats, replicates). The
per-example listings (disagreements, loss differences) show the seeds pooled per example
(configurations.pool: majority vote, mean loss). Benchmark scores (lm-evaluation-harness) have
sections of their own (benchmarks).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ftexp.reporting import replicates, stats
from ftexp.reporting.benchmarks import benchmark_sections
from ftexp.reporting.collect import Run, objective_value
from ftexp.reporting.configurations import Configuration, differing, pool
from ftexp.reporting.examples import CLASSIFICATION, LANGUAGE_MODEL, REGRESSION, environment, generations
from ftexp.reporting.figures import COLORS, Cell, Section, Table, _style, difference_cells, fmt
from ftexp.runs.objective import Objective

# Metrics the seeds table shows after the objectives, the first _MAX_METRICS present.
_SEED_METRICS = ("test/acc", "test/f1_macro", "test/mae", "test/mse", "test/r2", "test/loss",
                 "test/perplexity", "val/acc", "val/f1_macro", "val/loss", "val/perplexity")
_MAX_METRICS = 4
MAX_PAIRS = 12
MAX_DISAGREEMENTS = 20  # examples listed per direction and pair
MAX_PAIRS_LISTED = 3  # pairs whose disagreements (and loss differences) are listed
MAX_RUNS_DRAWN = 8  # runs with a confusion matrix / calibration curve
MAX_TEXT = 160
_FEW_EXAMPLES = 30  # below this, percentile-bootstrap CIs undercover: the report says so


def _metrics(configurations: list[Configuration], objectives: list[Objective]) -> list[str]:
    present = {k for c in configurations for r in c.complete for k in r.metrics}
    chosen = [o.metric for o in objectives]
    chosen += [m for m in _SEED_METRICS if m in present and m not in chosen][:_MAX_METRICS]
    return chosen


def _spread_text(spread: stats.Spread) -> str:
    if spread.n == 0:
        return "–"
    if spread.std is None:
        return fmt(spread.mean)
    return f"{fmt(spread.mean)} ± {fmt(spread.std)} [{fmt(spread.low)}, {fmt(spread.high)}]"


def seeds_section(configurations: list[Configuration], objectives: list[Objective]) -> Section:
    metrics = _metrics(configurations, objectives)
    section = Section("seeds", "Configurations over seeds", intro=(
        "One row per configuration (runs that differ only in seed). Each metric: mean ± sample std "
        f"over the seeds [{round(stats.CONFIDENCE * 100)}% percentile-bootstrap CI of the mean]; one "
        "seed shows its value alone. With few seeds the CI is coarse: it shows the spread, more seeds "
        "narrow it."))
    table = Table(["", "configuration", "group", "seeds"] + metrics, [])
    for c in configurations:
        row = [Cell(c.letter), Cell(c.label, "param"), Cell(c.group or "–", "param"),
               Cell(f"{len(c.complete)}" + (f" of {len(c.runs)}" if len(c.complete) != len(c.runs) else ""),
                    "num")]
        for metric in metrics:
            values = [objective_value(r.metrics, metric) for r in c.complete]
            row.append(Cell(_spread_text(stats.seed_spread([v for v in values if v is not None])), "num"))
        table.rows.append(row)
    section.tables.append(table)
    return section


def _objective_mean(c: Configuration, objective: Objective) -> float | None:
    values = [v for r in c.complete if (v := objective_value(r.metrics, objective.metric)) is not None]
    return float(np.mean(values)) if values else None


def reference(configurations: list[Configuration], objective: Objective,
              several_paths: bool) -> Configuration:
    if several_paths:
        return configurations[0]
    scored = [(m, c) for c in configurations if (m := _objective_mean(c, objective)) is not None]
    if not scored:
        return configurations[0]
    return max(scored, key=lambda mc: objective.sign * mc[0])[1]


def _pairable(a: Any, b: Any) -> str | None:
    """Why two pooled outputs cannot be paired, or None."""
    if a.kind != b.kind:
        return f"one is {a.kind}, the other {b.kind}"
    if a.fingerprint != b.fingerprint:
        return f"different test sets (fingerprints {a.fingerprint} and {b.fingerprint})"
    if a.kind == CLASSIFICATION and a.classes != b.classes:
        return "different label sets"
    return None


def paired_differences(ref: Configuration, other: Configuration, notes: list[str]) -> tuple[Any, Any, list]:
    """(pooled A, pooled B, differences), or a note and empty differences. The differences pair
    each side's runs (seeds) on the same examples; the pooled outputs are for the listings."""
    a_examples, a_notes = ref.paired_examples()
    b_examples, b_notes = other.paired_examples()
    notes += [n for n in a_notes + b_notes if n not in notes]
    a, b = pool(a_examples), pool(b_examples)
    if a is None or b is None:
        missing = ", ".join(c.letter for c, p in ((ref, a), (other, b)) if p is None)
        notes.append(f"{ref.letter} vs {other.letter}: not paired, {missing} kept no per-example outputs "
                     "this report pairs (single-label or regression predictions_test.csv, causal-LM "
                     "losses_test.jsonl).")
        return a, b, []
    reason = _pairable(a.examples, b.examples)
    if reason:
        notes.append(f"{ref.letter} vs {other.letter}: not paired, {reason}.")
        return a, b, []
    x = a.examples
    fixed = (ref.fixed, other.fixed)
    if x.kind == CLASSIFICATION:
        found = stats.compare_classification(x.truth, np.stack([e.pred for e in a_examples]),
                                             np.stack([e.pred for e in b_examples]), len(x.classes),
                                             fixed=fixed)
    elif x.kind == REGRESSION:
        found = stats.compare_regression(x.truth, np.stack([e.pred for e in a_examples]),
                                         np.stack([e.pred for e in b_examples]))
    else:
        found = [stats.compare_per_example("loss", np.stack([e.losses for e in a_examples]),
                                           np.stack([e.losses for e in b_examples]), fixed=fixed)]
    note = replicates.seed_note(f"{ref.letter} vs {other.letter}", len(a_examples), len(b_examples), fixed)
    if note and note not in notes:
        notes.append(note)
    return a, b, found


def _pairs(configurations: list[Configuration],
           ref: Configuration) -> list[tuple[Configuration, Configuration]]:
    return [(ref, c) for c in configurations if c is not ref][:MAX_PAIRS]


def paired_section(configurations: list[Configuration], objectives: list[Objective], several_paths: bool,
                   results: dict[tuple[str, str], tuple[Any, Any, list]]) -> Section:
    ref = reference(configurations, objectives[0], several_paths)
    how = ("the first configuration given" if several_paths
           else f"the best configuration by mean {objectives[0].metric}")
    section = Section("paired", "Paired tests", intro=(
        f"{ref.letter} ({how}) against each other configuration on the same test examples. A − B is the "
        "mean over A's runs (seeds) minus the mean over B's, with a "
        f"{round(stats.CONFIDENCE * 100)}% CI from a two-level bootstrap ({stats.RESAMPLES} resamples "
        "of the test examples, shared by both sides, and of each side's seeds). " + stats.PAIRED_TESTS))
    table = Table(["pair", "metric", "A − B", "CI low", "CI high", "p", "test", "examples", "seeds",
                   "verdict"], [])
    for a_conf, b_conf in _pairs(configurations, ref):
        a, b, differences = paired_differences(a_conf, b_conf, section.notes)
        results[(a_conf.letter, b_conf.letter)] = (a, b, differences)
        for diff in differences:
            section.sentences.append(stats.sentence(diff, a_conf.letter, b_conf.letter))
            metric = diff.label(a_conf.letter, b_conf.letter)
            table.rows.append([Cell(f"{a_conf.letter} vs {b_conf.letter}"), Cell(metric),
                               *difference_cells(diff), Cell(str(len(a.examples)), "num"),
                               Cell(f"{diff.seeds[0]} / {diff.seeds[1]}", "num"),
                               Cell(stats.verdict(diff, a_conf.letter, b_conf.letter))])
    if table.rows:
        section.tables.append(table)
    single = list(dict.fromkeys(row[0].text for row in table.rows if row[8].text == "1 / 1"))
    if single:
        section.notes.append(replicates.SINGLE_RUN_NOTE.format(pairs=", ".join(single)))
    few = sorted({int(row[7].text) for row in table.rows if int(row[7].text) < _FEW_EXAMPLES})
    if few:
        section.notes.append(f"Only {few[0]} paired test examples: bootstrap CIs on fewer than "
                             f"{_FEW_EXAMPLES} examples are rough.")
    return section


def _short(text: Any, limit: int = MAX_TEXT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _tail(text: Any, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def changes_section(configurations: list[Configuration]) -> Section:
    section = Section("changes", "What changed", intro=(
        "Config keys (resolved, flattened) whose values differ between configurations, then what each "
        "configuration's runs recorded: the test set they scored (fingerprint of its texts and labels), "
        "the git commit and the package versions that differ (environment.json)."))
    keys = differing(configurations)
    headers = ["key"] + [c.letter for c in configurations]
    if keys:
        section.tables.append(Table(headers, [
            [Cell(k, "param")] + [Cell(_short(_value(c.settings.get(k, "–")), 60), "param")
                                  for c in configurations] for k in keys]))
    else:
        section.notes.append("No config key differs between the configurations (only seeds and paths).")
    envs = [[environment(r.path) for r in c.runs] for c in configurations]
    tests = [_joined({e.fingerprint for e in c.examples if e is not None}) for c in configurations]
    commits = [_joined({str(e.get("git_commit") or "–")[:12] for e in env}) for env in envs]
    rows = [[Cell("test set")] + [Cell(t, "param") for t in tests],
            [Cell("git commit")] + [Cell(c, "param") for c in commits]]
    packages = sorted({p for env in envs for e in env for p in (e.get("packages") or {})})
    for package in packages:
        values = [_joined({str((e.get("packages") or {}).get(package, "–")) for e in env}) for env in envs]
        if len(set(values)) > 1:
            rows.append([Cell(package)] + [Cell(v, "param") for v in values])
    section.tables.append(Table(["recorded"] + [c.letter for c in configurations], rows))
    return section


def _value(value: Any) -> str:
    return fmt(value) if not isinstance(value, str) else value


def _joined(values: set[str]) -> str:
    values.discard("")
    return ", ".join(sorted(values)) or "–"


def _drawn_runs(configurations: list[Configuration]) -> list[tuple[str, Run, Any]]:
    found = []
    for c in configurations:
        for run, examples in zip(c.runs, c.examples, strict=True):
            if examples is not None and examples.kind == CLASSIFICATION and run.state == "complete":
                found.append((f"{c.letter}: {run.name}", run, examples))
    return found


def classes_section(configurations: list[Configuration]) -> Section:
    drawn = _drawn_runs(configurations)
    section = Section("classes", "Per-class scores", intro=(
        "Precision, recall and F1 of each class on the test set, per run."))
    rows = []
    for label, _, ex in drawn[:MAX_RUNS_DRAWN]:
        for name, (precision, recall, f1, support) in zip(ex.classes, stats.per_class(ex.truth, ex.pred,
                                                                                      len(ex.classes)),
                                                          strict=True):
            rows.append([Cell(label), Cell(name, "param"), Cell(fmt(precision), "num"),
                         Cell(fmt(recall), "num"), Cell(fmt(f1), "num"), Cell(str(support), "num")])
    section.tables.append(Table(["run", "class", "precision", "recall", "F1", "support"], rows))
    _capped(section, drawn)
    return section


def _capped(section: Section, drawn: list) -> None:
    if len(drawn) > MAX_RUNS_DRAWN:
        section.notes.append(f"The first {MAX_RUNS_DRAWN} of {len(drawn)} runs are shown.")


def confusion_section(configurations: list[Configuration]) -> Section:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    drawn = _drawn_runs(configurations)[:MAX_RUNS_DRAWN]
    section = Section("confusion", "Confusion matrices",
                      intro="Test examples by true class (rows) and predicted class (columns), per run.")
    cols = min(len(drawn), 4)
    rows = math.ceil(len(drawn) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[label for label, _, _ in drawn],
                        horizontal_spacing=0.08, vertical_spacing=0.18)
    for i, (_, _, ex) in enumerate(drawn):
        counts = stats.confusion(ex.truth, ex.pred, len(ex.classes))
        fig.add_trace(go.Heatmap(z=counts, x=ex.classes, y=ex.classes, text=counts, texttemplate="%{text}",
                                 colorscale="Blues", showscale=False,
                                 hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>"),
                      row=i // cols + 1, col=i % cols + 1)
    fig.update_yaxes(autorange="reversed", title_text="true")
    fig.update_xaxes(title_text="predicted")
    section.figures.append(_style(fig, 150 + 260 * rows))
    return section


def calibration_section(configurations: list[Configuration]) -> Section:
    import plotly.graph_objects as go

    drawn = [d for d in _drawn_runs(configurations) if d[2].probs is not None]
    section = Section("calibration", "Calibration", intro=(
        "Reliability diagram: accuracy against the mean top-class probability in 10 equal-width bins; "
        "the diagonal is perfect calibration. ECE (expected calibration error) = the bins' |accuracy − "
        "confidence| weighted by their share of examples."))
    if not drawn:
        section.notes.append("No run kept class probabilities (prob_* columns of predictions_test.csv).")
        return section
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect", line=dict(color="#9ca3af", dash="dot"))
    rows = []
    for i, (label, _, ex) in enumerate(drawn[:MAX_RUNS_DRAWN]):
        cal = stats.calibration(ex.truth, ex.probs)
        fig.add_scatter(x=cal.confidence, y=cal.accuracy, mode="lines+markers",
                        name=f"{label} (ECE {cal.ece:.3f})", line=dict(color=COLORS[i % len(COLORS)]),
                        customdata=cal.count, hovertemplate="confidence %{x:.3f}, accuracy %{y:.3f}, "
                        "%{customdata} examples<extra></extra>")
        rows.append([Cell(label), Cell(fmt(round(cal.ece, 6)), "num"),
                     Cell(fmt(float(np.mean(ex.pred == ex.truth))), "num"),
                     Cell(fmt(float(ex.probs.max(axis=1).mean())), "num"), Cell(str(len(ex.truth)), "num")])
    fig.update_layout(title="Reliability diagram", xaxis_title="confidence (top-class probability)",
                      yaxis_title="accuracy", xaxis_range=[0, 1], yaxis_range=[0, 1.02])
    section.figures.append(_style(fig, 440))
    section.tables.append(Table(["run", "ECE", "accuracy", "mean confidence", "examples"], rows))
    _capped(section, drawn)
    return section


def disagreements_section(results: dict[tuple[str, str], tuple[Any, Any, list]]) -> Section:
    section = Section("disagreements", "Where configurations disagree", intro=(
        f"Test examples one configuration gets right and the other wrong (the seeds' majority vote), up to "
        f"{MAX_DISAGREEMENTS} each way, for the first {MAX_PAIRS_LISTED} pairs."))
    listed = 0
    for (a_letter, b_letter), (a, b, differences) in results.items():
        if not differences or a.examples.kind != CLASSIFICATION or listed == MAX_PAIRS_LISTED:
            continue
        listed += 1
        x, y = a.examples, b.examples
        right_a, right_b = x.pred == x.truth, y.pred == y.truth
        for name, mask in ((f"{a_letter} right, {b_letter} wrong", right_a & ~right_b),
                           (f"{a_letter} wrong, {b_letter} right", ~right_a & right_b)):
            which = np.flatnonzero(mask)
            rows = [[Cell(name), Cell(_short(x.texts[i]), "text"), Cell(x.classes[x.truth[i]], "param"),
                     Cell(x.classes[x.pred[i]], "param"), Cell(y.classes[y.pred[i]], "param")]
                    for i in which[:MAX_DISAGREEMENTS]]
            if rows:
                section.tables.append(Table(["", "text", "label", a_letter, b_letter], rows))
            section.facts.append((name, f"{len(which)} examples" + (
                f" ({MAX_DISAGREEMENTS} listed)" if len(which) > MAX_DISAGREEMENTS else "")))
    if not listed:
        section.notes.append("No paired classification comparison to list disagreements from.")
    return section


def generations_section(configurations: list[Configuration]) -> Section:
    section = Section("generations", "Generations side by side", intro=(
        "Each run's sample generations from the same validation prompts at its last evaluation "
        "(generations.jsonl), one column per run."))
    runs = [(f"{c.letter}: {r.name}", generations(r.path)) for c in configurations for r in c.complete]
    runs = [(label, rows) for label, rows in runs if rows][:4]
    if not runs:
        section.notes.append("No run kept sample generations (task.sample_generations).")
        return section
    prompts = list(dict.fromkeys(row["prompt"] for _, rows in runs for row in rows))[:5]
    table = Table(["prompt"] + [label for label, _ in runs], [])
    for prompt in prompts:
        answers = [next((r["generation"] for r in rows if r["prompt"] == prompt), "–") for _, rows in runs]
        # Prompts often share a long preamble (a template): their ends tell them apart.
        table.rows.append([Cell(_tail(prompt, 160), "text")]
                          + [Cell(_short(a, 240), "text") for a in answers])
    section.tables.append(table)
    return section


def loss_section(results: dict[tuple[str, str], tuple[Any, Any, list]]) -> Section:
    section = Section("losses", "Per-example loss differences", intro=(
        "The test examples (losses_test.jsonl; else the last validation) whose mean token loss differs "
        "most between two configurations, pooled over seeds; B − A > 0: A fits the example better."))
    listed = 0
    for (a_letter, b_letter), (a, b, differences) in results.items():
        if not differences or a.examples.kind != LANGUAGE_MODEL or listed == MAX_PAIRS_LISTED:
            continue
        listed += 1
        gap = b.examples.losses - a.examples.losses
        order = np.argsort(-np.abs(gap))[:MAX_DISAGREEMENTS]
        section.tables.append(Table(
            ["example", a_letter, b_letter, f"{b_letter} − {a_letter}"],
            [[Cell(a.examples.texts[i]), Cell(fmt(float(a.examples.losses[i])), "num"),
              Cell(fmt(float(b.examples.losses[i])), "num"), Cell(fmt(float(gap[i])), "num")]
             for i in order]))
        section.facts.append((f"{a_letter} lower loss / {b_letter} lower loss",
                              f"{int(np.sum(gap > 0))} / {int(np.sum(gap < 0))} examples"))
    if not listed:
        section.notes.append("No paired language-model comparison.")
    return section


def comparison_sections(configurations: list[Configuration], objectives: list[Objective],
                        paths: list[Path]) -> list[Section]:
    """Every research section for these configurations, in reading order."""
    results: dict[tuple[str, str], tuple[Any, Any, list]] = {}
    found = [seeds_section(configurations, objectives)]
    if len(configurations) > 1:
        found += [paired_section(configurations, objectives, len(paths) > 1, results),
                  changes_section(configurations)]
    found += benchmark_sections(configurations)
    kinds = {e.kind for c in configurations for e in c.examples if e is not None}
    if CLASSIFICATION in kinds:
        found += [classes_section(configurations), confusion_section(configurations),
                  calibration_section(configurations)]
        if len(configurations) > 1:
            found.append(disagreements_section(results))
    lm = LANGUAGE_MODEL in kinds or any(generations(r.path) for c in configurations for r in c.complete[:1])
    if lm:
        found.append(generations_section(configurations))
        if len(configurations) > 1:
            found.append(loss_section(results))
    return found

