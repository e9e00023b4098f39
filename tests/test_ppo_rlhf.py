"""PPO from a trained reward model, the RLHF pipeline in three runs (slow tier): SFT on the
evaluation demo's colour data (which teaches the answer's form, one colour word, not which colour
is true), a reward model on its colour preferences, then PPO with that reward model as the only
reward and the critic started from it (task.critic=separate). The reward model's mean score of
the policy's greedy answers to held-out prompts (the benchmark's test items: phrasing-and-thing
pairs no run trained on) rises from the SFT policy's to the PPO policy's.

What it does not claim: that the policy learns the true colours. On this toy PPO raises the
score mostly by answering with the colours (or the empty answer) the reward model scores
highest whatever the prompt — reward hacking of a small reward model, as RLHF is known for.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import compose_config, learning_seed

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "eval_demo"
BENCHMARK_ITEMS = ROOT / "src" / "ftexp" / "evaluation" / "tasks" / "data" / "colours.jsonl"
TINY = ["model=tiny_llama", "trainer.precision=32", "trainer.enable_progress_bar=false"]


def _prompts_file(path: Path) -> Path:
    """The preference file's prompts, once each, with their split (PPO's data: prompts only)."""
    rows = [json.loads(line) for line in (DEMO / "colour_prefs.jsonl").read_text().splitlines()]
    prompts = {(r["prompt"], r["split"]): None for r in rows}
    path.write_text("".join(json.dumps({"prompt": p, "split": s}) + "\n" for p, s in prompts))
    return path


def _held_out_score(run: Path, reward: object) -> float:
    from ftexp.generate import RunGenerator

    items = [json.loads(line) for line in BENCHMARK_ITEMS.read_text().splitlines()]
    prompts = [i["question"] for i in items if i["split"] == "test"]
    answers = RunGenerator(run, {"max_new_tokens": 3, "do_sample": False}).generate(
        [{"prompt": p} for p in prompts])
    scores = reward(prompts=prompts, completions=answers)
    return sum(scores) / len(scores)


def test_ppo_raises_the_reward_models_score_on_held_out_prompts(tmp_path, margin):
    from ftexp.tasks.rewards import reward_model
    from ftexp.train import train

    seed = f"seed={learning_seed()}"
    sft, rm, ppo = tmp_path / "sft", tmp_path / "rm", tmp_path / "ppo"
    train(compose_config(["+experiment=tiny_eval_demo_sft", "eval=none", *TINY, seed], output_dir=sft))
    train(compose_config(["task=reward", "adapter=none", *TINY, seed,
                          f"data.path={DEMO / 'colour_prefs.jsonl'}", "data.split_column=split",
                          "data.max_length=32", "data.max_prompt_length=24", "data.batch_size=16",
                          "data.eval_batch_size=64", "data.prompt_template='{prompt} '",
                          "optimizer.learning_rate=1e-3", "trainer.max_epochs=3"], output_dir=rm))
    accuracy = json.loads((rm / "metrics.json").read_text())["val/accuracy"]
    margin.at_least("reward model's val/accuracy", accuracy, 0.9)
    train(compose_config([
        "task=ppo", *TINY, seed, "adapter=none", f"model.init_from={sft}",
        f"data.path={_prompts_file(tmp_path / 'prompts.jsonl')}", "data.split_column=split",
        "data.text_columns=[prompt]", "data.prompt_template='{prompt} '", "data.batch_size=16",
        "data.eval_batch_size=64", "~task.rewards.correct",
        "+task.rewards.rm._target_=ftexp.tasks.rewards.reward_model", f"+task.rewards.rm.run={rm}",
        "task.critic=separate", f"task.critic_from={rm}", "task.num_generations=4", "task.num_iterations=2",
        "task.sample_generations=0", "generation.max_new_tokens=3", "optimizer.learning_rate=3e-4",
        "trainer.max_epochs=-1", "trainer.max_steps=216", "trainer.val_check_interval=18"], output_dir=ppo))
    reward = reward_model(run=str(rm))
    before, after = _held_out_score(sft, reward), _held_out_score(ppo, reward)
    # A PPO run that leaves the greedy answers as they were scores exactly 0 here. Over 3 seeds x
    # native / AVX2 kernels the rise was +0.11 at worst, +0.48 median (scores around -3.1).
    margin.at_least("held-out reward-model score, PPO - SFT", after - before, 0.05, (before, after))
