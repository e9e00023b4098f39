"""quant=hqq (Half-Quadratic Quantization through the hqq package) on the tiny Llama, on CPU: the
layers it quantizes and keeps, the error and the bytes its widths promise, LoRA training on top
(only the adapter moves), exact resume after kill -9, and an export that dequantizes first; and
quant=eetq refused on a machine without CUDA."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import colour_facts, compose_config, learning_seed
from ftexp.builders.backbone import load_backbone
from ftexp.builders.hqq import HqqQuantization, has_hqq_layers, is_hqq_layer
from ftexp.builders.quant import dequantize, quantization_config
from ftexp.runs.errors import ConfigError

pytest.importorskip("hqq")
pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB = 1024
HQQ_RUN = ["model=tiny_llama", "task=causal_lm", "data=code_alpaca", "adapter=lora", "quant=hqq"]


def tiny_llama(quant: HqqQuantization | None = None) -> torch.nn.Module:
    cfg = compose_config(["model=tiny_llama"], resolve=False)
    random_init = {**OmegaConf.to_container(cfg.model.random_init), "vocab_size": VOCAB}
    return load_backbone("random-init", random_init=random_init, causal_lm=True,
                         quantization_config=quant).eval()


def quant_settings(*overrides: str) -> HqqQuantization:
    cfg = compose_config([*HQQ_RUN, *overrides], resolve=False)
    return quantization_config(OmegaConf.to_container(cfg.quant))


def relative_error(quantized: torch.nn.Module, original: torch.nn.Module) -> float:
    """‖W_dequantized − W‖ / ‖W‖ over every quantized weight."""
    restored = dict(dequantize(copy.deepcopy(quantized)).named_parameters())
    pairs = [(restored[n], p) for n, p in original.named_parameters()
             if ".layers." in n and n.endswith("proj.weight")]
    error = sum(float((r.float() - p).pow(2).sum()) for r, p in pairs)
    return (error / sum(float(p.pow(2).sum()) for _, p in pairs)) ** 0.5


def test_hqq_quantizes_the_block_linears_and_keeps_the_lm_head():
    model = tiny_llama(quant_settings("quant.compute_dtype=float32"))
    quantized = {n for n, m in model.named_modules() if is_hqq_layer(m)}
    assert len(quantized) == 14 and all(".layers." in n and n.endswith("_proj") for n in quantized)
    assert isinstance(model.lm_head, torch.nn.Linear) and not is_hqq_layer(model.lm_head)


def test_wider_codes_reconstruct_the_weights_closer_and_4_bits_take_a_quarter_of_bf16():
    original = tiny_llama()
    errors = {bits: relative_error(tiny_llama(quant_settings(f"quant.nbits={bits}",
                                                             "quant.compute_dtype=float32")), original)
              for bits in (2, 4, 8)}
    # Uniform codes: each extra bit halves the step; HQQ's fitted zero and scale land well inside
    # the round-to-nearest bound (step / sqrt(12) relative to the weights' spread).
    assert errors[8] < errors[4] < errors[2] < 0.5
    assert errors[4] < 0.15 and errors[8] < 0.01
    model = tiny_llama(quant_settings())
    layer = model.model.layers[0].mlp.gate_proj  # 128 × 64: 8,192 weights, 128 groups of 64
    assert layer.W_q.dtype == torch.uint8 and layer.W_q.numel() == 128 * 64 // 2  # two codes a byte
    # bf16: 2 bytes a weight; 4-bit codes half a byte, plus a bf16 scale and zero per group of 64.
    group_overhead = 2 * 2 * (128 * 64 // 64)
    assert layer.W_q.numel() + group_overhead == 128 * 64 * 2 / 4 + group_overhead
    assert {layer.meta["scale"].numel(), layer.meta["zero"].numel()} == {128 * 64 // 64}


def test_lora_on_an_hqq_base_trains_and_only_the_adapter_moves(margin):
    from ftexp.builders.adapter import apply_adapter
    from ftexp.builders.quant import prepare_for_kbit_training

    torch.manual_seed(learning_seed(0))
    base = prepare_for_kbit_training(tiny_llama(quant_settings()), upcast_norms=True)
    model = apply_adapter(base, {"method": "lora", "r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
                                 "target_modules": "all-linear"}, task_type="CAUSAL_LM").train()
    wrapped = {n for n, m in model.named_modules() if type(m).__name__ == "HqqLoraLinear"}
    assert len(wrapped) == 14  # every quantized layer got an adapter (PEFT's all-linear skips HQQ)
    frozen_codes = {n: b.clone() for n, b in model.named_parameters() if n.endswith("W_q")}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, VOCAB, (4, 24), generator=torch.Generator().manual_seed(0))
    def loss() -> torch.Tensor:
        # A fresh autocast context per forward, as Lightning's bf16-mixed precision enters it (one
        # held across steps would keep serving the first step's cached bf16 copies of the weights).
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(input_ids=ids, labels=ids).loss

    first = loss().item()
    for _ in range(8):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    last = loss().item()
    margin.above("loss fall over the steps", first - last, 0.5, (first, last))
    assert before and all("lora_" in n for n in before)
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if "lora_B" in n)
    assert all(torch.equal(b, frozen_codes[n]) for n, b in model.named_parameters() if n.endswith("W_q"))


def test_a_run_on_an_hqq_base_exports_dequantized_and_merged(tmp_path: Path):
    from transformers import AutoModelForCausalLM

    from ftexp.export import export_run
    from ftexp.predict import load_trained
    from ftexp.train import train

    data = colour_facts(tmp_path / "facts.jsonl")
    cfg = compose_config(["task=causal_lm", "data=code_alpaca", f"data.path={data}", "data.split_column=null",
                          "model=tiny_llama", "adapter=lora", "quant=hqq", "quant.compute_dtype=float32",
                          "trainer=smoke", "trainer.precision=32", "trainer.enable_progress_bar=false"],
                         output_dir=tmp_path / "run")
    train(cfg)
    task, tokenizer, _ = load_trained(tmp_path / "run")
    assert has_hqq_layers(task.network)  # the run's own model computes on the quantized base
    out = export_run(tmp_path / "run", tmp_path / "model", dtype="float32")
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not has_hqq_layers(reloaded) and "quantization_config" not in reloaded.config.to_dict()
    ids = torch.tensor([tokenizer("what colour is the plum?")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, task.network(input_ids=ids).logits,
                                   atol=1e-4, rtol=0)


@pytest.mark.parametrize(("overrides", "message"), [
    (["quant.nbits=5"], "quant.nbits=5 is not a width hqq packs; choose one of 1, 2, 3, 4, 8."),
    (["quant.axis=2"], "quant.axis=2 must be 0 or 1"),
    (["adapter=none"], "quant=hqq with adapter=none"),
])
def test_bad_hqq_settings_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        cfg = compose_config([*HQQ_RUN, *overrides], resolve=False)
        quantization_config(OmegaConf.to_container(cfg.quant))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_group_size_that_does_not_divide_a_layer_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="quant.group_size=48 does not divide .*64 inputs; choose a"):
        tiny_llama(quant_settings("quant.group_size=48"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="EETQ runs where CUDA is")
def test_eetq_is_refused_without_cuda_in_one_line():
    with pytest.raises(ConfigError, match=r"^quant=eetq runs EETQ's int8 weight-only CUDA kernels, and "
                                          r"this machine has no CUDA device; use quant=hqq or quant=8bit on "
                                          r"CPU\.$"):
        quantization_config({"method": "eetq", "skip_modules": None})


def test_eetq_with_a_weight_adapter_is_refused_before_any_model_loads():
    with pytest.raises(ConfigError) as info:
        compose_config(["model=tiny_llama", "task=causal_lm", "quant=eetq", "adapter=lora"], resolve=False)
    assert "PEFT cannot put adapters on transformers' EETQ layers" in str(info.value)
    assert "\n" not in str(info.value)
