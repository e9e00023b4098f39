"""Model-group knobs: RoPE scaling reaches the attention's rotary embedding (and the saved config),
`attn_implementation=auto` picks what can run, and added special tokens grow the vocabulary."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from ftexp.builders.backbone import (
    check_rope_scaling_fits,
    load_backbone,
    resolve_attn_implementation,
)
from ftexp.runs.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def random_init(model: str, **changes) -> dict:
    cfg = compose_config([f"model={model}"], resolve=False)
    return {**OmegaConf.to_container(cfg.model.random_init), "vocab_size": 512, **changes}


def rotary_outputs(model, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (cos, sin) the attention layers receive for positions 0..length-1, caught by a hook on
    the rotary embedding module."""
    seen = {}
    handle = model.model.rotary_emb.register_forward_hook(lambda m, args, out: seen.setdefault("out", out))
    with torch.no_grad():
        model(input_ids=torch.arange(length)[None] % 512)
    handle.remove()
    cos, sin = seen["out"]
    return cos[0], sin[0]


# -- model.rope_scaling -----------------------------------------------------------------------------

def test_linear_rope_scaling_halves_the_positions_the_attention_sees():
    init = random_init("tiny_llama", rope_theta=50000.0)
    plain = load_backbone("random-init", random_init=init, causal_lm=True)
    scaled = load_backbone("random-init", random_init=init, causal_lm=True,
                           rope_scaling={"rope_type": "linear", "factor": 2.0})
    cos, sin = rotary_outputs(plain, 41)
    cos2, sin2 = rotary_outputs(scaled, 41)
    # Position 2p under factor 2 is position p unscaled, for every p; and not without scaling.
    torch.testing.assert_close(cos2[0::2], cos[:21])
    torch.testing.assert_close(sin2[0::2], sin[:21])
    assert not torch.allclose(cos[0::2], cos[:21])
    # The model config carries it (what save_pretrained, export and generate see), with the
    # model's own rope_theta kept.
    assert scaled.config.rope_parameters == {"rope_type": "linear", "factor": 2.0, "rope_theta": 50000.0}
    assert scaled.config.to_dict()["rope_parameters"]["rope_type"] == "linear"


def test_yarn_and_dynamic_scaling_reach_the_config():
    init = random_init("tiny_llama")
    yarn = load_backbone("random-init", random_init=init, causal_lm=True,
                         rope_scaling={"type": "yarn", "factor": 4.0})
    params = yarn.config.rope_parameters
    assert params["rope_type"] == "yarn" and params["factor"] == 4.0
    assert params["original_max_position_embeddings"] == init["max_position_embeddings"]  # filled in
    assert yarn.model.rotary_emb.attention_scaling > 1.0  # yarn's attention temperature
    dynamic = load_backbone("random-init", random_init=init, causal_lm=True,
                            rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    assert dynamic.model.rotary_emb.rope_type == "dynamic"


def test_rope_scaling_is_kept_by_a_checkpoint_rebuild():
    # Tasks keep the model group in their checkpoint; load_configured_backbone rebuilds from it.
    from ftexp.builders.backbone import load_configured_backbone

    model = {**OmegaConf.to_container(compose_config(["model=tiny_llama"], resolve=False).model),
             "rope_scaling": {"rope_type": "linear", "factor": 3.0}}
    network = load_configured_backbone(model, causal_lm=True)
    assert network.config.rope_parameters["factor"] == 3.0


@pytest.mark.parametrize(("override", "message"), [
    ("{rope_type:ntk,factor:2.0}", "model.rope_scaling.rope_type=ntk is not a RoPE scaling"),
    ("{rope_type:linear,factor:1.0}", "model.rope_scaling.factor=1.0 must be a number above 1"),
    ("{rope_type:linear}", "model.rope_scaling.factor=None must be a number above 1"),
    ("{rope_type:yarn,factor:2.0,beta_fats:32}",
     "model.rope_scaling.beta_fats is not a setting of rope_type=yarn. Did you mean "
     "'model.rope_scaling.beta_fast'"),
])
def test_bad_rope_scaling_is_refused_in_one_line(override, message):
    with pytest.raises(ConfigError) as info:
        compose_config(["model=tiny_llama", f"+model.rope_scaling={override}"], resolve=False)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("model_type", ["gpt2", "bert", "bloom"])
def test_rope_scaling_is_refused_for_models_without_rope(model_type):
    with pytest.raises(ConfigError, match=f"'{model_type}' models have no rotary position embeddings"):
        check_rope_scaling_fits(model_type)
    check_rope_scaling_fits("llama")  # RoPE models pass


# -- model.attn_implementation=auto -----------------------------------------------------------------

def test_auto_attention_is_transformers_choice_on_cpu():
    assert compose_config([], resolve=False).model.attn_implementation == "auto"  # the default
    llama = load_backbone("random-init", random_init=random_init("tiny_llama"), attn_implementation="auto")
    bloom = load_backbone("random-init", random_init=random_init("tiny_bloom"), attn_implementation="auto")
    assert llama.config._attn_implementation == "sdpa"
    assert bloom.config._attn_implementation == "eager"  # BLOOM has no SDPA path


def test_auto_attention_picks_flash_only_where_it_can_run(monkeypatch):
    from transformers import BloomModel, LlamaModel

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "flash_attn" else real_find_spec(name, *a))
    assert resolve_attn_implementation("auto", "bfloat16", LlamaModel) == "flash_attention_2"
    assert resolve_attn_implementation("auto", "float32", LlamaModel) is None  # flash needs half precision
    assert resolve_attn_implementation("auto", "bfloat16", BloomModel) is None  # not supported there
    assert resolve_attn_implementation("auto", "bfloat16", None) is None  # custom code: unknown
    assert resolve_attn_implementation("eager", "bfloat16", LlamaModel) == "eager"  # asked for: kept
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "flash_attn" else real_find_spec(name, *a))
    assert resolve_attn_implementation("auto", "bfloat16", LlamaModel) is None  # not installed


