"""Exact resume after kill -9 (mid-epoch and mid-checkpoint-write), a corrupt checkpoint falling
back to the one before, and the NaN guard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import compose_config, sentiment_rows
from ftexp.runs.errors import FtexpError

# Wall-clock figures differ between any two runs, and a resumed run finds the tokenized data
# cached (hit, not miss); everything else in metrics.json must not differ.
TIMING_KEYS = {"fit_seconds", "train_samples_per_second", "train_tokens_per_second",
               "train_seconds_per_epoch", "peak_memory_gib", "peak_memory_kind", "checkpoint_mb",
               "train_epochs_timed", "cache_tokenized", "encoder_forward_passes"}

# A real `python -m ftexp` process that SIGKILLs itself at a chosen point: after the optimizer
# step KILL_AT_STEP (mid-epoch), or halfway through writing the checkpoint of that step.
KILLER = """
import os, signal, sys
import lightning as L

step, where = int(os.environ["KILL_AT_STEP"]), os.environ["KILL_WHERE"]

class KillAfterStep(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == step and where == "after_step":
            os.kill(os.getpid(), signal.SIGKILL)
        if trainer.global_step == step and where == "sigterm":  # `kill`, the web UI's stop button
            os.kill(os.getpid(), signal.SIGTERM)

if where == "mid_write":  # ftexp's checkpoint writer (runs/checkpoints.py) calls torch.save
    import torch
    original = torch.save
    def half_then_die(obj, f, *args, **kwargs):
        original(obj, f, *args, **kwargs)
        if isinstance(obj, dict) and obj.get("global_step") == step and str(f).endswith("last-new.ckpt.tmp"):
            with open(f, "r+b") as file:  # a write cut short
                file.truncate(os.path.getsize(f) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
    torch.save = half_then_die

import ftexp.train as train
build = train.build_trainer
def build_with_killer(*args, **kwargs):
    trainer = build(*args, **kwargs)
    trainer.callbacks.append(KillAfterStep())
    return trainer
train.build_trainer = build_with_killer
from ftexp.cli import main
sys.argv = ["ftexp", *sys.argv[1:]]
main()
"""


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("resume") / "toy.csv"
    sentiment_rows(120, seed=3).to_csv(path, index=False)
    return path


def _overrides(data: Path) -> list[str]:
    # 96 training rows / batch 8 = 12 steps per epoch, 2 epochs; dropout on, so the RNG matters.
    return ["model=tiny_bert", "data=custom", f"data.path={data}", "data.max_length=16",
            "data.batch_size=8", "data.split_probabilities=[0.8,0.1,0.1]",
            "optimizer.learning_rate=3e-3", "trainer.precision=32", "trainer.max_epochs=2",
            "trainer.enable_progress_bar=false", "callbacks.resume_every_n_steps=5",
            "task.monitor=val/loss", "task.monitor_mode=min"]


def _run(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    # With a kill point: the same job through the self-killing wrapper above.
    command = [sys.executable, "-c", KILLER, *args] if env_extra else [sys.executable, "-m", "ftexp", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _outcome(run: Path) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    metrics = json.loads((run / "metrics.json").read_text())
    weights = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}, weights["state_dict"]


def _assert_same_metrics(metrics: dict, expected: dict, rel: float = 1e-6) -> None:
    """Numbers equal to `rel`, everything else (the names of what a run chose) exactly."""
    numbers = {k for k, v in expected.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert metrics.keys() == expected.keys()
    others = expected.keys() - numbers
    assert {k: metrics[k] for k in numbers} == pytest.approx({k: expected[k] for k in numbers},
                                                             rel=rel, abs=1e-7)
    assert {k: metrics[k] for k in others} == {k: expected[k] for k in others}


def _saved_step(run: Path) -> int:
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return saved["global_step"]


def _assert_resumes_to(run: Path, uninterrupted: tuple[dict, dict]) -> None:
    """`resume=<run>` ends with the uninterrupted run's metrics and weights."""
    resumed = _run([f"resume={run}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics, weights = _outcome(run)
    expected_metrics, expected_weights = uninterrupted
    _assert_same_metrics(metrics, expected_metrics, rel=1e-5)
    assert weights.keys() == expected_weights.keys()
    for name, value in expected_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def uninterrupted(data_csv, tmp_path_factory) -> tuple[dict, dict]:
    run = tmp_path_factory.mktemp("whole") / "run"
    done = _run([*_overrides(data_csv), f"hydra.run.dir={run}"])
    assert done.returncode == 0, done.stderr[-3000:]
    return _outcome(run)


@pytest.mark.parametrize(("where", "step"), [
    ("after_step", 7),   # mid-epoch 1 (12 steps per epoch), 2 steps after the save at step 5
    # killed while writing the step-15 checkpoint (mid-epoch 2)
    pytest.param("mid_write", 15, marks=pytest.mark.slow),
])
def test_killed_run_resumes_to_the_uninterrupted_result(data_csv, tmp_path, uninterrupted, where, step):
    run = tmp_path / "run"
    killed = _run([*_overrides(data_csv), f"hydra.run.dir={run}"],
                  {"KILL_AT_STEP": str(step), "KILL_WHERE": where})
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (run / "metrics.json").exists()
    if where == "mid_write":
        # The half-written file never replaced the good one from step 10.
        assert _saved_step(run) == 10

    _assert_resumes_to(run, uninterrupted)


def test_a_stopped_run_saves_where_it_stands_and_resumes_to_the_uninterrupted_result(
        data_csv, tmp_path, uninterrupted):
    run = tmp_path / "run"
    stopped = _run([*_overrides(data_csv), f"hydra.run.dir={run}"],
                   {"KILL_AT_STEP": "7", "KILL_WHERE": "sigterm"})
    assert stopped.returncode == 2, stopped.stderr[-3000:]
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"ftexp: error: stopped (SIGTERM) at step 7; checkpoints/last.ckpt holds step 7: continue with "
        f"python -m ftexp resume={run}")
    assert not (run / "metrics.json").exists()
    # Saved at the stop, not only at the periodic save of step 5.
    assert _saved_step(run) == 7

    _assert_resumes_to(run, uninterrupted)


def test_a_corrupt_last_checkpoint_falls_back_to_the_one_before(tmp_path):
    from ftexp.runs.checkpoints import resume_checkpoint

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({"state_dict": {}, "loops": {}, "global_step": 5}, folder / "last-previous.ckpt")
    (folder / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    assert resume_checkpoint(tmp_path) == folder / "last-previous.ckpt"
    (folder / "last-previous.ckpt").unlink()
    with pytest.raises(FtexpError, match="no readable checkpoint to resume from"):
        resume_checkpoint(tmp_path)


def test_resume_refuses_a_group_swap_and_a_non_run(tmp_path, data_csv):
    from ftexp.cli import resume_target, resumed_config
    from ftexp.runs.errors import ConfigError

    with pytest.raises(ConfigError, match="not an ftexp run directory"):
        resume_target(str(tmp_path))
    cfg = compose_config(_overrides(data_csv), tmp_path / "run")
    (tmp_path / "run").mkdir()
    from omegaconf import OmegaConf

    OmegaConf.save(cfg, tmp_path / "run" / "config.yaml")
    cfg.resume = str(tmp_path / "run")
    more = resumed_config(cfg, [f"resume={tmp_path / 'run'}", "trainer.max_epochs=4"])
    assert more.trainer.max_epochs == 4 and more.paths.output_dir == str(tmp_path / "run")
    with pytest.raises(ConfigError, match="swaps a config group"):
        resumed_config(cfg, ["model=tiny_llama"])


def _poisoned_run(tmp_path, data_csv, monkeypatch, *extra: str):
    """An in-process run whose loss turns NaN at optimizer step 6 (after the step-5 save)."""
    from ftexp.tasks.base import FinetuneTask
    from ftexp.train import train

    original = FinetuneTask.normalized_loss

    def poisoned(self, total, count, batch):
        loss = original(self, total, count, batch)
        return loss * float("nan") if self.trainer.global_step == 6 else loss

    monkeypatch.setattr(FinetuneTask, "normalized_loss", poisoned)
    cfg = compose_config([*_overrides(data_csv), *extra], tmp_path / "run")
    return train(cfg)


def test_nan_guard_stops_naming_the_step_and_the_intact_checkpoint(tmp_path, data_csv, monkeypatch):
    with pytest.raises(FtexpError, match=r"NaN/inf gradients at step 6 .*last good checkpoint: .*last.ckpt "
                                         r"\(step 5\)"):
        _poisoned_run(tmp_path, data_csv, monkeypatch)
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_nan_guard_can_skip_the_step_instead(tmp_path, data_csv, monkeypatch):
    metrics = _poisoned_run(tmp_path, data_csv, monkeypatch, "callbacks.on_nonfinite=skip")
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    weights = torch.load(best, map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in weights["state_dict"].values())
    assert metrics["nonfinite_skipped_steps"] == 1


def test_a_run_saved_by_an_older_ftexp_resumes_with_the_same_meaning(tmp_path, data_csv):
    """config.yaml of runs started before the schema moved to `_target_` groups, logger nodes,
    per-task schemas and `random-init` models: resume reads it as the same choices today."""
    from omegaconf import OmegaConf

    from ftexp.cli import resumed_config
    from ftexp.config.validation import validate

    current = compose_config([*_overrides(data_csv), "logger=wandb", "logger.wandb.mode=offline"],
                             tmp_path / "run")
    old = OmegaConf.to_container(current)
    old["optimizer"] = {"name": "adamw", **{k: v for k, v in old["optimizer"].items() if k != "_target_"}}
    old["scheduler"] = {"name": "linear", **{k: v for k, v in old["scheduler"].items() if k != "_target_"}}
    old["logger"] = {"csv": True, "wandb": True, "wandb_mode": "offline", "wandb_project": "ftexp",
                     "wandb_entity": None, "wandb_name": None, "wandb_group": None, "wandb_tags": []}
    old["task"].update(train_on_prompt=False, sample_generations=3, neftune_noise_alpha=None)
    old["model"].update(name_or_path=old["model"]["tokenizer"], tokenizer=None)
    (tmp_path / "run").mkdir()
    OmegaConf.save(OmegaConf.create(old), tmp_path / "run" / "config.yaml")
    cfg = OmegaConf.create({"resume": str(tmp_path / "run")})

    resumed = validate(resumed_config(cfg, [f"resume={tmp_path / 'run'}"]))
    for group in ("optimizer", "scheduler", "logger", "task", "model"):
        assert OmegaConf.to_container(resumed[group]) == OmegaConf.to_container(current[group]), group


OLD_RUN = Path(__file__).parent / "fixtures" / "run_saved_by_ftexp_0_1_flat_layout"


def test_a_run_saved_before_the_package_layout_resumes_to_the_uninterrupted_result(tmp_path, data_csv):
    """A run dir killed mid-training by ftexp 0.1 (flat modules: ftexp.config, ftexp.checkpoints,
    ftexp.rewards, …; see the fixture's README) resumes under today's layout to the metrics and
    weights of the same job run whole today. Its first five steps ran on the processor that saved
    it, so on another one (other fp32 kernels) they agree to 1e-5, not bit for bit: measured
    1e-7 (Intel AMX) and 5e-7 (ATEN_CPU_CAPABILITY=default) at most, while resuming the same
    checkpoint with its Adam moments zeroed ends 3e-2 away."""
    import shutil

    from omegaconf import OmegaConf

    from ftexp.runs.paths import project_root

    run = tmp_path / "old"
    shutil.copytree(OLD_RUN, run)
    saved = OmegaConf.load(run / "config.yaml")
    saved.data.path, saved.paths.output_dir = str(data_csv), str(run)
    saved.paths.root_dir, saved.paths.data_dir = str(project_root()), str(project_root() / "data")
    saved.paths.cache_dir = str(tmp_path / "cache")
    OmegaConf.save(saved, run / "config.yaml")
    whole = tmp_path / "whole"
    done = _run([*_overrides(data_csv), "adapter=lora", f"hydra.run.dir={whole}"])
    assert done.returncode == 0, done.stderr[-3000:]

    resumed = _run([f"resume={run}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr + resumed.stdout  # from last.ckpt, not a fresh start
    metrics, weights = _outcome(run)
    expected_metrics, expected_weights = _outcome(whole)
    # The run keeps the group it was saved with (a hash of its config, whose data.path was the
    # machine's it ran on); everything it computed is today's uninterrupted run's.
    assert metrics.pop("group") == saved.group
    expected_metrics.pop("group")
    _assert_same_metrics(metrics, expected_metrics, rel=1e-5)
    assert weights.keys() == expected_weights.keys()
    for name, value in expected_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-5, msg=name)


def _interrupted_and_whole(args: list[str], tmp_path: Path) -> tuple[tuple[dict, dict], tuple[dict, dict]]:
    """(outcome of a run SIGKILLed after step 7 and resumed, outcome of the same run uninterrupted)."""
    whole, killed_run = tmp_path / "whole", tmp_path / "killed"
    done = _run([*args, f"hydra.run.dir={whole}"])
    assert done.returncode == 0, done.stderr[-3000:]
    killed = _run([*args, f"hydra.run.dir={killed_run}"], {"KILL_AT_STEP": "7", "KILL_WHERE": "after_step"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = _run([f"resume={killed_run}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return _outcome(killed_run), _outcome(whole)


def _assert_same_weights(weights: dict, expected: dict) -> None:
    assert weights.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=0, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("reference", ["adapter", "precompute"])
def test_a_killed_dpo_run_resumes_to_the_uninterrupted_result(tmp_path, reference):
    """The resume machinery covers the preference tasks: DPO with LoRA (reference: the disabled
    adapter, or log-probs precomputed before the first start and cached), killed mid-epoch."""
    from conftest import colour_preferences, preference_overrides

    data = colour_preferences(tmp_path / "pairs.jsonl")
    # 96 pairs / batch 8 = 12 steps per epoch, 2 epochs; LoRA dropout on, so the RNG matters.
    args = [*preference_overrides(data, "dpo", "adapter=lora", "optimizer.learning_rate=5e-3",
                                  "trainer.max_epochs=2", "callbacks.resume_every_n_steps=5",
                                  f"task.reference={reference}")]
    (metrics, weights), (expected_metrics, expected_weights) = _interrupted_and_whole(args, tmp_path)
    assert metrics.pop("reference") == expected_metrics.pop("reference") == reference
    # A resumed run counts only the reference passes after its restart.
    metrics.pop("reference_forward_passes"), expected_metrics.pop("reference_forward_passes")
    _assert_same_metrics(metrics, expected_metrics)
    _assert_same_weights(weights, expected_weights)


@pytest.mark.slow
@pytest.mark.parametrize("iterations", [1, 2])
def test_a_killed_grpo_run_resumes_to_the_uninterrupted_result(tmp_path, iterations):
    """Online RL: the completions sampled after the restart are those an uninterrupted run samples
    (the sampler draws from the RNG states the resume checkpoint holds), so the weights end equal.
    With num_iterations=2 the save after step 5 falls between a batch's two iterations: the kept
    samples travel in the checkpoint."""
    args = [f"task.num_iterations={iterations}", "+experiment=tiny_grpo", "trainer.enable_progress_bar=false",
            "generation.max_new_tokens=6",
            "~task.rewards.correct", "+task.rewards.short._target_=ftexp.tasks.rewards.length_penalty",
            "+task.rewards.short.max_chars=0", "+task.rewards.short.per_char=0.1",
            "trainer.max_steps=12", "trainer.val_check_interval=6", "callbacks.resume_every_n_steps=5",
            "task.sample_generations=0"]
    (metrics, weights), (expected_metrics, expected_weights) = _interrupted_and_whole(args, tmp_path)
    assert metrics.pop("reference") == expected_metrics.pop("reference") == "none"  # beta = 0
    _assert_same_metrics(metrics, expected_metrics)
    _assert_same_weights(weights, expected_weights)


@pytest.mark.slow
@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_a_killed_ppo_run_resumes_to_the_uninterrupted_result(tmp_path, critic):
    """PPO with two PPO epochs per rollout: the save after step 5 falls between a rollout's two
    epochs, so the kept rollout (samples, old log-probs and values, advantages, returns) travels in
    the checkpoint, and the critic (a value head, or a model of its own started from a reward
    run) resumes with the policy."""
    args = ["+experiment=tiny_ppo", "trainer.enable_progress_bar=false", "generation.max_new_tokens=6",
            "trainer.max_steps=12", "trainer.val_check_interval=6", "callbacks.resume_every_n_steps=5",
            "task.sample_generations=0", f"task.critic={critic}"]
    if critic == "separate":
        rm = tmp_path / "rm"
        trained = _run(["+experiment=tiny_rm", "trainer.max_steps=2", "trainer.enable_progress_bar=false",
                        "data.max_length=64", "data.max_prompt_length=32", f"hydra.run.dir={rm}"])
        assert trained.returncode == 0, trained.stderr[-3000:]
        args.append(f"task.critic_from={rm}")
    (metrics, weights), (expected_metrics, expected_weights) = _interrupted_and_whole(args, tmp_path)
    assert metrics.pop("reference") == expected_metrics.pop("reference") == "adapter"
    metrics.pop("reference_forward_passes"), expected_metrics.pop("reference_forward_passes")
    assert ("value_head.weight" if critic == "shared" else "critic.head.weight") in weights
    _assert_same_metrics(metrics, expected_metrics)
    _assert_same_weights(weights, expected_weights)


@pytest.mark.slow
def test_a_killed_on_policy_distillation_resumes_to_the_uninterrupted_result(tmp_path):
    """task=distill with task.on_policy_fraction=0.5: which batches the student samples, and what
    it samples, come from the RNG states the resume checkpoint holds."""
    from conftest import colour_facts

    data = colour_facts(tmp_path / "facts.jsonl")
    sft = ["data=code_alpaca", "data.split_column=null", f"data.path={data}", "model=tiny_llama",
           "adapter=none", "trainer.precision=32", "trainer.enable_progress_bar=false",
           "task.sample_generations=0"]
    teacher = _run(["task=causal_lm", *sft, "trainer.max_steps=4", f"hydra.run.dir={tmp_path / 'teacher'}"])
    assert teacher.returncode == 0, teacher.stderr[-3000:]
    args = ["task=distill", *sft, f"task.teacher={tmp_path / 'teacher'}", "task.on_policy_fraction=0.5",
            "generation.max_new_tokens=4", "trainer.max_steps=12", "callbacks.resume_every_n_steps=5"]
    (metrics, weights), (expected_metrics, expected_weights) = _interrupted_and_whole(args, tmp_path)
    metrics.pop("on_policy_batches"), expected_metrics.pop("on_policy_batches")  # counted since the start
    _assert_same_metrics(metrics, expected_metrics)
    _assert_same_weights(weights, expected_weights)


@pytest.mark.slow
def test_a_killed_lora_run_on_an_hqq_base_resumes_to_the_uninterrupted_result(data_csv, tmp_path):
    """quant=hqq: the resumed run quantizes its base again (HQQ needs no data, so the codes are the
    same) and continues the adapter from its checkpoint, bit for bit."""
    pytest.importorskip("hqq")
    args = [*_overrides(data_csv), "model=tiny_llama", "adapter=lora", "quant=hqq"]
    (metrics, weights), (expected_metrics, expected_weights) = _interrupted_and_whole(args, tmp_path)
    _assert_same_metrics(metrics, expected_metrics)
    _assert_same_weights(weights, expected_weights)
