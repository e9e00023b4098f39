"""The `logger` group: named `_target_` nodes built into Lightning loggers in the run dir.
TensorBoard and MLflow runs log offline and are read back; bad nodes get one line."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import compose_config, tiny_overrides
from ftexp.builders.loggers import MLFLOW_ID_FILE, build_loggers, closing_loggers
from ftexp.runs.errors import ConfigError


def _settings(cfg) -> dict:
    return OmegaConf.to_container(cfg.logger, resolve=True)


def _csv_points(out: Path, metric: str) -> list[tuple[int, float]]:
    frame = pd.read_csv(out / "csv" / "metrics.csv")
    rows = frame[["step", metric]].dropna()
    return [(int(s), float(v)) for s, v in zip(rows["step"], rows[metric], strict=True)]


# -- building ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "expected"), [
    (["logger=csv"], [("CSVLogger", "csv")]),
    (["logger=tensorboard"], [("CSVLogger", "csv"), ("TensorBoardLogger", "tensorboard")]),
    (["logger=wandb", "logger.wandb.mode=disabled"], [("CSVLogger", "csv")]),
    (["logger=none"], []),
    (["logger=tensorboard", "logger.csv=null"], [("TensorBoardLogger", "tensorboard")]),
    (["logger=tensorboard", "+logger.tensorboard.save_dir=tb"], [("CSVLogger", "csv"),
                                                                  ("TensorBoardLogger", "tb/tensorboard")]),
], ids=["csv", "tensorboard", "wandb-disabled", "none", "csv-null", "relative-save-dir"])
def test_each_option_builds_its_loggers_inside_the_run_dir(overrides: list[str], expected: list,
                                                           tmp_path: Path):
    cfg = compose_config(overrides, output_dir=tmp_path)
    loggers = build_loggers(_settings(cfg), tmp_path)
    assert [(type(lg).__name__, Path(lg.log_dir)) for lg in loggers] == [
        (name, tmp_path / sub) for name, sub in expected]


def test_options_combine_as_a_list_and_each_node_is_one_logger(tmp_path: Path):
    cfg = compose_config(["logger=[tensorboard,mlflow]"], output_dir=tmp_path)
    assert list(cfg.logger) == ["csv", "tensorboard", "mlflow"]
    assert cfg.logger.mlflow._target_ == "ftexp.builders.loggers.mlflow_logger"


def test_the_logger_module_imports_no_torch_or_lightning():
    heavy = ("torch", "lightning", "wandb", "mlflow", "tensorboard")
    code = f"import sys, ftexp.builders.loggers; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- bad nodes: one line each ---------------------------------------------------------------------

BAD_NODES = [
    (["logger=tensorboard", "logger.tensorboard._target_=lightning.pytorch.loggers.TensorboardLogger"],
     "logger.tensorboard._target_=lightning.pytorch.loggers.TensorboardLogger cannot be imported: module "
     "'lightning.pytorch.loggers' has no attribute 'TensorboardLogger'. "
     "Did you mean 'lightning.pytorch.loggers.TensorBoardLogger'?"),
    (["logger.csv._target_=no_such_package.Logger"],
     "logger.csv._target_=no_such_package.Logger cannot be imported: no module named 'no_such_package'."),
    (["+logger.csv.nmae=x"],
     "unknown key 'logger.csv.nmae' for lightning.pytorch.loggers.CSVLogger. Did you mean 'logger.csv.name'? "
     "Valid keys: save_dir, name, version, prefix, flush_logs_every_n_steps."),
    (["logger=wandb", "+logger.wandb.projekt=x"], "Did you mean 'logger.wandb.project'?"),
    (["logger=mlflow", "+logger.mlflow.experiment=x"], "Did you mean 'logger.mlflow.experiment_name'?"),
    (["logger=wandb", "logger.wandb.mode=ofline"],
     "'logger.wandb.mode=ofline' is not a valid choice. Did you mean 'offline'? "
     "Choices: auto, offline, online, disabled."),
    (["+logger.extra.name=x"], "logger.extra has no _target_"),
    (["logger=wandb", "+logger.wandb.run_dir=/elsewhere"],
     "logger.wandb.run_dir is filled in by ftexp from the run; remove it from the config."),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_NODES, ids=[m[:40] for _, m in BAD_NODES])
def test_a_bad_logger_node_gets_one_line(overrides: list[str], message: str, tmp_path: Path):
    with pytest.raises(ConfigError) as err:  # at validation (where checked) or when built
        cfg = compose_config(overrides, output_dir=tmp_path)
        build_loggers(_settings(cfg), tmp_path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())  # nothing built, nothing written


@pytest.mark.parametrize(("option", "missing", "extra"), [
    ("tensorboard", ("tensorboard", "tensorboardX"), "tensorboard"),
    ("mlflow", ("mlflow",), "mlflow"),
    ("wandb", ("wandb",), "wandb"),
])
def test_a_missing_package_names_its_pip_command(option: str, missing: tuple, extra: str, tmp_path: Path,
                                                 monkeypatch):
    cfg = compose_config([f"logger={option}"], output_dir=tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name in missing else real(name, *args))
    with pytest.raises(ConfigError) as err:
        build_loggers(_settings(cfg), tmp_path)
    assert str(err.value) == f"logger.{option} needs the {missing[0]} package: pip install 'ftexp[{extra}]'."


# -- real runs, read back ---------------------------------------------------------------------------

def test_tensorboard_run_writes_the_logged_metrics_to_event_files(toy_csv: Path, tmp_path: Path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ftexp.train import train

    out = tmp_path / "run"
    train(compose_config(tiny_overrides(toy_csv, "logger=tensorboard", "trainer.max_epochs=2",
                                        "trainer.log_every_n_steps=1"), output_dir=out))
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))

    def points(tag: str) -> list[tuple[int, float]]:
        return [(e.step, pytest.approx(e.value)) for e in events.Scalars(tag)]

    assert len(points("val/acc")) == 2  # one per epoch
    assert points("val/acc") == _csv_points(out, "val/acc")
    assert len(points("train/loss_step")) == len(_csv_points(out, "train/loss_step")) > 10
    assert points("train/loss_step") == _csv_points(out, "train/loss_step")
    assert "test/acc" in events.Tags()["scalars"]


def test_mlflow_run_logs_offline_to_the_run_dir_and_continues_there(toy_csv: Path, tmp_path: Path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from ftexp.train import train

    out = tmp_path / "run"
    out.mkdir()
    cfg = compose_config(tiny_overrides(toy_csv, "logger=mlflow", "trainer.max_epochs=2",
                                        "trainer.log_every_n_steps=5"), output_dir=out)
    # A first start that fails before training: its MLflow run is finished as failed. (The id
    # left by a run in another store is not found there: a new run.)
    (out / MLFLOW_ID_FILE).write_text("0123456789abcdef0123456789abcdef\n")
    run = {"task": "classification", "choices": {"model": "tiny_bert", "logger": "mlflow", "paths": "x"}}
    with pytest.raises(RuntimeError, match="boom"), closing_loggers():
        build_loggers(_settings(cfg), out, run)
        raise RuntimeError("boom")
    uri = f"sqlite:///{out / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = (out / MLFLOW_ID_FILE).read_text().strip()
    assert run_id != "0123456789abcdef0123456789abcdef"
    assert client.get_run(run_id).info.status == "FAILED"

    train(cfg)  # the same run dir again: the same MLflow run, in the run dir's own store
    experiment = client.get_experiment_by_name("ftexp")
    artifacts = Path(experiment.artifact_location.removeprefix("file://"))
    assert artifacts == (out / "mlflow" / "artifacts").resolve()
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    logged = runs[0]
    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"
    tags = logged.data.tags
    assert {"model": "tiny_bert", "logger": "mlflow", "task": "classification"}.items() <= tags.items()
    assert "paths" not in tags

    def points(metric: str) -> list[tuple[int, float]]:
        history = sorted(client.get_metric_history(run_id, metric), key=lambda m: (m.step, m.timestamp))
        return [(m.step, pytest.approx(m.value)) for m in history]

    assert len(points("val/acc")) == 2  # one per epoch
    assert points("val/acc") == _csv_points(out, "val/acc")
    assert points("train/loss_step") == _csv_points(out, "train/loss_step")
    assert len(points("train/loss_step")) >= 4
    assert "test/acc" in logged.data.metrics


def test_the_command_line_takes_a_list_of_logger_options():
    from ftexp.cli import preflight

    preflight(["logger=[tensorboard,mlflow]", "model=tiny_bert"])  # both options exist: no error
    with pytest.raises(ConfigError, match="unknown option 'tensorbord' for config group 'logger'. "
                                          "Did you mean 'tensorboard'"):
        preflight(["logger=[tensorbord,mlflow]"])
