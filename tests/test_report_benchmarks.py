"""Benchmark results (lm-evaluation-harness) in the report, from run dirs and base-model eval dirs
faked here as ftexp.evaluation writes them (metrics.json's eval/<task>/<metric> keys,
eval/results.json, eval/<task>.jsonl): the per-configuration table over seeds, a base model's row,
paired differences on the same items (McNemar for 0/1 scores, a permutation test for graded ones,
seeds counted), pairs refused in one line when their settings or items differ, and benchmark
scores as objectives (their direction from results.json when none is given)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import binomtest

from ftexp.report import write_report
from ftexp.reporting import stats
from ftexp.reporting.figures import fmt

TASK = "ftexp_colours_mc"
N_ITEMS = 48


def eval_run(path: Path, scores, *, group: str = "lora-1a2b", seed: int = 0, base: bool = False,
             brier=None, docs=None, num_fewshot: int = 0, limit=None, version=1.0, items: bool = True,
             model: str = "tiny-llama") -> Path:
    """A run dir (or, `base`, a base model's eval dir) holding one task's lm-eval scores."""
    path.mkdir(parents=True)
    config = {"seed": seed, "group": f"base:{model}" if base else group, "paths": {"output_dir": str(path)},
              "model": {"name_or_path": model}, "adapter": {"method": "none" if base else "lora"},
              "task": {"name": "causal_lm", "monitor": "val/loss", "monitor_mode": None},
              "trial": {"study_name": None, "storage": None, "number": None, "monitor": None}}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    scores = np.asarray(scores, float)
    docs = list(range(len(scores))) if docs is None else list(docs)
    values = {"acc": float(scores.mean())} | ({"brier": float(np.mean(brier))} if brier is not None else {})
    stderr = {"acc": float(scores.std(ddof=1) / np.sqrt(len(scores)))}
    metrics = {f"eval/{TASK}/{k}": v for k, v in values.items()} | {f"eval/{TASK}/acc_stderr": stderr["acc"]}
    metrics |= {"kind": "evaluation"} if base else {"val/loss": 1.0 + seed / 10}
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "eval").mkdir()
    task = {"version": version, "num_fewshot": num_fewshot, "limit": limit, "n_samples": len(scores),
            "output_type": "multiple_choice", "metrics": values, "stderr": stderr,
            "higher_is_better": {"acc": True, "brier": False}}
    (path / "eval" / "results.json").write_text(json.dumps({"harness": "lm-eval 0.4.13", "model": model,
                                                            "tasks": {TASK: task}}))
    if items:  # in another order than the doc_ids: items are matched by doc_id, not by place
        lines = []
        for i in np.random.default_rng(seed + 7).permutation(len(scores)):
            record = {"doc_id": docs[i], "doc": {"prompt": f"item {docs[i]}"}, "target": 0, "doc_hash": "x",
                      "resps": [[["-1.5", "False"]]], "filtered_resps": [["-1.5", "False"]],
                      "acc": float(scores[i])}
            if brier is not None:
                record["brier"] = float(brier[i])
            lines.append(json.dumps(record))
        (path / "eval" / f"{TASK}.jsonl").write_text("\n".join(lines) + "\n")
    return path


def _markdown(paths: list[Path], out: Path) -> str:
    return write_report(paths, out)[1].read_text()


def _section(markdown: str, title: str) -> str:
    return markdown.split(f"### {title}\n", 1)[1].split("\n### ", 1)[0]


def _scores(p: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(N_ITEMS) < p).astype(float)


def test_benchmark_table_gives_each_configuration_over_seeds_and_the_base_model_its_own_row(tmp_path: Path):
    base = eval_run(tmp_path / "base", _scores(0.3, 100), base=True)
    seeds = [eval_run(tmp_path / "lora" / f"seed_{s}", _scores(0.8, s), seed=s) for s in range(3)]
    markdown = _markdown([base, tmp_path / "lora"], tmp_path / "report")
    table = _section(markdown, "Benchmarks")
    base_acc = _scores(0.3, 100).mean()
    assert f"| A | base model tiny-llama | {TASK} | acc ↑ | {fmt(base_acc)} | 1 | {N_ITEMS} | 0 |" in table
    accs = [_scores(0.8, s).mean() for s in range(3)]
    spread = stats.seed_spread(accs)
    shown = f"{fmt(spread.mean)} ± {fmt(spread.std)} [{fmt(spread.low)}, {fmt(spread.high)}]"
    assert f"| B | adapter.method=lora | {TASK} | acc ↑ | {shown} | 3 | {N_ITEMS} | 0 |" in table, table
    # The base model is a configuration of its own in the seeds table too, paired with the runs.
    assert "| A | base model tiny-llama | base:tiny-llama | 1 |" in markdown
    assert f"- A vs B: −{abs(np.mean(accs) - base_acc) * 100:.1f} {TASK}/acc points" in markdown
    # In the trials it is a run without the objective, said so once (not "lacks val/loss").
    assert "1 evaluation dir(s) (a base model scored, nothing trained) have no val/loss: base" in markdown
    assert "lack val/loss" not in markdown
    assert len(seeds) == 3


def test_one_run_a_side_pairs_items_by_doc_id_with_mcnemar_and_a_permutation_test(tmp_path: Path):
    rng = np.random.default_rng(3)
    a_scores, b_scores = _scores(0.85, 1), _scores(0.4, 2)
    a_brier, b_brier = rng.random(N_ITEMS) * 0.4, rng.random(N_ITEMS) * 0.4 + 0.3
    a = eval_run(tmp_path / "a", a_scores, brier=a_brier, seed=1, group="lora-aaaa")
    b = eval_run(tmp_path / "b", b_scores, brier=b_brier, seed=2, group="none-bbbb")
    pairs = _section(_markdown([a, b], tmp_path / "report"), "Benchmark paired tests")
    only_a = int(np.sum((a_scores == 1) & (b_scores == 0)))
    only_b = int(np.sum((a_scores == 0) & (b_scores == 1)))
    p = binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue
    gap = (a_scores.mean() - b_scores.mean()) * 100
    assert f"- A vs B: +{gap:.1f} {TASK}/acc points (95% CI +" in pairs
    assert f"McNemar p {'< 0.001' if p < 0.001 else '= ' + stats.fmt_p(p)} — A is better." in pairs
    assert f"| A vs B | {TASK} | acc ({only_a} items only A gets right, {only_b} only B) |" in pairs
    # brier: graded, lower is better (results.json's higher_is_better), a sign-flip permutation test.
    line = next(s for s in pairs.splitlines() if s.startswith("- A vs B: −") and "/brier" in s)
    assert "permutation p < 0.001 — A is better." in line
    assert "One run a side (A vs B): the p-values test the test examples only" in pairs


def test_pairs_with_other_settings_or_items_are_refused_in_one_line(tmp_path: Path):
    base = eval_run(tmp_path / "base", _scores(0.3, 9), base=True)
    few = eval_run(tmp_path / "few", _scores(0.8, 1), num_fewshot=5, group="few")
    limited = eval_run(tmp_path / "limited", _scores(0.8, 2), limit=48, group="limited")
    newer = eval_run(tmp_path / "newer", _scores(0.8, 3), version=2.0, group="newer")
    other = eval_run(tmp_path / "other", _scores(0.8, 4), docs=range(8, 8 + N_ITEMS), group="other")
    silent = eval_run(tmp_path / "silent", _scores(0.8, 5), items=False, group="silent")
    markdown = _markdown([base, few, limited, newer, other, silent], tmp_path / "report")
    pairs = _section(markdown, "Benchmark paired tests")
    notes = [line for line in pairs.splitlines() if line.startswith("> A vs ")]
    assert notes == [f"> A vs B on {TASK}: not compared, num_fewshot differs (0 vs 5).",
                     f"> A vs C on {TASK}: not compared, limit differs (– vs 48).",
                     f"> A vs D on {TASK}: not compared, task version differs (1 vs 2).",
                     f"> A vs E on {TASK}: not compared, they scored different items (48 and 48 doc_ids, "
                     "40 shared).",
                     f"> A vs F on {TASK}: not compared, F kept no per-item scores (eval/{TASK}.jsonl: "
                     "eval.log_samples=true writes them)."]
    assert "| A vs " not in pairs  # nothing compared silently
    # The table still shows every configuration's score.
    assert _section(markdown, "Benchmarks").count(f"| {TASK} | acc ↑ |") == 6


def test_seeds_are_replicates_in_benchmark_pairs_too(tmp_path: Path):
    base = eval_run(tmp_path / "base", _scores(0.3, 50), base=True)
    for s in range(4):
        eval_run(tmp_path / "four" / f"seed_{s}", _scores(0.85, 10 + s), seed=s, group="four")
    for s in range(2):
        eval_run(tmp_path / "two" / f"seed_{s}", _scores(0.85, 20 + s), seed=s, group="two")
    pairs = _section(_markdown([base, tmp_path / "four", tmp_path / "two"], tmp_path / "report"),
                     "Benchmark paired tests")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in pairs.splitlines()
            if line.startswith(("| A vs", "| B vs"))}
    # Against a base model (evaluated once, no seeds): the two-level t-test alone.
    assert "| two-level t | 48 | 1 / 4 | B is better |" in rows["A vs B"]
    # Between trained configurations: the seed permutation too; 4 vs 2 seeds cannot reach p < 0.05.
    assert "| seed permutation + two-level t | 48 | 4 / 2 | within noise |" in rows["B vs C"]
    assert (f"> B vs C on {TASK}: with 4 and 2 seeds the seed permutation test cannot go below p = 0.067, "
            "so no difference can be called better") in pairs


# -- benchmark scores as objectives ----------------------------------------------------------------

def test_benchmark_scores_are_objectives_with_lm_evals_direction(tmp_path: Path):
    from ftexp.reporting.collect import collect, default_objectives, load_run, objective_value
    from ftexp.runs.objective import MAXIMIZE, MINIMIZE, Objective
    from hydra_plugins.ftexp_optuna_sweeper._impl import _Objective

    runs = [eval_run(tmp_path / "runs" / name, _scores(0.5, i), brier=np.full(N_ITEMS, b), group=name)
            for i, (name, b) in enumerate((("good", 0.1), ("bad", 0.4)))]
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert objective_value(metrics, f"eval/{TASK}/brier") == pytest.approx(0.1)
    # The sweeper reads an objective's value from the job's metrics (= metrics.json) by its key.
    assert _Objective(f"eval/{TASK}/brier", MINIMIZE).value(metrics) == pytest.approx(0.1)
    # No direction given: lm-eval's higher_is_better (false for brier; the name alone says maximize).
    comparison = collect([tmp_path / "runs"], [f"eval/{TASK}/brier"])[0]
    assert comparison.objectives == [Objective(f"eval/{TASK}/brier", MINIMIZE)]
    assert comparison.study.direction.name == "MINIMIZE" and comparison.best.name == "good"
    # task.monitor as a benchmark score with monitor_mode null: the same.
    loaded = [load_run(p, p.name) for p in runs]
    loaded[0].config["task"] = {"monitor": f"eval/{TASK}/brier", "monitor_mode": None}
    assert default_objectives(loaded) == [Objective(f"eval/{TASK}/brier", MINIMIZE)]
    loaded[0].config["task"]["monitor_mode"] = "max"  # said: kept
    assert default_objectives(loaded) == [Objective(f"eval/{TASK}/brier", MAXIMIZE)]
    # A direction given against lm-eval's is kept, and the report says so.
    ranked = collect([tmp_path / "runs"], [Objective(f"eval/{TASK}/brier", MAXIMIZE)])[0]
    assert ranked.best.name == "bad"
    assert any("lm-eval says lower is better" in n and f"eval/{TASK}/brier:min" in n for n in ranked.notes)
    markdown = _markdown([tmp_path / "runs"], tmp_path / "report")
    assert f"eval/{TASK}/acc" in markdown.split("## Trials", 1)[-1]  # a column of the trials table