# -- model.add_special_tokens -----------------------------------------------------------------------

NEW_TOKENS = ["<|call|>", "<|end_call|>"]
COLOURS = {"apple": "red", "sky": "blue", "grass": "green", "snow": "white", "coal": "black",
           "banana": "yellow", "plum": "purple", "rose": "pink"}


def tool_calls(path):
    """Instruction data whose answers are wrapped in the new tokens."""
    import pandas as pd

    rows = [{"instruction": f"What colour is the {thing}?", "input": "",
             "output": f"{NEW_TOKENS[0]} colour {thing} {NEW_TOKENS[1]} {colour}", "split": split}
            for split in ("train", "validation", "test") for thing, colour in COLOURS.items()]
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    return path


def token_overrides(data, *extra: str) -> list[str]:
    return ["task=causal_lm", "data=code_alpaca", f"data.path={data}", "model=tiny_llama",
            f"model.add_special_tokens=[{','.join(repr(t) for t in NEW_TOKENS)}]", "adapter=lora",
            "data.max_length=64", "data.batch_size=4", "trainer.precision=32",
            "trainer.enable_progress_bar=false", "task.sample_generations=0", *extra]


def effective_rows(network) -> tuple[torch.Tensor, torch.Tensor]:
    """The input-embedding and LM-head matrices the (PEFT-wrapped) network computes with."""
    with torch.no_grad():
        embed = network.get_input_embeddings()(torch.arange(30524)[None])[0]
        head = network.get_output_embeddings()(torch.eye(64)).T
    return embed.clone(), head.clone()


def test_added_tokens_train_their_rows_under_lora_and_nothing_else(tmp_path):
    from conftest import build_task
    from ftexp.builders.optim import build_optimizer

    task, datamodule, cfg = build_task(token_overrides(tool_calls(tmp_path / "calls.jsonl")), tmp_path)
    tokenizer = datamodule.tokenizer
    new_ids = tokenizer.convert_tokens_to_ids(NEW_TOKENS)
    assert new_ids == [30522, 30523]  # appended to the 30,522-token vocabulary
    assert tokenizer(NEW_TOKENS[0], add_special_tokens=False)["input_ids"] == [new_ids[0]]  # never split
    network = task.network
    assert network.get_base_model().config.vocab_size == 30524  # embeddings and LM head grown
    before_embed, before_head = effective_rows(network)
    optimizer = build_optimizer(network, {"_target_": "torch.optim.AdamW", "weight_decay": 0.0}, 1e-2)
    batch = next(iter(datamodule.train_dataloader()))
    assert (batch["input_ids"] == new_ids[0]).any()  # the data really uses the new tokens
    for _ in range(2):
        optimizer.zero_grad()
        logits = network(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                          ignore_index=-100).backward()
        optimizer.step()
    embed, head = effective_rows(network)
    old = slice(0, 30522)
    # The new tokens' rows trained, in the input embeddings and in the (untied) LM head ...
    assert not torch.allclose(embed[new_ids], before_embed[new_ids])
    assert not torch.allclose(head[new_ids], before_head[new_ids])
    # ... and no old row moved: LoRA leaves the rest of both matrices alone.
    torch.testing.assert_close(embed[old], before_embed[old], rtol=0, atol=0)
    torch.testing.assert_close(head[old], before_head[old], rtol=0, atol=0)
    # Only those rows are saved with the adapter (PEFT's trainable tokens), not whole matrices.
    saved = {n: p.numel() for n, p in network.named_parameters() if p.requires_grad and "lora" not in n}
    assert sum(saved.values()) == 2 * len(new_ids) * 64, saved


@pytest.mark.parametrize(("overrides", "message"), [
    (["adapter=frozen"], "adapter=frozen cannot do"),
    (["adapter=prompt_tuning"], "adapter=prompt_tuning cannot do"),
    (["model.add_special_tokens=['<a>','<a>']"], "must be distinct, non-empty strings"),
])
def test_added_tokens_that_would_not_train_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose_config(["model=tiny_llama", "model.add_special_tokens=['<|call|>']", *overrides],
                       resolve=False)


def test_a_run_with_added_tokens_exports_and_generates_with_them(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftexp.export import export_run
    from ftexp.predict import load_trained
    from ftexp.train import train

    run = tmp_path / "run"
    train(compose_config(token_overrides(tool_calls(tmp_path / "calls.jsonl"), "trainer.max_steps=4",
                                         "optimizer.learning_rate=1e-2"), output_dir=run))
    task, tokenizer, _ = load_trained(run)  # what ftexp.generate and ftexp.predict use
    assert tokenizer.convert_tokens_to_ids(NEW_TOKENS) == [30522, 30523]
    out = export_run(run, tmp_path / "model", dtype="float32")
    exported_tokenizer = AutoTokenizer.from_pretrained(out)
    assert exported_tokenizer.convert_tokens_to_ids(NEW_TOKENS) == [30522, 30523]
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.config.vocab_size == 30524
    text = f"the plum is {NEW_TOKENS[0]} colour {NEW_TOKENS[1]} purple"
    ids = torch.tensor([exported_tokenizer(text)["input_ids"]])
    assert NEW_TOKENS[0] in exported_tokenizer.convert_ids_to_tokens(ids[0])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, task.network(input_ids=ids).logits,
                                   atol=1e-5, rtol=0)
