"""task=grpo on the tiny random-init Llama with LoRA: a run end to end (sampling, rewards, the
per-step metrics, val/reward, sample generations) that ftexp.generate serves; the loss the task
computes equals grpo_losses.grpo_loss on log-probs computed independently, one unpadded sequence
at a time; no reference pass at beta=0 and the adapter-disabled network (no copy) at beta>0;
one-line errors for bad settings."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from conftest import assert_one_line, build_task, compose_config, run_in_process
from ftexp.runs.errors import ConfigError
from ftexp.tasks.grpo_losses import (
    ADVANTAGES,
    GRPO_LOSS_TYPES,
    compute_advantages,
    group_advantages,
    grpo_loss,
)

# Completion length in characters, penalised: random tokens differ in length, so every group has
# a spread of rewards (the default exact match would give a random-init model 0 everywhere).
LENGTH_REWARD = ["~task.rewards.correct", "+task.rewards.short._target_=ftexp.tasks.rewards.length_penalty",
                 "+task.rewards.short.max_chars=0", "+task.rewards.short.per_char=0.1"]


def _overrides(*extra: str) -> list[str]:
    return ["+experiment=tiny_grpo", "trainer.enable_progress_bar=false", "generation.max_new_tokens=6",
            "data.eval_batch_size=20", *extra]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    task, datamodule, _ = build_task(_overrides(*LENGTH_REWARD), tmp_path_factory.mktemp("grpo"))
    return task, datamodule


def _fixed_completions(task, n: int, length: int = 5) -> torch.Tensor:
    """n completions of random tokens: some end early with EOS (then padding), some run to the end."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(2000, 8000, (n, length), generator=gen)
    eos, pad = task.tokenizer.eos_token_id, task.tokenizer.pad_token_id
    for i in range(n):
        stop = i % (length + 2)  # 0 … length - 1: EOS there; beyond: no EOS (cut at the limit)
        if stop < length:
            ids[i, stop] = eos
            ids[i, stop + 1:] = pad
    return ids


def _independent(task, rows, completions, group_size: int):
    """(log-probs with gradient, mask, advantages): each prompt + completion run alone (no
    padding, default positions), rewards from the decoded text, advantages from group_advantages."""
    eos = task.tokenizer.eos_token_id
    n, length = completions.shape
    per_row, mask, rewards = [], torch.zeros(n, length, dtype=torch.bool), []
    for i in range(n):
        prompt = rows[i // group_size]["prompt_ids"]
        row = completions[i].tolist()
        real = row[:row.index(eos) + 1] if eos in row else row
        logits = task.network(input_ids=torch.tensor([prompt + real])).logits[0]
        picked = torch.log_softmax(logits[len(prompt) - 1:-1].float(), -1)
        per_row.append(torch.nn.functional.pad(picked.gather(-1, torch.tensor(real)[:, None])[:, 0],
                                               (0, length - len(real))))
        mask[i, :len(real)] = True
        rewards.append(-0.1 * len(task.tokenizer.decode(real, skip_special_tokens=True)))
    adv = group_advantages(torch.tensor(rewards), group_size, "group").advantages.float()
    return torch.stack(per_row), mask, adv


def _gradients(task, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    task.network.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    grads = {n: p.grad.clone() for n, p in task.network.named_parameters() if p.requires_grad}
    task.network.zero_grad(set_to_none=True)
    return grads


def test_the_loss_is_grpo_loss_on_independent_log_probs(built, monkeypatch):
    """For each aggregation, the same value and the same gradient: at the first iteration the
    ratio is 1, so the value alone would not see the log-probs — the gradient (A grad log pi) does."""
    task, datamodule = built
    group = task.hparams.task["num_generations"]
    rows = list(datamodule.datasets["train"].rows[:3])
    # Prompts of different lengths, so left padding and position ids matter (the arithmetic
    # prompts all tokenize to the same length: two are shortened).
    rows[0] = {**rows[0], "prompt_ids": rows[0]["prompt_ids"][4:]}
    rows[2] = {**rows[2], "prompt_ids": rows[2]["prompt_ids"][2:]}
    batch = datamodule.collate(rows)
    completions = _fixed_completions(task, len(rows) * group)
    monkeypatch.setattr(task, "generate", lambda ids, mask, sample: completions)
    samples = task.sample(batch, group)
    logps, mask, adv = _independent(task, rows, completions, group)
    assert torch.equal(samples.completion_mask, mask)
    torch.testing.assert_close(samples.advantages.advantages.float(), adv)
    assert adv.abs().sum() > 0  # a real signal, not a trivial 0
    got_logps = task.token_logps(task.network, samples)[0].detach()
    torch.testing.assert_close(got_logps[mask], logps.detach()[mask], rtol=1e-4, atol=1e-5)
    for loss_type in GRPO_LOSS_TYPES:
        monkeypatch.setitem(task.hparams.task, "loss_type", loss_type)
        result, _, entropy = task.loss(samples, None, None)
        expected = grpo_loss(logps, None, None, adv, mask, epsilon=0.2, beta=0.0, loss_type=loss_type,
                             max_completion_length=task.max_completion_length).loss
        assert result.loss.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6), loss_type
        got, want = _gradients(task, result.loss), _gradients(task, expected)
        assert any(g.abs().sum() > 0 for g in want.values())
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-7,
                                       msg=f"{loss_type}: {name}")
    assert entropy is not None and entropy > 0
    metrics = task.step_metrics(samples, result, entropy)
    lengths = samples.completion_mask.sum(1).float()
    assert metrics["completions/max_length"] == lengths.max().item() == 5
    no_eos = [i % 7 >= 5 for i in range(len(completions))]  # see _fixed_completions
    assert metrics["completions/clipped_ratio"] == pytest.approx(sum(no_eos) / len(no_eos))
    assert metrics["completions/mean_length"] == pytest.approx(lengths.mean().item())


