"""The lean LM loss (tasks/lm_loss.py): token losses and log-probs from the final hidden states in
chunks give the same numbers and gradients as the full-logits path, for every architecture it
lists, for SFT (unpacked and packed), pretraining, gradient accumulation and the preference
tasks; it is on by default; the fused-kernel switch is refused cleanly where it cannot run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from conftest import (
    assert_one_line,
    build_task,
    colour_preferences,
    compose_config,
    preference_overrides,
    run_in_process,
)
from ftexp.config.model import ModelConfig
from ftexp.data.targets import IGNORE
from ftexp.runs.errors import ConfigError
from ftexp.runs.paths import config_dir
from ftexp.tasks import lm_loss
from ftexp.tasks.causal_lm import token_losses
from ftexp.tasks.preference_losses import sequence_logps

REL = 1e-5
SMALL = dict(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, intermediate_size=64, head_dim=8)
# Per-architecture spellings of the same tiny shape (GPT-2 / Bloom / OPT / NeoX / Falcon name
# their sizes differently).
SHAPES = {
    "gpt2": dict(vocab_size=500, n_embd=32, n_layer=2, n_head=4),
    "bloom": dict(vocab_size=500, hidden_size=32, n_layer=2, n_head=4),
    "opt": dict(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                word_embed_proj_dim=32),
    "gpt_neox": dict(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64),
    "falcon": dict(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=4),
}


def _tiny(model_type: str) -> torch.nn.Module:
    torch.manual_seed(0)
    shape = SHAPES.get(model_type, SMALL)
    # Large weights, so the logits are far from uniform and a wrong transform would show.
    config = AutoConfig.for_model(model_type, **shape, initializer_range=0.2, bos_token_id=1,
                                  eos_token_id=2, pad_token_id=0)
    return AutoModelForCausalLM.from_config(config).eval()


def _labels(ids: torch.Tensor) -> torch.Tensor:
    labels = ids.clone()
    labels[:, :3] = IGNORE  # a prompt
    labels[1, -4:] = IGNORE  # padding
    return labels


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def _assert_same_grads(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Every gradient tensor within rel 1e-5 of its own scale (its largest entry): the two paths
    sum over tokens in another order, which moves small entries by fp32 rounding of the large
    ones. Gradients that are zero in exact arithmetic (a key bias under softmax) hold only
    rounding noise on either path: held to 1e-6 of the model's largest entry."""
    assert a.keys() == b.keys() and a
    floor = 1e-6 * max(float(g.abs().max()) for g in a.values())
    for name in a:
        atol = max(REL * float(a[name].abs().max()), floor)
        torch.testing.assert_close(b[name], a[name], rtol=REL, atol=atol, msg=name)


@pytest.mark.parametrize("model_type", sorted(lm_loss.HEADS))
def test_every_listed_architecture_matches_its_own_logits(model_type: str):
    """Loss and every gradient equal the model's own full logits (its softcap / scale included),
    with chunks that split rows (7 tokens) so chunk borders fall mid-sequence."""
    model = _tiny(model_type)
    path = lm_loss.choose_loss_path(model, 7)
    assert path.name == "chunked(7)", path
    ids = torch.randint(3, 500, (2, 13), generator=torch.Generator().manual_seed(1))
    labels = _labels(ids)
    full, trained = token_losses(model(input_ids=ids, use_cache=False).logits, labels)
    full.sum().backward()
    want = _grads(model)
    hidden = lm_loss.final_hidden_states(model, input_ids=ids)
    head = lm_loss.output_head(model)
    chunked, chunked_trained = lm_loss.token_losses_from_hidden(hidden, labels, head, path)
    chunked.sum().backward()
    assert torch.equal(trained, chunked_trained)
    torch.testing.assert_close(chunked, full, rtol=REL, atol=1e-6)
    _assert_same_grads(want, _grads(model))
    # The summed loss the causal-LM tasks take: fused (gradients in the forward pass) where the
    # head is a plain linear layer.
    hidden = lm_loss.final_hidden_states(model, input_ids=ids)
    total, count = lm_loss.summed_token_loss(hidden, labels, head, path)
    total.backward()
    assert lm_loss.fuses(head) and count == trained.sum()
    assert float(total) == pytest.approx(float(full.sum()), rel=REL)
    _assert_same_grads(want, _grads(model))


