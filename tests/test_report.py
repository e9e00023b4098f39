"""`python -m ftexp.report` and `logger=wandb`.

Reports: every section renders from an Optuna study (made here, as our sweeper makes them: the
study in `<sweep dir>/optuna.db`, one run dir per trial whose config names the trial), from a
plain multirun without a study, and from a real tiny run; a path without runs is one line and
exit code 2. W&B: a real tiny run logs offline into its run dir (config, metrics, group, tags),
a failing run is still finished (exit code 1 in the W&B record), a second run in the same run
dir continues the same W&B run, and the API key is written nowhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import sentiment_rows, tiny_overrides
from ftexp.report import main as report_main
from ftexp.report import write_report

SECRET = "ftexp-test-secret-key-0123456789abcdef"


# -- fabricated sweeps ----------------------------------------------------------------------------

def _run_dir(path: Path, overrides: dict, metrics: dict | None, trial: dict | None = None,
             curve: list[tuple[int, float, float]] | None = None, monitor: str = "val/acc") -> Path:
    """A run dir as train() leaves it: config.yaml, Hydra's overrides, metrics.json (unless the
    run failed), csv/metrics.csv."""
    (path / ".hydra").mkdir(parents=True)
    config = {"task": {"name": "classification", "monitor": monitor, "monitor_mode": "max"},
              "trial": trial or {"study_name": None, "storage": None, "number": None, "monitor": None},
              "paths": {"output_dir": str(path)}, "optimizer": {"learning_rate": 2e-4},
              "logger": {"csv": {"_target_": "lightning.pytorch.loggers.CSVLogger", "name": "csv"}}}
    for key, value in overrides.items():
        group, _, name = key.partition(".")
        if name:
            config.setdefault(group, {})[name] = value
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"{k}={v}" for k, v in overrides.items()] + ["trainer.max_epochs=3"]))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))
    if curve:
        (path / "csv").mkdir()
        lines = ["step,train/loss_step,val/acc"]
        for step, loss, acc in curve:
            lines += [f"{step},{loss},", f"{step},,{acc}"]
        (path / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")
    return path


def _metrics(acc: float, memory: float, **extra) -> dict:
    return {"val/acc": acc, "best/val/acc": acc, "val/loss": 1 - acc, "test/acc": acc - 0.01,
            "peak_memory_gib": memory, "trainable_params": 1_234_567, "total_params": 2_000_000,
            "fit_seconds": 3.5, **extra}


def _state_metrics(state: str, acc: float | None, memory: float | None) -> dict | None:
    """What a run of this state leaves in metrics.json (a failed run leaves none)."""
    if state == "failed":
        return None
    return _metrics(acc, memory, **({"pruned": True} if state == "pruned" else {}))


SECTIONS = ["best", "trials", "history", "importance", "parallel", "curves"]
# Runs of different configurations (and no per-example outputs) add the configurations' group.
CONFIGURATIONS = ["cmp-seeds", "cmp-paired", "cmp-changes"]
WITH_PARETO = SECTIONS[:5] + ["pareto", "curves"] + CONFIGURATIONS


def _curve(acc: float, steps: int = 3) -> list[tuple[int, float, float]]:
    return [(10 * (s + 1), 0.7 - 0.1 * s, acc - 0.05 * (steps - 1 - s)) for s in range(steps)]


# (learning rate, adapter, state, val/acc, peak memory GiB)
TRIALS = [(1e-4, "lora", "complete", 0.71, 1.5), (1e-3, "lora", "complete", 0.83, 1.6),
          (3e-3, "frozen", "complete", 0.64, 0.9), (3e-4, "none", "complete", 0.78, 2.4),
          (1e-2, "frozen", "pruned", 0.52, 0.9), (5e-4, "none", "failed", None, None)]


def make_sweep(root: Path, directions: tuple[str, ...] = ("maximize",), trials=TRIALS,
               journal: Path | None = None) -> Path:
    """An Optuna study in <root>/optuna.db (or in a `journal` file elsewhere) and one run dir per
    trial, as the sweeper writes them."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root.mkdir(parents=True)
    if journal:
        journal.parent.mkdir(parents=True, exist_ok=True)
    storage = str(journal) if journal else f"sqlite:///{root / 'optuna.db'}"
    backend = JournalStorage(JournalFileBackend(storage)) if journal else storage
    study = optuna.create_study(study_name="tiny-sweep", storage=backend, directions=list(directions))
    if len(directions) > 1:
        with pytest.warns(optuna.exceptions.ExperimentalWarning):
            study.set_metric_names(["val/acc", "peak_memory_gib"])
    space = {"optimizer.learning_rate": FloatDistribution(1e-5, 1e-1, log=True),
             "adapter": CategoricalDistribution(["none", "frozen", "lora"])}
    for lr, adapter, state, acc, memory in trials:
        study.enqueue_trial({"optimizer.learning_rate": lr, "adapter": adapter})  # fixed points
        trial = study.ask(space)
        node = {"study_name": "tiny-sweep", "storage": storage, "number": trial.number, "monitor": "val/acc"}
        metrics = _state_metrics(state, acc, memory)
        curve = _curve(acc or 0.5, 2 if state == "pruned" else 3)
        _run_dir(root / str(trial.number), {"optimizer.learning_rate": lr, "adapter": adapter}, metrics,
                 node, curve if state != "failed" else None)
        for step, _, value in curve if len(directions) == 1 else []:  # (pruning is single-objective)
            trial.report(value, step)
        if state == "complete":
            study.tell(trial, [acc, memory][:len(directions)])
        else:
            states = optuna.trial.TrialState
            study.tell(trial, state=states.PRUNED if state == "pruned" else states.FAIL)
    return root