def test_rloo_reinforce_pp_and_gspo_are_what_the_task_trains_on(built, monkeypatch):
    """task.advantage picks the baseline of the sampled groups' advantages, and
    task.importance_sampling=sequence the loss's ratio (GSPO), both straight from grpo_losses."""
    task, datamodule = built
    group = task.hparams.task["num_generations"]
    batch = datamodule.collate(list(datamodule.datasets["train"].rows[:3]))
    completions = _fixed_completions(task, 3 * group)
    monkeypatch.setattr(task, "generate", lambda ids, mask, sample: completions)
    seen = {}
    for estimator in ADVANTAGES:
        monkeypatch.setitem(task.hparams.task, "advantage", estimator)
        samples = task.sample(batch, group)
        seen[estimator] = samples.advantages.advantages
        expected = compute_advantages(samples.rewards, group, estimator).advantages
        torch.testing.assert_close(seen[estimator], expected)
    assert not torch.allclose(seen["group"], seen["rloo"])
    assert not torch.allclose(seen["rloo"], seen["reinforce_pp"])
    logps = task.token_logps(task.network, samples)[0].detach()
    old = logps + 0.3 * torch.randn(logps.shape, generator=torch.Generator().manual_seed(0))
    losses = {}
    for level in ("token", "sequence"):
        monkeypatch.setitem(task.hparams.task, "importance_sampling", level)
        result, _, _ = task.loss(samples, old, None)
        expected = grpo_loss(logps, old, None, samples.advantages.advantages.float(), samples.completion_mask,
                             epsilon=0.2, beta=0.0, importance_sampling=level,
                             max_completion_length=task.max_completion_length)
        assert result.loss.item() == pytest.approx(expected.loss.item(), rel=1e-4, abs=1e-6), level
        losses[level] = result.loss.item()
    assert losses["token"] != pytest.approx(losses["sequence"], rel=1e-3)