def test_the_logit_transform_matters():
    """Negative control: Gemma 2 without its soft-capping (a plain head) gives other losses."""
    model = _tiny("gemma2")
    ids = torch.randint(3, 500, (1, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, _ = token_losses(model(input_ids=ids).logits * 40, ids)  # push the logits past the cap
        head = lm_loss.output_head(model)
        head.weight.mul_(40)
        hidden = lm_loss.final_hidden_states(model, input_ids=ids)
        capped, _ = lm_loss.token_losses_from_hidden(hidden, ids, head, lm_loss.choose_loss_path(model, 4))
        plain, _ = lm_loss.token_losses_from_hidden(hidden, ids, head, lm_loss.LossPath("x", 4))
    assert not torch.allclose(capped, plain, rtol=1e-3)


def test_unlisted_architectures_and_prompt_learning_keep_full_logits():
    from peft import PromptTuningConfig, get_peft_model

    gptj = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "gptj", vocab_size=100, n_embd=32, n_layer=1, n_head=4, rotary_dim=4))
    path = lm_loss.choose_loss_path(gptj, 1024)
    assert path.full_logits and "gptj" in path.reason
    prompted = get_peft_model(_tiny("llama"), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    path = lm_loss.choose_loss_path(prompted, 1024)
    assert path.full_logits and "prompt-learning" in path.reason
    assert lm_loss.choose_loss_path(_tiny("llama"), None).describe() == "full_logits"


def test_no_full_vocab_logits_exist_in_the_chunked_path():
    """The head only ever sees one chunk of the trained positions."""
    model = _tiny("llama")
    head = lm_loss.output_head(model)
    seen: list[int] = []
    hook = head.register_forward_hook(lambda m, args, out: seen.append(out.shape[0]))
    ids = torch.randint(3, 500, (2, 40))
    labels = _labels(ids)
    hidden = lm_loss.final_hidden_states(model, input_ids=ids)
    seen.clear()  # the forward's own head call covers one position per row
    losses, _ = lm_loss.token_losses_from_hidden(hidden, labels, head, lm_loss.choose_loss_path(model, 16))
    losses.sum().backward()
    hook.remove()
    trained = int((labels[:, 1:] != IGNORE).sum())
    # Forward chunks, then the same chunks recomputed in the backward pass.
    assert max(seen) == 16 and sum(seen) == 2 * trained, seen


# -- through the tasks ----------------------------------------------------------------------------

def _lm(*extra: str) -> list[str]:
    return ["task=causal_lm", "data=code_alpaca", "model=tiny_llama", "data.max_length=128",
            "data.batch_size=4", "data.max_train_samples=8", "task.sample_generations=0",
            "trainer.precision=32", "trainer.enable_progress_bar=false", *extra]


def _task_grads(task, batches: list[dict], path: lm_loss.LossPath) -> tuple[list[float], dict]:
    """Training-step losses and the accumulated gradients over `batches` under `path`."""
    task.loss_path = path
    task._trainer = SimpleNamespace(accumulate_grad_batches=len(batches), log_every_n_steps=10**6)
    losses = []
    for i, batch in enumerate(batches):
        loss = task.training_step(batch, i)
        loss.backward()
        losses.append(loss.item())
    return losses, _grads(task.network)


def _compare_paths(task, batches: list[dict]) -> None:
    chunked = task.loss_path
    assert chunked.name == "chunked(1024)"
    small = lm_loss.LossPath("chunked(48)", 48, transform=chunked.transform)  # several chunks per row
    full_losses, full_grads = _task_grads(task, batches, lm_loss.LossPath("full_logits"))
    losses, grads = _task_grads(task, batches, small)
    assert losses == pytest.approx(full_losses, rel=REL)
    _assert_same_grads(full_grads, grads)


@pytest.mark.parametrize("overrides", [[], ["data.packing=true"],
                                       ["adapter=lora", "adapter.lora_dropout=0.0"],
                                       ["task=pretrain", "data.max_length=64"]],
                         ids=["sft", "sft_packed", "sft_lora", "pretrain"])
def test_task_loss_and_grads_match_the_full_logits_path(overrides: list[str], tmp_path: Path):
    task, datamodule, _ = build_task(_lm(*overrides), tmp_path)
    assert task.summary()["loss_path"] == "chunked(1024)"  # what metrics.json reports
    batch = next(iter(datamodule.train_dataloader()))
    if "data.packing=true" in overrides:
        assert "position_ids" in batch and "attention_mask" not in batch
    _compare_paths(task, [batch])


def test_gradient_accumulation_over_two_micro_batches_matches(tmp_path: Path):
    task, datamodule, _ = build_task(_lm(), tmp_path)
    rows = datamodule.datasets["train"].rows
    first, second = datamodule.collate(rows[:3]), datamodule.collate(rows[3:8])  # unequal sizes
    window = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in (first, second))
    for b in (first, second):
        b["window_items"] = torch.tensor(window)
    _compare_paths(task, [first, second])