def _sections(html: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"><h2>([^<]+)</h2>', html)


def _table_rows(html: str, section: str) -> list[list[str]]:
    body = html.split(f'<section id="{section}">', 1)[1].split("</section>", 1)[0]
    rows = re.findall(r"<tr( class=\"best\")?>(.*?)</tr>", body.split("<tbody>", 1)[1])
    cells = [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", r)] for _, r in rows]
    return [["★" if best else ""] + row for (best, _), row in zip(rows, cells, strict=True)]


# -- reports from a study -------------------------------------------------------------------------

def test_study_report_has_every_section_and_names_the_best_trial(tmp_path: Path):
    sweep = make_sweep(tmp_path / "sweep")
    html_path, md_path = write_report([sweep])
    assert html_path == sweep / "report" / "report.html"
    html = html_path.read_text()
    assert _sections(html) == [("best", "Best trial"), ("trials", "Trials"),
                               ("history", "Optimization history"), ("importance", "Parameter importances"),
                               ("parallel", "Parallel coordinates"),
                               ("curves", "Learning curves"),  # one objective: no Pareto front
                               # every trial a configuration of its own (no per-example outputs here)
                               ("cmp-seeds", "Configurations over seeds"), ("cmp-paired", "Paired tests"),
                               ("cmp-changes", "What changed")]
    rows = _table_rows(html, "trials")
    by_number = {r[1]: r for r in rows}
    assert [by_number[str(n)][3] for n in range(6)] == ["complete"] * 4 + ["pruned", "failed"]
    best = [r for r in rows if r[0] == "★"]
    assert len(best) == 1 and best[0][1] == "1" and "0.83" in best[0]  # the max val/acc
    assert "0.001" in best[0] and "lora" in best[0]  # its parameters from the study
    assert 'class="fact lead"><div class="k">trial</div><div class="v">trial 1</div>' in html
    # Figures: plotly.js inlined once, nothing fetched from the network when the page opens.
    assert html.count("<script src=") == 0
    assert html.count("Plotly.newPlot") == html.count('class="figure"') == 4
    from plotly.offline import get_plotlyjs

    assert html.count(get_plotlyjs()[:200]) == 1
    # Importances come from Optuna for both swept parameters.
    importance = _table_rows(html, "importance")
    assert {r[2] for r in importance} == {"optimizer.learning_rate", "adapter"}
    markdown = md_path.read_text()
    assert "## Best trial" in markdown and "- **trial**: trial 1" in markdown
    assert "- **val/acc**: 0.83 (maximize)" in markdown
    assert re.search(r"\| 4 \| 4 \| pruned \|", markdown) and re.search(r"\| 5 \| 5 \| failed \|", markdown)
    assert "★ **1**" in markdown and "## Pareto front" not in markdown


def test_two_objectives_draw_a_pareto_front_of_the_non_dominated_trials(tmp_path: Path):
    sweep = make_sweep(tmp_path / "sweep", directions=("maximize", "minimize"))
    html = write_report([sweep], tmp_path / "out")[0].read_text()
    assert [i for i, _ in _sections(html)] == WITH_PARETO
    # (acc, memory): 0.83/1.6 and 0.64/0.9 and 0.71/1.5 are not beaten on both; 0.78/2.4 is by 0.83/1.6.
    front = {r[1] for r in _table_rows(html, "pareto")}
    assert front == {"0", "1", "2"}
    assert "peak_memory_gib ↓" in html


def test_a_study_in_a_journal_file_elsewhere_is_found_from_the_runs(tmp_path: Path):
    sweep = make_sweep(tmp_path / "sweep", journal=tmp_path / "shared" / "study.log")
    assert not (sweep / "optuna.db").exists()
    html = write_report([sweep], tmp_path / "out")[0].read_text()
    assert "ftexp report: tiny-sweep" in html
    assert [r[3] for r in _table_rows(html, "trials")] == ["complete"] * 4 + ["pruned", "failed"]


def test_too_few_trials_give_notes_instead_of_importances(tmp_path: Path):
    sweep = make_sweep(tmp_path / "sweep", trials=TRIALS[:1] + TRIALS[4:])
    html = write_report([sweep], tmp_path / "out")[0].read_text()
    importance = html.split('<section id="importance">', 1)[1].split("</section>", 1)[0]
    assert "need at least 2 complete trials" in importance and "Plotly.newPlot" not in importance
    assert "at least 2 complete trials" in (tmp_path / "out" / "report.md").read_text()


# -- reports from plain run dirs ------------------------------------------------------------------

def test_plain_multirun_gets_the_same_sections_and_a_pareto_front_from_two_objectives(tmp_path: Path):
    sweep = tmp_path / "multirun"
    for number, (lr, _, state, acc, memory) in enumerate(TRIALS):
        metrics = _state_metrics(state, acc, memory)
        _run_dir(sweep / str(number), {"optimizer.learning_rate": lr}, metrics,
                 curve=_curve(acc or 0.5) if metrics else None)
    out = tmp_path / "out"
    report_main([str(sweep), "--out", str(out), "--objective", "val/acc", "--objective", "peak_memory_gib"])
    html = (out / "report.html").read_text()
    assert [i for i, _ in _sections(html)] == WITH_PARETO
    rows = _table_rows(html, "trials")
    assert [r[2] for r in rows] == [str(n) for n in range(6)]
    assert [r[3] for r in rows] == ["complete"] * 4 + ["pruned", "failed"]
    headers = re.findall(r"<th[^>]*>(.*?)</th>", html.split('<section id="trials">', 1)[1])
    assert headers[3] == "optimizer.learning_rate"  # the only override that differs
    assert "trainer.max_epochs" not in headers
    assert {r[2] for r in _table_rows(html, "pareto")} == {"0", "1", "2"}  # 3: 0.78 @ 2.4 GiB loses to 1


def test_a_sweep_with_repeats_shows_each_trial_once_and_its_seeds_as_one_configuration(tmp_path: Path):
    """hydra.sweeper.repeats=3: every seed's run dir names the trial; the seed that reported to the
    study (trial.monitor set) is the trial's row, all three make its configuration."""
    sweep = make_sweep(tmp_path / "sweep")
    for seed, acc in ((1, 0.81), (2, 0.85)):
        node = {"study_name": "tiny-sweep", "storage": f"sqlite:///{sweep / 'optuna.db'}", "number": 1,
                "monitor": None}
        run = _run_dir(sweep / "1-repeats" / f"seed_{seed}",
                       {"optimizer.learning_rate": 1e-3, "adapter": "lora"},
                       _metrics(acc, 1.6), node)
        config = yaml.safe_load((run / "config.yaml").read_text())
        (run / "config.yaml").write_text(yaml.safe_dump({**config, "seed": seed}))
    html, markdown = write_report([sweep], tmp_path / "out")
    rows = _table_rows(html.read_text(), "trials")
    assert [r[1] for r in rows] == [str(n) for n in range(6)]  # one row per trial, as before
    seeds_row = next(line for line in markdown.read_text().splitlines()
                     if line.startswith("| B | optimizer.learning_rate=0.001 |"))
    assert "| 3 | 0.83 ± 0.02 [0.81, 0.85] |" in seeds_row, seeds_row  # val/acc 0.83, 0.81, 0.85


def test_a_path_without_runs_is_one_line_and_exit_code_2(tmp_path: Path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    for path in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(SystemExit) as exit_info:
            report_main([str(path), "--out", str(tmp_path / "out")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("ftexp: error: ") and str(path) in err
    assert not (tmp_path / "out").exists()


def test_wandb_report_refuses_offline_in_one_line_and_writes_nothing(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    sweep = make_sweep(tmp_path / "sweep")
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(sweep), "--wandb"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "offline" in err and "WANDB_API_KEY" in err
    assert not (sweep / "report").exists()


def test_wandb_report_blocks_show_the_logged_runs(tmp_path: Path):
    wr = pytest.importorskip("wandb_workspaces.reports.v2")
    from ftexp.reporting.collect import collect
    from ftexp.reporting.wandb_report import build_report, logged_runs

    sweep = make_sweep(tmp_path / "sweep")
    for number, run_id in ((0, "aaaa1111"), (1, "bbbb2222")):
        (sweep / str(number) / "wandb_run_id").write_text(run_id + "\n")
    comparisons = collect([sweep])
    assert logged_runs(comparisons) == (None, "ftexp", ["aaaa1111", "bbbb2222"])
    report = build_report(comparisons, "me", "ftexp", "t", ["summary"])  # built only: nothing sent
    grid = next(b for b in report.blocks if isinstance(b, wr.PanelGrid))
    assert "aaaa1111" in grid.runsets[0].filters and "bbbb2222" in grid.runsets[0].filters
    kinds = {type(p).__name__ for p in grid.panels}
    assert {"ParallelCoordinatesPlot", "ParameterImportancePlot", "LinePlot"} <= kinds
    assert grid.runsets[0].groupby == []  # these runs name no group


def test_wandb_report_groups_seeds_by_their_group(tmp_path: Path):
    wr = pytest.importorskip("wandb_workspaces.reports.v2")
    from ftexp.reporting.collect import collect
    from ftexp.reporting.wandb_report import build_report

    for seed in range(2):
        run = _run_dir(tmp_path / "runs" / f"seed_{seed}", {}, _metrics(0.8 + seed / 100, 1.0))
        config = yaml.safe_load((run / "config.yaml").read_text())
        (run / "config.yaml").write_text(yaml.safe_dump({**config, "seed": seed, "group": "cls-lora"}))
        (run / "wandb_run_id").write_text(f"run{seed}\n")
    report = build_report(collect([tmp_path / "runs"]), "me", "ftexp", "t", ["summary"], "## Configurations")
    grid = next(b for b in report.blocks if isinstance(b, wr.PanelGrid))
    assert grid.runsets[0].groupby == ["config.group"]
    markdown = [b.text for b in report.blocks if isinstance(b, wr.MarkdownBlock)]
    assert markdown == ["summary", "## Configurations"]


def test_wandb_report_is_checked_with_wandb_before_writing_then_saved(tmp_path: Path, capsys, monkeypatch):
    """The W&B side faked (no network here): unreachable → one line, nothing written; reachable →
    the local report, then the W&B report saved."""
    wr = pytest.importorskip("wandb_workspaces.reports.v2")
    import wandb

    sweep = make_sweep(tmp_path / "sweep")
    (sweep / "1" / "wandb_run_id").write_text("bbbb2222\n")
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.delenv("WANDB_MODE", raising=False)

    def unreachable(**kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(wandb, "Api", unreachable)
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(sweep), "--wandb"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "cannot reach W&B" in err
    assert not (sweep / "report").exists()

    saved = []
    monkeypatch.setattr(wandb, "Api", lambda **kwargs: type("Api", (), {"default_entity": "me"})())
    monkeypatch.setattr(wr.Report, "save", lambda self, **kwargs: saved.append(self))
    monkeypatch.setattr(wr.Report, "url", property(lambda self: "https://wandb.example/report"))
    report_main([str(sweep), "--wandb"])
    assert (sweep / "report" / "report.html").is_file()
    assert len(saved) == 1 and saved[0].entity == "me" and saved[0].project == "ftexp"
    # The configurations' seeds table and paired tests follow as Markdown.
    markdown = [b.text for b in saved[0].blocks if isinstance(b, wr.MarkdownBlock)]
    assert any("Configurations over seeds" in t and "Paired tests" in t for t in markdown)
    assert "W&B report: https://wandb.example/report" in capsys.readouterr().out


# -- W&B logger and a real run --------------------------------------------------------------------

def _wandb_records(run_dir: Path) -> list[dict]:
    """Every record of the run's offline W&B files (LevelDB-style log of protobuf records).

    `run.finish()` returns once W&B's service has taken the run's exit, not once its writer has
    flushed the file: under load a read straight after it found a rerun's file still empty. The
    files are complete when the service has stopped, so stop it first (`wandb.teardown()` waits
    for that; the next `wandb.init` starts a new one)."""
    import wandb
    from google.protobuf.json_format import MessageToDict
    from wandb.proto import wandb_internal_pb2 as pb

    assert wandb.run is None, "read the records of finished runs only"
    wandb.teardown()

    records = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data, pos, block, pending = path.read_bytes(), 7, 32768, b""
        while pos + 7 <= len(data):
            if block - pos % block < 7:
                pos += block - pos % block
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
            pending = payload if kind in (1, 2) else pending + payload
            if kind in (1, 4):
                record = pb.Record()
                record.ParseFromString(pending)
                records.append({"file": path.parent.name, **MessageToDict(record)})
    return records


def _items(update: dict) -> dict:
    """{key: value} of a W&B config / summary / history record's items."""
    return {item.get("key") or ".".join(item["nestedKey"]): json.loads(item["valueJson"])
            for item in update.get("update", update.get("item", []))}


def _compose(overrides: list[str], out: Path):
    """The validated config of `python -m ftexp <overrides>` run in `out`, with Hydra's runtime
    config set as a real job has it (the chosen options become W&B tags)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from ftexp.config.validation import validate
    from ftexp.runs.paths import config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3", job_name="test"):
        cfg = compose("config", overrides=[*overrides, f"paths.output_dir={out}"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
    HydraConfig.instance().set_config(cfg)
    return validate(cfg)


@pytest.fixture(scope="module")
def wandb_run():
    """One real tiny run with logger=wandb, offline although an API key is set, as a sweep trial."""
    from hydra.core.hydra_config import HydraConfig

    from ftexp.train import train

    root = Path(tempfile.mkdtemp(prefix="ftexp-wandb-"))
    data = root / "toy.csv"
    sentiment_rows(120).to_csv(data, index=False)
    out = root / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_API_KEY", SECRET)
        mp.delenv("WANDB_MODE", raising=False)
        overrides = tiny_overrides(data, "logger=wandb", "logger.wandb.mode=offline", "trainer.max_epochs=1",
                                   "trainer.log_every_n_steps=1", "logger.wandb.tags=[smoke]",
                                   "trial.study_name=tiny-sweep", "trial.number=3")
        cfg = _compose(overrides, out)
        try:
            metrics = train(cfg)
        finally:
            HydraConfig.instance().cfg = None
    yield out, metrics, data
    shutil.rmtree(root, ignore_errors=True)


def test_offline_wandb_run_holds_config_metrics_group_and_tags(wandb_run):
    out, metrics, _ = wandb_run
    import wandb

    assert wandb.run is None  # finished
    records = _wandb_records(out)
    run = next(r["run"] for r in records if "run" in r)
    assert run["runId"] == (out / "wandb_run_id").read_text().strip()
    # The W&B group is the run's `group` (its seeds share it); the study is a tag.
    group = yaml.safe_load((out / "config.yaml").read_text())["group"]
    assert run["runGroup"] == group and group.startswith("classification-")
    assert "study:tiny-sweep" in run["tags"] and run["jobType"] == "classification"
    assert run["displayName"] == "tiny-sweep-3"
    assert {"model:tiny_bert", "logger:wandb", "adapter:none", "smoke"} <= set(run["tags"])
    assert not any(t.startswith(("hydra", "local", "paths")) for t in run["tags"])
    config = _items(run.get("config", {}))
    for record in records:
        config.update(_items(record.get("config", {})))
    assert config["optimizer"]["learning_rate"] == 3e-3 and config["trial"]["study_name"] == "tiny-sweep"
    history = {k for r in records if "history" in r for k in _items(r["history"])}
    assert {"val/acc", "train/loss_step", "trainer/global_step"} <= history
    summary: dict = {}
    for record in records:
        summary.update(_items(record.get("summary", {})))
    assert summary["trainable_params"] == metrics["trainable_params"]
    assert summary["test/acc"] == pytest.approx(metrics["test/acc"])
    exits = [r["exit"].get("exitCode", 0) for r in records if "exit" in r]
    assert exits == [0]


def test_the_api_key_is_written_nowhere(wandb_run):
    out = wandb_run[0]
    written = [p for p in out.rglob("*") if p.is_file() and not p.is_symlink()]
    assert len(written) > 10
    assert [p for p in written if SECRET.encode() in p.read_bytes()] == []


def test_report_on_a_single_real_run_dir(wandb_run, tmp_path: Path):
    out = wandb_run[0]
    result = subprocess.run([sys.executable, "-m", "ftexp.report", str(out), "--out", str(tmp_path)],
                            capture_output=True, text=True, env={**os.environ, "WANDB_API_KEY": ""})
    assert result.returncode == 0, result.stderr
    html = (tmp_path / "report.html").read_text()
    assert [i for i, _ in _sections(html)] == SECTIONS
    rows = _table_rows(html, "trials")
    assert len(rows) == 1 and rows[0][0] == "★" and rows[0][3] == "complete"
    assert "No parameter differs between the runs." in html
    assert "A history needs at least 2 complete trials (here: 1)." in html
    curves = _table_rows(html, "curves")
    assert curves[0][1] == "trial 3" and int(curves[0][3]) > 0  # [mark, trial, state, last step, …]
    markdown = (tmp_path / "report.md").read_text()
    assert f"- **run dir**: {out}" in markdown
    assert "need at least 2 complete trials" in markdown


def test_report_compares_configurations_from_real_run_files(wandb_run, tmp_path: Path):
    """The real run's files (config.yaml with its group, labels.json, predictions_test.csv)
    copied as two seeds of one configuration, and as a second configuration whose predictions
    are all wrong: the statistics read them as train() writes them."""
    import pandas as pd

    out = wandb_run[0]
    config = yaml.safe_load((out / "config.yaml").read_text())
    for name, seed, group in (("a/seed_1", 1, config["group"]), ("a/seed_2", 2, config["group"]),
                              ("b", 1, "other-group")):
        run = tmp_path / name
        run.mkdir(parents=True)
        for file in ("metrics.json", "labels.json", "predictions_test.csv", "environment.json"):
            shutil.copy(out / file, run / file)
        (run / "config.yaml").write_text(yaml.safe_dump({**config, "seed": seed, "group": group}))
    predictions = pd.read_csv(out / "predictions_test.csv")
    labels = sorted(predictions["label"].unique())
    predictions["predicted_label"] = [labels[labels.index(y) - 1] for y in predictions["label"]]  # B: wrong
    predictions.to_csv(tmp_path / "b" / "predictions_test.csv", index=False)
    markdown = write_report([tmp_path / "a", tmp_path / "b"], tmp_path / "report")[1].read_text()
    seeds = [line for line in markdown.splitlines() if line.startswith(("| A | ", "| B | "))]
    assert f"| {config['group']} | 2 |" in seeds[0] and "| other-group | 1 |" in seeds[1]
    # Both seeds of A predict alike, so A's vote is the run's own predictions.
    truth, predicted = predictions["label"], pd.read_csv(out / "predictions_test.csv")["predicted_label"]
    gap = (truth == predicted).mean() * 100
    assert gap > 0
    expected = f"{gap:+.1f}".replace("-", "−")
    lines = markdown.splitlines()
    assert any(line.startswith(f"- A vs B: {expected} accuracy points (95% CI ") for line in lines), expected
    assert "- **A right, B wrong**: " in markdown
    assert any(line.startswith(f"| A: a/seed_1 | {labels[0]} |") for line in lines)  # the run's classes


def test_a_failing_run_finishes_its_wandb_run_and_a_rerun_continues_it(wandb_run, tmp_path: Path,
                                                                      monkeypatch):
    import wandb

    import ftexp.train
    from ftexp.train import train

    data = wandb_run[2]
    out = tmp_path / "run"
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = _compose_plain(tiny_overrides(data, "logger=wandb", "trainer.max_epochs=1"), out)
    recipe = ftexp.train.Recipe
    real_tune = recipe._setup_batch_size_and_learning_rate

    def broken(*args, **kwargs):
        raise RuntimeError("boom while tuning")

    monkeypatch.setattr(recipe, "_setup_batch_size_and_learning_rate", broken)
    with pytest.raises(RuntimeError, match="boom"):
        train(cfg)
    assert wandb.run is None
    first = _wandb_records(out)
    run_id = (out / "wandb_run_id").read_text().strip()
    assert [r["exit"].get("exitCode", 0) for r in first if "exit" in r] == [1]

    monkeypatch.setattr(recipe, "_setup_batch_size_and_learning_rate", real_tune)
    # W&B names an offline run's folder by its start second: a rerun within the same second
    # would write into the first folder instead of a segment of its own.
    time.sleep(1.1)
    train(cfg)  # the same run dir again: the same W&B run
    assert (out / "wandb_run_id").read_text().strip() == run_id
    records = _wandb_records(out)
    segments = {r["file"] for r in records}
    assert len(segments) == 2 and all(run_id in s for s in segments)
    runs = [r["run"] for r in records if "run" in r]
    assert {r["runId"] for r in runs} == {run_id}
    assert sorted(r["exit"].get("exitCode", 0) for r in records if "exit" in r) == [0, 1]


def _compose_plain(overrides: list[str], out: Path):
    from conftest import compose_config

    return compose_config(overrides, output_dir=out)


def test_wandb_mode_and_tags():
    from ftexp.builders.loggers import run_display_name, wandb_mode, wandb_tags

    assert wandb_mode("auto", {}) == "offline"
    assert wandb_mode("auto", {"WANDB_API_KEY": "k"}) == "online"
    assert wandb_mode("auto", {"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}) == "offline"
    assert wandb_mode("offline", {"WANDB_API_KEY": "k"}) == "offline"
    assert wandb_mode("disabled", {}) == "disabled"
    assert wandb_tags({"model": "tiny_bert", "hydra/launcher": "basic", "local": "default", "quant": None},
                      ["x"]) == ["model:tiny_bert", "x"]
    assert run_display_name(Path("/o/multirun/2024-01-01_10-00-00/3"), None, None) == "2024-01-01_10-00-00/3"
    assert run_display_name(Path("/o/runs/my_run"), "study", 7) == "study-7"


# -- slow: look at it -----------------------------------------------------------------------------

def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome")
                 if shutil.which(n)), None)


@pytest.mark.slow
def test_screenshot_of_a_report(tmp_path: Path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install -y chromium)")
    sweep = make_sweep(tmp_path / "sweep", directions=("maximize", "minimize"))
    html = write_report([sweep])[0]
    shot = Path(os.environ.get("FTEXP_SCREENSHOT", tmp_path / "report.png"))
    profile = tempfile.mkdtemp(prefix="ftexp-chromium-")
    try:
        result = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--hide-scrollbars", "--virtual-time-budget=5000",
             f"--screenshot={shot}", "--window-size=1400,3000", html.as_uri()],
            capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1400, 3000) and len(data) > 100_000  # drawn figures, not a blank page


def test_preference_runs_get_a_reward_margin_curve(tmp_path: Path):
    """DPO-style runs: the learning curves add val/rewards/margin beside the monitored metric."""
    runs = []
    for i, beta in enumerate((0.1, 0.5)):
        run = _run_dir(tmp_path / f"run{i}", {"task.beta": beta},
                       {"val/rewards/accuracy": 0.8 + i / 10, "best/val/rewards/accuracy": 0.8 + i / 10,
                        "val/rewards/margin": 0.3 * (i + 1), "fit_seconds": 3.0},
                       monitor="val/rewards/accuracy")
        (run / "csv").mkdir()
        (run / "csv" / "metrics.csv").write_text(
            "step,train/loss_step,val/rewards/accuracy,val/rewards/margin\n"
            "5,0.69,,\n5,,0.6,0.1\n10,0.6,,\n10,,0.8,0.3\n")
        runs.append(run)
    html, markdown = write_report(runs, tmp_path / "report")
    page = html.read_text().replace("\\u002f", "/")  # plotly's JSON escapes slashes
    assert "val/rewards/margin vs step" in page and "val/rewards/accuracy vs step" in page
    assert "val/rewards/accuracy" in markdown.read_text()