def test_reinforce_pp_takes_one_completion_per_prompt_and_refuses_group_scaling(tmp_path):
    cfg = compose_config(_overrides("task.advantage=reinforce_pp", "task.num_generations=1"), tmp_path)
    assert cfg.task.num_generations == 1 and cfg.task.scale_rewards is None
    with pytest.raises(ConfigError) as err:
        compose_config(_overrides("task.advantage=reinforce_pp", "task.scale_rewards=group"), tmp_path)
    assert "task.scale_rewards=group does not apply to task.advantage=reinforce_pp" in str(err.value)
    assert "\n" not in str(err.value)


def test_chunked_log_probs_equal_the_full_logits_path_with_their_gradients(built, monkeypatch):
    """The default path (final hidden states through the LM head a chunk at a time, no (N, L,
    vocab) logits) gives the log-probs, entropy and gradients of the full-logits path."""
    task, datamodule = built
    assert "chunked" in task.summary()["loss_path"]
    monkeypatch.setattr(task, "generate", lambda ids, mask, sample: _fixed_completions(task, len(ids)))
    monkeypatch.setitem(task.hparams.generation, "temperature", 0.7)
    samples = task.sample(datamodule.collate(datamodule.datasets["train"].rows[:2]), 4)
    chunked, chunked_entropy = task.token_logps(task.network, samples, entropy=True)
    with monkeypatch.context() as m:
        m.setattr(task, "loss_path", None)
        full, full_entropy = task.token_logps(task.network, samples, entropy=True)
    mask = samples.completion_mask
    torch.testing.assert_close(chunked[mask], full[mask], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked_entropy, full_entropy, rtol=1e-5, atol=1e-6)
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0)).masked_fill(~mask, 0)
    got, want = _gradients(task, (chunked * weights).sum()), _gradients(task, (full * weights).sum())
    assert any(g.abs().sum() > 0 for g in want.values())
    for name in want:  # within 1e-5 of each tensor's own scale: the two paths sum in other orders
        scale = float(want[name].abs().max())
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5 * scale, msg=name)


def test_beta_zero_has_no_reference_pass_and_beta_uses_the_disabled_adapter(built, monkeypatch):
    task, datamodule = built
    batch = datamodule.collate(datamodule.datasets["train"].rows[:2])
    completions = _fixed_completions(task, 2 * task.hparams.task["num_generations"])
    monkeypatch.setattr(task, "generate", lambda ids, mask, sample: completions)

    def no_reference(*args, **kwargs):
        raise AssertionError("beta=0 must not run the reference")

    with monkeypatch.context() as m:
        m.setattr(task, "reference_logps", no_reference)
        result = task.loss(*task.step_inputs(batch))[0]
    assert result.kl is None and task.reference_mode is None and task.summary()["reference"] == "none"

    weights = sum(p.numel() for p in task.parameters())
    disabled = []
    original = task.network.disable_adapter

    def counting():
        disabled.append(1)
        return original()

    monkeypatch.setitem(task.hparams.task, "beta", 0.1)
    monkeypatch.setattr(task.network, "disable_adapter", counting)
    before = task.reference_forward_passes
    result = task.loss(*task.step_inputs(batch))[0]
    assert task.reference_mode == "adapter" and disabled == [1]
    assert task.reference_forward_passes == before + 1
    assert task._reference_copy == [] and sum(p.numel() for p in task.parameters()) == weights
    # A fresh LoRA (B = 0) is the reference itself: KL 0, loss as at beta=0.
    assert result.kl is not None and result.kl.item() == pytest.approx(0.0, abs=1e-6)


def test_full_fine_tuning_with_beta_keeps_a_frozen_copy_out_of_the_checkpoint(tmp_path, monkeypatch):
    task, datamodule, _ = build_task(_overrides(*LENGTH_REWARD, "adapter=none", "task.beta=0.1"), tmp_path)
    assert task.reference_mode == "copy" and len(task._reference_copy) == 1
    copy_ids = {id(p) for p in task._reference_copy[0].parameters()}
    assert not copy_ids & {id(p) for p in task.parameters()}
    assert len(task.state_dict()) == len(task.network.state_dict()) + sum(
        len(m.state_dict()) for m in [task.train_loss, task.eval_means])
    monkeypatch.setattr(task, "generate", lambda ids, mask, sample: _fixed_completions(task, len(ids)))
    batch = datamodule.collate(datamodule.datasets["train"].rows[:2])
    result = task.loss(*task.step_inputs(batch))[0]
    assert task.reference_forward_passes == 1 and result.kl.item() == pytest.approx(0.0, abs=1e-6)


