"""Strategies: DDP on two CPU processes equals one process with the same global batch; what each
strategy refuses, before any model loads; launches under torchrun; sharded checkpoints made
loadable on one device."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import compose_config, sentiment_rows, tiny_overrides
from ftexp.builders.strategy import plain_parameter_name, strategy_conflict, transformer_block_classes
from ftexp.cli import check_launch
from ftexp.runs.checkpoints import consolidate
from ftexp.runs.errors import ConfigError

TRAIN_ROWS = 64


@pytest.fixture(scope="module")
def split_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ddp") / "toy.csv"
    frame = sentiment_rows(TRAIN_ROWS + 32, seed=1)
    frame["split"] = ["train"] * TRAIN_ROWS + ["validation"] * 16 + ["test"] * 16
    frame.to_csv(path, index=False)
    return path


def _common(data: Path) -> list[str]:
    """Tiny BERT, no dropout (ranks draw different masks), full-batch steps: each step sees the
    whole training set whatever the sampler's order, so DDP and one process see the same data."""
    return ["model=tiny_bert", "data=custom", f"data.path={data}", "data.split_column=split",
            "data.max_length=16", "optimizer.learning_rate=3e-3", "scheduler.warmup_fraction=0.0",
            "trainer.precision=32", "trainer.max_epochs=3", "trainer.enable_progress_bar=false",
            "trainer.accelerator=cpu", "task.head_dropout=0.0", "task.monitor=val/loss",
            "task.monitor_mode=min", "++model.random_init.hidden_dropout_prob=0.0",
            "++model.random_init.attention_probs_dropout_prob=0.0"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def test_ddp_on_two_cpu_processes_ends_with_the_weights_of_one_process(split_csv, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    two, one = tmp_path / "two", tmp_path / "one"
    # The README's command: torchrun starts the ranks; Lightning joins them.
    for command in ([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "ftexp",
                     *_common(split_csv), "strategy=ddp", f"data.batch_size={TRAIN_ROWS // 2}",
                     f"hydra.run.dir={two}"],
                    [sys.executable, "-m", "ftexp", *_common(split_csv), f"data.batch_size={TRAIN_ROWS}",
                     f"hydra.run.dir={one}"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    ddp, single = _weights(two), _weights(one)
    assert ddp.keys() == single.keys()
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=0, atol=1e-4, msg=name)
    # The comparison means something: three steps moved the weights far beyond the tolerance.
    from omegaconf import OmegaConf

    from ftexp.builders.backbone import load_configured_backbone

    fresh = compose_config(_common(split_csv), tmp_path / "fresh")
    untrained = load_configured_backbone(OmegaConf.to_container(fresh.model)).state_dict()
    moved = max((single[f"network.backbone.{k}"] - v).abs().max().item()
                for k, v in untrained.items() if f"network.backbone.{k}" in single)
    assert moved > 20 * 1e-4

    metrics = pd.read_json(two / "metrics.json", typ="series")
    assert metrics["global_steps"] == 3  # 64 rows / (2 ranks × 32) = one step per epoch
    # Rank zero scored the whole test split on one device (a distributed sampler would halve it).
    assert len(pd.read_csv(two / "predictions_test.csv")) == 16
    single_metrics = pd.read_json(one / "metrics.json", typ="series")
    assert metrics["test/loss"] == pytest.approx(single_metrics["test/loss"], abs=1e-4)


QUANT = {"method": "none", "storage_dtype": "uint8", "compute_dtype": "bfloat16"}


@pytest.mark.parametrize(("strategy", "quant", "accelerator", "batch_size", "expected"), [
    ({"name": "fsdp"}, {}, "cpu", 8, "strategy=fsdp needs CUDA GPUs"),
    ({"name": "deepspeed", "stage": 2}, {}, "cpu", 8, "strategy=deepspeed (ZeRO-2) needs CUDA GPUs"),
    ({"name": "fsdp"}, {"method": "8bit"}, "gpu", 8, "quant=8bit cannot be sharded"),
    ({"name": "deepspeed", "stage": 3}, {"method": "8bit"}, "gpu", 8, "quant=8bit cannot be sharded"),
    ({"name": "fsdp"}, {"method": "hqq"}, "gpu", 8, "quant=hqq cannot be sharded by strategy=fsdp"),
    ({"name": "fsdp"}, {"method": "4bit"}, "gpu", 8, "set quant.storage_dtype=bfloat16"),
    ({"name": "ddp"}, {}, "cpu", "auto", "data.batch_size=auto searches on one device"),
])
def test_strategy_refuses_what_cannot_work(strategy, quant, accelerator, batch_size, expected):
    message = strategy_conflict(strategy, {**QUANT, **quant}, accelerator, batch_size, 1e-4)
    assert message is not None and expected in message


@pytest.mark.parametrize(("strategy", "quant"), [
    ({"name": "fsdp"}, {"method": "4bit", "storage_dtype": "bfloat16"}),   # QLoRA under FSDP
    ({"name": "fsdp", "sharding": "no_shard"}, {"method": "8bit"}),        # nothing sharded
    ({"name": "deepspeed", "stage": 2}, {"method": "8bit"}),               # ZeRO-2 keeps weights whole
    ({"name": "ddp"}, {"method": "8bit"}),
])
def test_strategy_accepts_what_can_work(strategy, quant):
    assert strategy_conflict(strategy, {**QUANT, **quant}, "gpu", 8, 1e-4) is None


def test_conflicts_are_refused_when_the_config_is_validated(toy_csv):
    with pytest.raises(ConfigError, match="quant=8bit cannot be sharded by strategy=fsdp"):
        compose_config(tiny_overrides(toy_csv, "strategy=fsdp", "quant=8bit", "adapter=lora",
                                      "trainer.accelerator=gpu"), resolve=False)


def test_deepspeed_missing_names_the_install_command(monkeypatch):
    import importlib.util

    from ftexp.builders.strategy import build_strategy

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install 'ftexp\[deepspeed\]'"):
        build_strategy({"name": "deepspeed", "stage": 3})


def test_sweeps_refuse_multi_process_strategies():
    with pytest.raises(ConfigError, match="single-device trials"):
        check_launch(["-m", "strategy=ddp", "adapter=lora"], {})
    with pytest.raises(ConfigError, match="single-device trials"):
        check_launch(["-m", "strategy=auto,fsdp"], {})
    assert check_launch(["-m", "strategy=auto", "optimizer.learning_rate=1e-3,1e-4"], {})[0] == "-m"


def test_torchrun_ranks_share_one_pinned_run_dir():
    env = {"TORCHELASTIC_RUN_ID": "abc123"}
    pinned = ["strategy=ddp", "hydra.run.dir=outputs/runs/torchrun-abc123"]
    assert check_launch(["strategy=ddp"], env) == pinned
    assert check_launch(["strategy=ddp", "hydra.run.dir=/x"], env) == ["strategy=ddp", "hydra.run.dir=/x"]
    with pytest.raises(ConfigError, match="hydra.run.dir"):
        check_launch(["strategy=ddp"], {"TORCHELASTIC_RUN_ID": "none"})


def test_fsdp_wraps_each_transformer_block():
    names = {cls.__name__ for cls in transformer_block_classes("llama")}
    assert names == {"LlamaDecoderLayer"}
    assert {cls.__name__ for cls in transformer_block_classes("bloom")} == {"BloomBlock"}
    with pytest.raises(ConfigError, match="auto_wrap=false"):
        transformer_block_classes("not_a_model_type")


def test_wrapper_prefixes_are_removed_from_parameter_names():
    wrapped = "network._fsdp_wrapped_module.backbone.layers.0._checkpoint_wrapped_module.mlp.lora_A.weight"
    assert plain_parameter_name(wrapped) == "network.backbone.layers.0.mlp.lora_A.weight"


def test_a_sharded_checkpoint_folder_becomes_one_loadable_file(tmp_path):
    """The layout Lightning's FSDPStrategy writes with state_dict_type='sharded'."""
    import torch.distributed.checkpoint as dcp
    from lightning.fabric.utilities.load import _METADATA_FILENAME

    weights = {"network.head.weight": torch.randn(2, 4), "network.backbone.w": torch.randn(3)}
    folder = tmp_path / "best.ckpt"
    dcp.save({"model": weights}, storage_writer=dcp.FileSystemWriter(folder), no_dist=True)
    torch.save({"epoch": 2, "hyper_parameters": {"adapter": {"method": "lora"}}}, folder / _METADATA_FILENAME)

    consolidate(folder, keep={"network.head.weight"})

    assert folder.is_file()
    saved = torch.load(folder, map_location="cpu", weights_only=True)
    assert saved["epoch"] == 2 and list(saved["state_dict"]) == ["network.head.weight"]
    torch.testing.assert_close(saved["state_dict"]["network.head.weight"], weights["network.head.weight"])
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_slurm_launcher_runs_one_task_per_gpu():
    from hydra import compose, initialize_config_dir

    from ftexp.runs.paths import config_dir

    # -m is how Hydra's launchers run; with the SLURM launcher each job's ranks are SLURM tasks.
    assert check_launch(["-m", "hydra/launcher=slurm", "strategy=fsdp"], {})[-1] == "strategy=fsdp"
    with initialize_config_dir(str(config_dir()), version_base="1.3", job_name="test"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == launcher.gpus_per_node == 4
