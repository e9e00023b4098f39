"""model.shift_short_attention (LongLoRA's S²-Attn through transformers' attention interface): with
one group it is ordinary causal attention, with groups it is the shifted pattern computed here by
hand, evaluation and generation use full attention, and a run trains and exports a plain model."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from conftest import colour_facts, compose_config
from ftexp.builders.backbone import load_backbone
from ftexp.builders.s2_attention import enable_s2_attention, s2_attention
from ftexp.runs.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def reference(q, k, v, valid, size, scale):
    """S²-Attn by its definition, one (head, query) at a time: positions are cut into groups of
    `size`; heads in the second half see the sequence rolled left by size // 2 first. A query
    attends to the keys of its own group up to itself that are not padding (and always itself)."""
    batch, heads, length, dim = q.shape
    out = torch.zeros_like(q)
    for b in range(batch):
        for h in range(heads):
            shift = size // 2 if h >= heads // 2 else 0
            position = [(i + shift) % length for i in range(length)]  # rolled index → original
            for i in range(length):
                keys = [j for j in range(length) if j // size == i // size and j <= i
                        and (valid[b, position[j]] or j == i)]
                logits = torch.stack([q[b, h, position[i]] @ k[b, h, position[j]] * scale for j in keys])
                weights = logits.softmax(0)
                values = [v[b, h, position[j]] for j in keys]
                out[b, h, position[i]] = sum(w * x for w, x in zip(weights, values, strict=True))
    return out.transpose(1, 2)


def module(ratio: float) -> SimpleNamespace:
    return SimpleNamespace(training=True, s2_group_size_ratio=ratio, num_key_value_groups=1, is_causal=True)


def random_qkv(length: int = 16, heads: int = 4, dim: int = 8):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, heads, length, dim, generator=g, dtype=torch.float64) for _ in range(3)]


def padding_mask(valid: torch.Tensor) -> torch.Tensor:
    """transformers' sdpa mask for right-padded rows: causal and not padding, (b, 1, q, k)."""
    length = valid.shape[1]
    return torch.ones(length, length, dtype=torch.bool).tril()[None, None] & valid[:, None, None, :]


def test_one_group_is_ordinary_causal_attention():
    q, k, v = random_qkv()
    out, _ = s2_attention(module(1.0), q, k, v, None, scaling=0.3)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)
    torch.testing.assert_close(out, expected.transpose(1, 2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_groups_give_the_shifted_pattern_worked_by_hand(ratio):
    q, k, v = random_qkv()
    valid = torch.ones(2, 16, dtype=torch.bool)
    valid[1, 13:] = False  # the second row right-padded
    out, _ = s2_attention(module(ratio), q, k, v, padding_mask(valid), scaling=1 / math.sqrt(8))
    expected = reference(q, k, v, valid, size=int(16 * ratio), scale=1 / math.sqrt(8))
    real = valid[:, :, None, None].transpose(1, 2).expand_as(out.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(out[real], expected[real], rtol=1e-10, atol=1e-10)
    # Not ordinary attention: the groups cut it.
    full = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
    assert not torch.allclose(out, full)


def test_a_length_that_does_not_divide_completes_its_last_group_with_masked_keys():
    q, k, v = random_qkv(length=18)
    out, _ = s2_attention(module(0.25), q, k, v, None, scaling=0.3)
    padded = [torch.nn.functional.pad(x, (0, 0, 0, 2)) for x in (q, k, v)]
    valid = torch.ones(2, 20, dtype=torch.bool)
    valid[:, 18:] = False
    expected = reference(*padded, valid, size=5, scale=0.3)[:, :18]
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def tiny_llama() -> torch.nn.Module:
    cfg = compose_config(["model=tiny_llama"], resolve=False)
    random_init = {**OmegaConf.to_container(cfg.model.random_init), "vocab_size": 1024}
    return load_backbone("random-init", random_init=random_init, causal_lm=True)


def test_training_uses_the_groups_and_evaluation_and_generation_full_attention():
    original = tiny_llama().eval()
    model = copy.deepcopy(original)
    enable_s2_attention(model, 0.25)
    ids = torch.randint(0, 1024, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = original(input_ids=ids).logits
        torch.testing.assert_close(model.eval()(input_ids=ids).logits, full, rtol=0, atol=1e-6)
        assert not torch.allclose(model.train()(input_ids=ids).logits, full, atol=1e-3)  # groups in training
        one_group = copy.deepcopy(original)
        enable_s2_attention(one_group, 1.0)
        torch.testing.assert_close(one_group.train()(input_ids=ids).logits, full, rtol=0, atol=1e-5)
        model.eval()
        settings = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0,
                    "attention_mask": torch.ones(2, 4, dtype=torch.long)}
        assert torch.equal(model.generate(ids[:, :4], **settings), original.generate(ids[:, :4], **settings))


def test_a_run_with_s2_attention_trains_and_exports_an_ordinary_model(tmp_path: Path):
    from transformers import AutoModelForCausalLM

    from ftexp.export import export_run
    from ftexp.train import train

    data = colour_facts(tmp_path / "facts.jsonl")
    cfg = compose_config(["task=causal_lm", "data=code_alpaca", f"data.path={data}", "data.split_column=null",
                          "model=tiny_llama", "adapter=lora", "model.shift_short_attention=true",
                          "trainer=smoke", "trainer.precision=32", "trainer.enable_progress_bar=false"],
                         output_dir=tmp_path / "run")
    metrics = train(cfg)
    assert metrics["global_steps"] > 0 and math.isfinite(metrics["val/loss"])
    out = export_run(tmp_path / "run", tmp_path / "model", dtype="float32")
    reloaded = AutoModelForCausalLM.from_pretrained(out)  # no ftexp attention needed to load it
    assert reloaded.config._attn_implementation in ("sdpa", "eager")


@pytest.mark.parametrize(("overrides", "message"), [
    (["model=tiny_bert", "model.shift_short_attention=true"], None),
    (["model.shift_short_attention=true", "model.s2_group_size_ratio=0"],
     "model.s2_group_size_ratio=0.0 must be"),
    (["model.shift_short_attention=true", "model.attn_implementation=eager"],
     "model.attn_implementation=eager cannot apply"),
    (["model.shift_short_attention=true", "+experiment=tiny_sft"], "S²-Attn's groups would cut across"),
])
def test_misuse_is_refused_in_one_line(overrides, message):
    if message is None:  # an encoder: refused where the model type is known
        from ftexp.builders.s2_attention import check_s2_fits

        with pytest.raises(ConfigError, match="wired for the Llama family .*not model type 'bert'"):
            check_s2_fits("bert")
        return
    with pytest.raises(ConfigError) as info:
        compose_config(["model=tiny_llama", "task=causal_lm", "data=code_alpaca", *overrides], resolve=False)
    assert message in str(info.value) and "\n" not in str(info.value)