def test_a_tiny_run_end_to_end_then_generate(tmp_path, monkeypatch, capsys):
    from ftexp.generate import RunGenerator

    run = tmp_path / "run"
    code, err = run_in_process(_overrides(*LENGTH_REWARD, "trainer.max_steps=2", "task.beta=0.05",
                                          f"paths.output_dir={run}"), monkeypatch, capsys)
    assert code == 0, err[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert -10 < metrics["val/reward"] <= 0 and "val/rewards/short" in metrics and "test/reward" in metrics
    assert metrics["reference"] == "adapter" and metrics["reference_forward_passes"] == 2
    history = pd.read_csv(run / "csv" / "metrics.csv")
    for name in ("train/reward", "train/reward_std", "train/rewards/short/mean", "train/frac_reward_zero_std",
                 "train/completions/mean_length", "train/completions/max_length",
                 "train/completions/clipped_ratio", "train/kl", "train/clip_ratio/region_mean",
                 "train/entropy", "train/loss_step"):
        assert history[name].dropna().size == 2, name
    samples = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
    assert len(samples) >= 2 and all(s["reward"] == s["rewards"]["short"] <= 0 for s in samples)
    generator = RunGenerator(run, {"max_new_tokens": 3})
    assert isinstance(generator.generate([{"prompt": "What is 2 + 3? Answer with the number only."}])[0], str)


def test_a_repeated_loader_serves_each_window_num_iterations_times_and_resumes_inside_one():
    """repeat=2, accumulate=2 over 5 one-row batches: windows (0 1)(2 3) each served twice, the
    short window (4) left out; a resume after 3 served batches continues with the rest."""
    from ftexp.data.rows import LoaderPosition, Rows, rows_loader

    rows = Rows([{"x": i} for i in range(5)])

    def collate(batch):
        return {"x": torch.tensor([r["x"] for r in batch])}

    def served(position):
        loader = rows_loader(rows, 1, True, collate, 0, seed=3, accumulate=2,
                             count_items=lambda b: len(b["x"]), position=position, repeat=2)
        return len(loader), [(b["x"].item(), b["repeat_index"], b["window_index"], b["window_items"].item())
                             for b in loader]

    length, whole = served(LoaderPosition())
    assert length == len(whole) == 8
    assert [(r, w) for _, r, w, _ in whole] == [(0, 0), (0, 1), (1, 0), (1, 1)] * 2
    assert [x for x, *_ in whole[:2]] == [x for x, *_ in whole[2:4]] != [x for x, *_ in whole[4:6]]
    assert len({x for x, *_ in whole}) == 4 and all(items == 2 for *_, items in whole)
    position = LoaderPosition()
    position.resume = (torch.Generator().manual_seed(3).get_state(), 3)
    assert served(position)[1] == whole[3:]


def test_num_iterations_trains_the_kept_samples_against_the_policy_that_drew_them(tmp_path, monkeypatch,
                                                                                   capsys):
    """task.num_iterations=2: one sampling per two optimizer steps; the second step's old
    log-probs are the first step's policy log-probs, and its ratio is no longer 1."""
    from ftexp.tasks import grpo

    calls, sampled = [], []
    original_loss, original_generate = grpo.grpo_loss, grpo.GRPOTask.generate

    def recording_loss(policy, old, reference, *args, **kwargs):
        calls.append((policy.detach().clone(), None if old is None else old.clone()))
        return original_loss(policy, old, reference, *args, **kwargs)

    def counting_generate(self, ids, mask, sample):
        sampled.append(sample)
        return original_generate(self, ids, mask, sample)

    monkeypatch.setattr(grpo, "grpo_loss", recording_loss)
    monkeypatch.setattr(grpo.GRPOTask, "generate", counting_generate)
    run = tmp_path / "run"
    code, err = run_in_process(_overrides(*LENGTH_REWARD, "task.num_iterations=2", "trainer.max_steps=4",
                                          "optimizer.learning_rate=5e-2", "scheduler=constant",
                                          "task.sample_generations=0",
                                          "trainer.val_check_interval=4", f"paths.output_dir={run}"),
                               monkeypatch, capsys)
    assert code == 0, err[-2000:]
    assert sampled.count(True) == 2  # steps 1 and 3 sample; 2 and 4 reuse
    assert [old is None for _, old in calls] == [True, False, True, False]
    for (first, _), (second, old) in ((calls[0], calls[1]), (calls[2], calls[3])):
        assert torch.equal(old, first)  # the policy that drew the samples
        assert not torch.allclose(second, first)  # one step later: the ratio moved away from 1
    history = pd.read_csv(run / "csv" / "metrics.csv")
    rewards = history["train/reward"].dropna().tolist()
    assert len(rewards) == 4 and rewards[0] == rewards[1] and rewards[2] == rewards[3]


def test_the_weights_pushed_to_vllm_are_the_policy_merged_under_hub_names(built):
    """policy_weights (what the vLLM backend loads into its engine): a plain transformers model
    given them computes the LoRA policy's logits, and the policy is left unmerged and unchanged."""
    import copy

    from transformers import AutoModelForCausalLM

    from ftexp.tasks.vllm_sampler import policy_weights

    task, _ = built
    network = copy.deepcopy(task.network)
    with torch.no_grad():
        for name, param in network.named_parameters():
            if "lora_B" in name:  # a trained adapter (a fresh one is the identity)
                param.normal_(0, 0.05)
    before = {n: p.clone() for n, p in network.state_dict().items()}
    plain = AutoModelForCausalLM.from_config(network.get_base_model().config).eval()
    # Each tensor is the network's own storage, unmerged again after the loop: copied on the way.
    result = plain.load_state_dict({n: t.clone() for n, t in policy_weights(network)}, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= {"lm_head.weight"}  # tied
    ids = torch.tensor([[5, 17, 300, 42, 7]])
    network.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, network(input_ids=ids).logits,
                                   rtol=1e-5, atol=1e-5)
        with network.disable_adapter():
            adapter_off = network(input_ids=ids).logits
        assert not torch.allclose(plain(input_ids=ids).logits, adapter_off, atol=1e-4)
    assert all(torch.equal(before[n], v) for n, v in network.state_dict().items())


def test_prompts_as_text_through_the_template_or_as_chat_messages_keep_their_columns(built, tmp_path):
    from ftexp.config.data import DataConfig
    from ftexp.data.prompts import PromptsDataModule

    task, _ = built
    path = tmp_path / "prompts.jsonl"
    chat = [{"role": "user", "content": "add 2 and 3"}]
    pd.DataFrame([{"prompt": chat, "answer": "5", "level": i, "split": s}
                  for i, s in enumerate(["train", "train", "validation"])]).to_json(path, orient="records",
                                                                                   lines=True)
    data = DataConfig(path=str(path), split_column="split")
    module = PromptsDataModule(data, task.tokenizer)
    module.setup()
    row = module.datasets["train"].rows[1]
    expected = task.tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=True)
    assert module.prompt_kind == "chat"
    assert row["prompt_ids"] == list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    assert row["columns"] == {"answer": "5", "level": 1}  # the split column is not the rewards' business

    rows = [("1 + 1", "2", "train"), ("1 + 2 + 3", "6", "train"), ("3 + 4", "7", "validation")]
    pd.DataFrame([{"question": q, "answer": a, "split": s} for q, a, s in rows]).to_json(
        path, orient="records", lines=True)
    data = DataConfig(path=str(path), split_column="split", prompt_template="Q: {prompt} A:")
    data.preference.prompt_column = "question"
    module = PromptsDataModule(data, task.tokenizer)
    module.setup()
    batch = module.collate(module.datasets["train"].rows)
    short, long = (task.tokenizer("Q: 1 + 1 A:", add_special_tokens=False)["input_ids"],
                   task.tokenizer("Q: 1 + 2 + 3 A:", add_special_tokens=False)["input_ids"])
    assert module.prompt_kind == "text" and len(short) < len(long)
    assert batch["input_ids"][0, -len(short):].tolist() == short  # left-padded: prompts end together
    assert batch["attention_mask"][0].tolist() == [0] * (len(long) - len(short)) + [1] * len(short)
    assert batch["prompts"] == ["1 + 1", "1 + 2 + 3"] and batch["columns"] == {"answer": ["2", "6"]}