@pytest.mark.parametrize("name", ["dpo", "kto"])
def test_preference_logps_and_grads_match(name: str, tmp_path: Path):
    data = colour_preferences(tmp_path / "prefs.jsonl", paired=name != "kto")
    task, datamodule, _ = build_task(preference_overrides(data, name, "adapter=lora"), tmp_path)
    assert task.loss_path.name == "chunked(1024)"
    batch = datamodule.collate(datamodule.datasets["train"].rows[:4])
    with torch.no_grad():  # make the adapter matter
        for n, p in task.network.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    logits = task.network(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    want, want_n = sequence_logps(logits, batch["labels"])
    want.sum().backward()
    want_grads = _grads(task.network)
    task.loss_path = lm_loss.LossPath("chunked(3)", 3)
    got, got_n = task._logps(task.network, batch)
    got.sum().backward()
    assert torch.equal(got_n, want_n)
    torch.testing.assert_close(got, want, rtol=REL, atol=1e-5)
    _assert_same_grads(want_grads, _grads(task.network))
    # The reference pass (adapter disabled) takes the same path.
    with torch.no_grad():
        ref = task.reference_logps(batch)
        with task.network.disable_adapter():
            base = task.network(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        torch.testing.assert_close(ref, sequence_logps(base, batch["labels"])[0], rtol=REL, atol=1e-5)


# -- configuration --------------------------------------------------------------------------------

def test_chunked_is_the_default(tmp_path: Path):
    assert ModelConfig.loss_chunk_tokens == 1024 and ModelConfig.kernels == "none"
    cfg = compose_config(_lm(), tmp_path)
    assert cfg.model.loss_chunk_tokens == 1024 and cfg.model.kernels == "none"
    with pytest.raises(ConfigError, match="model.loss_chunk_tokens=0 must be a positive"):
        compose_config(_lm("model.loss_chunk_tokens=0"), tmp_path)
    assert compose_config(_lm("model.loss_chunk_tokens=null"), tmp_path).model.loss_chunk_tokens is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("kernels", ["liger", "cut_cross_entropy"])
def test_kernels_are_refused_without_cuda(kernels: str, tmp_path: Path, monkeypatch, capsys):
    message = f"model.kernels={kernels} runs on CUDA GPUs only.*model.kernels=none"
    with pytest.raises(ConfigError, match=message):
        compose_config(_lm(f"model.kernels={kernels}"), tmp_path)
    code, err = run_in_process([*_lm(f"model.kernels={kernels}"), f"paths.output_dir={tmp_path}"],
                               monkeypatch, capsys)
    assert code == 2
    assert_one_line(err, f"model.kernels={kernels} runs on CUDA GPUs only")


@pytest.mark.parametrize("kernels,package,extra", [("liger", "liger_kernel", "liger"),
                                                   ("cut_cross_entropy", "cut_cross_entropy", "cce")])
def test_kernels_without_their_package_name_the_extra(kernels, package, extra, tmp_path, monkeypatch):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    with pytest.raises(ConfigError, match=rf"needs the {package} package.*pip install 'ftexp\[{extra}\]'"):
        compose_config(_lm(f"model.kernels={kernels}"), tmp_path)


# -- the GPU benchmark's CPU mode -----------------------------------------------------------------

def test_gpu_throughput_tiny_cpu_mode_runs_both_paths_with_equal_losses(monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "gpu_throughput", config_dir().parent / "benchmarks" / "gpu_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_throughput", bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    rows = bench.run(bench.tiny_settings(steps=1, warmup=0, rows=("lora",)))
    (row,) = rows
    assert row["steps"] == 1 and len(row["hf_losses"]) == len(row["ftexp_losses"]) == 1
    assert row["ftexp_losses"] == pytest.approx(row["hf_losses"], rel=1e-4)


def test_a_run_reports_its_loss_path_in_metrics_json(tmp_path: Path):
    import json

    from ftexp.train import train

    out = tmp_path / "run"
    train(compose_config(_lm("trainer.max_steps=2", "trainer.limit_val_batches=1",
                             "trainer.limit_test_batches=1", "callbacks.checkpoint=false", "logger=none"),
                         output_dir=out))
    assert json.loads((out / "metrics.json").read_text())["loss_path"] == "chunked(1024)"


def test_log_probs_and_entropy_for_sampled_completions_match_grpo_losses():
    """What online RL needs (per-token log-probs of given ids at a temperature, and the entropy
    metric), from hidden states in chunks, equals grpo_losses on the full logits."""
    from ftexp.tasks.grpo_losses import token_entropy, token_logps

    model = _tiny("qwen2")
    ids = torch.randint(3, 500, (3, 11), generator=torch.Generator().manual_seed(3))
    length, temperature = 6, 0.7
    logits = model(input_ids=ids).logits[:, -(length + 1):-1] / temperature
    want = token_logps(logits, ids[:, -length:])
    want.sum().backward()
    want_grads = _grads(model)
    hidden = lm_loss.final_hidden_states(model, input_ids=ids)[:, -(length + 1):-1]
    head = lm_loss.output_head(model)
    got = lm_loss.chunked_token_logps(hidden, ids[:, -length:], head, 4, temperature=temperature,
                                      ignore_index=None)
    got.sum().backward()
    torch.testing.assert_close(got, want, rtol=REL, atol=1e-5)
    _assert_same_grads(want_grads, _grads(model))
    mask = torch.ones_like(want, dtype=torch.bool)
    torch.testing.assert_close(lm_loss.chunked_token_entropy(hidden, head, 4, temperature=temperature),
                               token_entropy(logits.detach(), mask), rtol=REL, atol=1e-5)


def test_a_batch_without_trained_tokens_still_backpropagates():
    """All labels ignored (a prompt cut before its response): loss 0 and zero gradients on both
    chunked paths, as with full logits, instead of a tensor that cannot backpropagate."""
    model = _tiny("llama")
    ids = torch.randint(3, 500, (2, 9))
    labels = torch.full_like(ids, IGNORE)
    head, path = lm_loss.output_head(model), lm_loss.choose_loss_path(model, 4)
    for fn in (lambda h: lm_loss.token_losses_from_hidden(h, labels, head, path)[0].sum(),
               lambda h: lm_loss.summed_token_loss(h, labels, head, path)[0]):
        loss = fn(lm_loss.final_hidden_states(model, input_ids=ids))
        loss.backward()
        assert float(loss) == 0.0
        assert all(float(g.abs().max()) == 0.0 for g in _grads(model).values())
