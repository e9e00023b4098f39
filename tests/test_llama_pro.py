"""adapter=llama_pro (LLaMA Pro block expansion): the expanded decoder computes exactly what the
original does before training (logits and cached generation), only the inserted blocks train, and
a run exports a plain transformers model with the extra layers."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import colour_facts, compose_config
from ftexp.builders.adapter import apply_adapter, validate_adapter
from ftexp.builders.backbone import load_backbone
from ftexp.runs.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB = 1024


def tiny_decoder(model: str, layers: int = 2) -> torch.nn.Module:
    cfg = compose_config([f"model={model}"], resolve=False)
    random_init = {**OmegaConf.to_container(cfg.model.random_init), "vocab_size": VOCAB,
                   "num_hidden_layers": layers}
    torch.manual_seed(0)
    return load_backbone("random-init", random_init=random_init, causal_lm=True).eval()


def llama_pro(num_expand_layers: int, *patterns: str) -> dict:
    return {"method": "llama_pro", "num_expand_layers": num_expand_layers,
            "trainable_patterns": list(patterns)}


@pytest.mark.parametrize(("model", "layers", "expand", "new_blocks"), [
    ("tiny_llama", 2, 2, [1, 3]),
    ("tiny_llama", 4, 2, [2, 5]),
    ("tiny_qwen2", 2, 1, [2]),  # Qwen2's config lists a type per layer: the copy gets its original's
])
def test_expanded_model_computes_what_the_original_does(model, layers, expand, new_blocks):
    original = tiny_decoder(model, layers)
    expanded = apply_adapter(copy.deepcopy(original), llama_pro(expand))
    blocks = expanded.model.layers
    assert expanded.config.num_hidden_layers == len(blocks) == layers + expand
    assert [blk.self_attn.layer_idx for blk in blocks] == list(range(layers + expand))  # KV-cache slots
    if getattr(expanded.config, "layer_types", None) is not None:
        assert len(expanded.config.layer_types) == layers + expand
    trainable_blocks = sorted({int(n.split(".")[2]) for n, p in expanded.named_parameters()
                               if p.requires_grad})
    assert trainable_blocks == new_blocks
    for index in new_blocks:  # each copy follows its original, branch outputs zeroed
        copied, source = blocks[index], blocks[index - 1]
        assert torch.equal(copied.self_attn.q_proj.weight, source.self_attn.q_proj.weight)
        assert not copied.self_attn.o_proj.weight.any() and not copied.mlp.down_proj.weight.any()
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(expanded(input_ids=ids).logits, original(input_ids=ids).logits,
                                   rtol=0, atol=0)
        prompt = {"input_ids": ids[:, :4], "attention_mask": torch.ones(2, 4, dtype=torch.long)}
        settings = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
        assert torch.equal(expanded.generate(**prompt, **settings), original.generate(**prompt, **settings))


def test_only_the_inserted_blocks_move(margin):
    model = apply_adapter(tiny_decoder("tiny_llama"), llama_pro(1)).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-3)
    ids = torch.randint(0, VOCAB, (4, 24), generator=torch.Generator().manual_seed(0))
    first = model(input_ids=ids, labels=ids).loss.item()
    for _ in range(8):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    last = model(input_ids=ids, labels=ids).loss.item()
    margin.above("loss fall over the steps", first - last, 0.05, (first, last))
    for name, param in model.named_parameters():
        moved = not torch.equal(param, before[name])
        assert moved == name.startswith("model.layers.2."), name  # the one copy, after layer 1


def test_trainable_patterns_add_to_the_new_blocks():
    model = apply_adapter(tiny_decoder("tiny_llama"), llama_pro(2, r"^model\.norm\.weight$"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "model.norm.weight" in trainable
    frozen = ("model.layers.0.", "model.layers.2.", "model.embed_tokens")
    assert not any(n.startswith(frozen) for n in trainable)


def test_a_run_exports_the_expanded_model(tmp_path: Path):
    from transformers import AutoModelForCausalLM

    from ftexp.export import export_run
    from ftexp.predict import load_trained
    from ftexp.train import train

    data = colour_facts(tmp_path / "facts.jsonl")
    cfg = compose_config(["task=causal_lm", "data=code_alpaca", f"data.path={data}", "model=tiny_llama",
                          "data.split_column=null", "adapter=llama_pro", "adapter.num_expand_layers=1",
                          "trainer=smoke",
                          "trainer.precision=32", "trainer.enable_progress_bar=false"],
                         output_dir=tmp_path / "run")
    metrics = train(cfg)
    assert metrics["trainable_params"] < metrics["total_params"] / 50  # one 64-wide block of three
    out = export_run(tmp_path / "run", tmp_path / "model", dtype="float32")
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.config.num_hidden_layers == 3
    assert reloaded.model.layers[2].self_attn.o_proj.weight.any()  # trained away from zero
    task, tokenizer, _ = load_trained(tmp_path / "run")
    ids = torch.tensor([tokenizer("what colour is the plum?")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, task.network(input_ids=ids).logits,
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize(("adapter", "model_type", "message"), [
    (llama_pro(1), "bert", "adapter=llama_pro inserts identity copies of pre-norm decoder blocks"),
    (llama_pro(1), "gpt2", "works on llama, mistral"),
])
def test_architectures_without_identity_blocks_are_refused_before_loading(adapter, model_type, message):
    with pytest.raises(ConfigError, match=message):
        validate_adapter(adapter, model_type)


@pytest.mark.parametrize(("overrides", "message"), [
    (["adapter.num_expand_layers=0"], "adapter.num_expand_layers=0 must be a positive whole number"),
    (["quant=4bit"], "adapter=llama_pro"),
])
def test_bad_settings_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        compose_config(["model=tiny_llama", "task=causal_lm", "adapter=llama_pro", *overrides], resolve=False)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_count_that_does_not_divide_the_layers_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match=r"must divide the model's 2 layers .*one of 1, 2\."):
        apply_adapter(tiny_decoder("tiny_llama"), llama_pro(3))