def test_a_reward_function_that_raises_stops_with_its_name(built, monkeypatch):
    from ftexp.tasks.rewards import Reward, RewardError

    task, datamodule = built

    def boom(prompts, completions):
        raise ValueError("no score\nsecond line")

    monkeypatch.setattr(task, "rewards", [Reward(boom, name="boom")])
    monkeypatch.setattr(task, "generate", lambda ids, mask, sample: _fixed_completions(task, len(ids)))
    with pytest.raises(RewardError, match="reward 'boom' raised ValueError: no score$"):
        task.sample(datamodule.collate(datamodule.datasets["train"].rows[:1]), 2)


@pytest.mark.parametrize(("override", "message"), [
    ("task.num_generations=1", "task.num_generations=1 must be at least 2"),
    ("task.epsilon=1.5", "task.epsilon=1.5 must lie in (0, 1)"),
    ("task.num_iterations=0", "task.num_iterations=0 must be at least 1"),
    ("task.loss_type=ppo", "'task.loss_type=ppo' is not a valid choice"),
    ("task.advantage=rlo", "'task.advantage=rlo' is not a valid choice. Did you mean 'rloo'?"),
    ("task.importance_sampling=seq", "'task.importance_sampling=seq' is not a valid choice"),
    ("+task.rewards.bad.weight=2", "task.rewards.bad needs a _target_"),
    ("generation.temperature=0", "needs a temperature > 0"),
    ("strategy=fsdp", "task=grpo samples with transformers' generate"),
    ("task.generation_backend=vllm", "task.generation_backend=vllm needs a CUDA GPU and none is visible"),
    ("task.vllm_gpu_memory_utilization=1.5", "must lie in (0, 1)"),
])
def test_bad_settings_are_one_line_errors(override, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        compose_config(_overrides(override), tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_reward_target_fails_in_one_line_before_training(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    code, err = run_in_process(_overrides("+task.rewards.mine._target_=ftexp.tasks.rewards.no_such_reward",
                                          f"paths.output_dir={run}"), monkeypatch, capsys)
    assert code != 0
    assert_one_line(err, "task.rewards.mine._target_=ftexp.tasks.rewards.no_such_reward cannot be imported")
    assert not (run / "metrics.json").exists()


@pytest.mark.slow
def test_a_learnable_reward_rises_within_twenty_steps(tmp_path, monkeypatch, capsys, margin):
    """Shorter completions (in characters) are rewarded: full fine-tuning of the tiny model moves
    its sampling toward short tokens, and the per-step mean reward shows it (about -4.3 → -2.0 on
    the seeded run; ~7 s on 2 CPU cores)."""
    run = tmp_path / "run"
    code, err = run_in_process(_overrides(*LENGTH_REWARD, "adapter=none", "optimizer.learning_rate=1e-2",
                                          "scheduler.warmup_fraction=0.0", "trainer.max_steps=20",
                                          "trainer.val_check_interval=20", "task.sample_generations=0",
                                          f"paths.output_dir={run}"), monkeypatch, capsys)
    assert code == 0, err[-2000:]
    rewards = pd.read_csv(run / "csv" / "metrics.csv")["train/reward"].dropna().tolist()
    assert len(rewards) == 20
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    margin.above("train/reward rise, mean of last 5 steps − first 5", last - first, 0.5, rewards)
