"""The training recipe: however a run stops, it ends validated with a usable checkpoint; the
task registry covers every task option; user callbacks given by `_target_` run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import lightning as L
import pytest

from conftest import compose_config, tiny_overrides
from ftexp.cli import group_options
from ftexp.runs.errors import ConfigError
from ftexp.runs.paths import config_dir
from ftexp.tasks.registry import TASKS, get_task
from ftexp.train import train


class CountTrainingBatches(L.Callback):
    """A user's callback, reached as `test_recipe.CountTrainingBatches` by its `_target_`."""

    def __init__(self, path: str, every: int = 1):
        self.path, self.every, self.batches = Path(path), every, 0

    def on_train_batch_end(self, *args) -> None:
        self.batches += 1

    def on_train_end(self, *args) -> None:
        self.path.write_text(json.dumps({"batches": self.batches, "every": self.every}))


def test_every_task_option_has_a_registry_entry_and_back():
    assert set(group_options(config_dir())["task"]) == set(TASKS)
    for name, spec in TASKS.items():
        teacher = ["task.teacher=a-teacher"] if name == "distill" else []  # required, loaded at fit start
        cfg = compose_config([f"task={name}", "data=code_alpaca", *teacher], resolve=False)
        # The option is composed onto its own schema: every key of the schema is there, typed.
        assert set(cfg.task.keys()) == {f.name for f in dataclasses.fields(spec.settings)}
        assert cfg.task.monitor in spec.monitor_choices()
    with pytest.raises(ConfigError, match="'task.name=causal' is not a valid choice. "
                                          "Did you mean 'causal_lm'"):
        get_task("causal")


def test_run_stopped_by_max_steps_mid_epoch_validates_and_keeps_a_checkpoint(tmp_path: Path):
    """The usual LLM budget (`trainer.max_steps` before the first epoch ends) used to end with
    no validation and no checkpoint, so generate / export refused the run."""
    from ftexp.export import export_run

    run = tmp_path / "run"
    metrics = train(compose_config([
        "task=causal_lm", "data=code_alpaca", "model=tiny_llama", "adapter=lora", "data.max_length=96",
        "data.batch_size=2", "data.max_train_samples=40", "trainer.max_steps=3", "trainer.precision=32",
        "trainer.enable_progress_bar=false", "task.sample_generations=0", "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=1"], output_dir=run))
    assert metrics["global_steps"] == 3  # 20 steps in the epoch: stopped mid-epoch
    assert "val/loss" in metrics and "best/val/loss" in metrics
    assert (run / "checkpoints" / "best.ckpt").is_file()
    assert "val/loss" in json.loads((run / "metrics.json").read_text())
    exported = export_run(run, tmp_path / "export", "float32")
    assert (exported / "model.safetensors").is_file()


def test_user_callback_by_target_runs_with_its_arguments(toy_csv: Path, tmp_path: Path):
    seen = tmp_path / "seen.json"
    metrics = train(compose_config(tiny_overrides(
        toy_csv, "trainer.max_epochs=1",
        "+callbacks.extra.counter._target_=test_recipe.CountTrainingBatches",
        f"+callbacks.extra.counter.path={seen}", "+callbacks.extra.counter.every=2"),
        output_dir=tmp_path / "run"))
    assert json.loads(seen.read_text()) == {"batches": metrics["global_steps"], "every": 2}


def test_user_callback_with_a_wrong_key_is_named_before_the_model_loads(toy_csv: Path, tmp_path: Path):
    cfg = compose_config(tiny_overrides(
        toy_csv, "+callbacks.extra.counter._target_=test_recipe.CountTrainingBatches",
        "+callbacks.extra.counter.pth=x"), output_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match=r"unknown key 'callbacks.extra.counter.pth' for "
                                          r"test_recipe.CountTrainingBatches. "
                                          r"Did you mean 'callbacks.extra.counter.path'"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
