"""Causal-LM fine-tuning: templates, completion-only labels, truncation, packing that keeps
samples apart, learning and generating, and export to a plain transformers model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import compose_config
from ftexp.builders.backbone import load_backbone
from ftexp.config.data import DataConfig
from ftexp.data.causal_lm import CausalLMDataModule, LanguageModelingEncoder, PromptFormatter
from ftexp.data.packing import PACKING_MODEL_TYPES, check_packing_supported, pack, pad_batch
from ftexp.data.targets import IGNORE
from ftexp.data.templates import chat_ids_and_mask, render
from ftexp.runs.errors import ConfigError, DataError
from ftexp.runs.paths import config_dir
from ftexp.tasks.causal_lm import token_losses
from ftexp.train import task_settings

ALPACA = yaml.safe_load((config_dir() / "data" / "code_alpaca.yaml").read_text())["prompt_template"]
THINGS = {"apple": "red", "sky": "blue", "grass": "green", "snow": "white", "coal": "black",
          "banana": "yellow", "orange": "orange", "plum": "purple", "cloud": "grey", "rose": "pink"}


def facts_frame() -> pd.DataFrame:
    """A learnable instruction task: say the colour of a thing (every row in train, validation
    and test, so generation can be checked on seen prompts)."""
    rows = [{"instruction": f"What colour is the {thing}?", "input": "",
             "output": f"The {thing} is {colour}.", "split": split}
            for split in ("train", "validation", "test") for thing, colour in THINGS.items()]
    return pd.DataFrame(rows)


def lm_overrides(data: Path, *extra: str) -> list[str]:
    return ["task=causal_lm", "data=code_alpaca", f"data.path={data}", "model=tiny_llama",
            "data.max_length=96", "data.batch_size=5", "trainer.precision=32",
            "trainer.enable_progress_bar=false", *extra]


# -- templates and labels --------------------------------------------------------------------------

def test_empty_fields_follow_the_declared_policy():
    row = {"instruction": "Add 2 and 3.", "input": None}
    dropped = render(ALPACA, row, "drop_paragraph")
    assert "### Input:" not in dropped and "Add 2 and 3." in dropped and dropped.endswith("### Response:\n")
    kept = render(ALPACA, row, "keep")
    assert "### Input:\n\n\n### Response:" in kept
    with pytest.raises(DataError, match=r"row 7: column\(s\) \['input'\] are empty"):
        render(ALPACA, row, "error", row_number=7)


@pytest.mark.parametrize("train_on_prompt", [False, True])
def test_prompt_tokens_get_no_loss_unless_train_on_prompt(train_on_prompt: bool, minilm_tokenizer):
    config = DataConfig(path="x", prompt_template="Q: {instruction}\nA:", response_template=" {output}")
    encoder = LanguageModelingEncoder(minilm_tokenizer, PromptFormatter(config),
                                      train_on_prompt)
    row = encoder.encode_row({"instruction": "what is two plus two", "output": "four"}, 0)
    prompt = encoder.prompt_ids("Q: what is two plus two\nA:")
    response = minilm_tokenizer(" four", add_special_tokens=False)["input_ids"]
    assert row["input_ids"] == prompt + response + [minilm_tokenizer.eos_token_id]  # EOS ends it
    expected_prompt_labels = prompt if train_on_prompt else [IGNORE] * len(prompt)
    assert row["labels"] == expected_prompt_labels + response + [minilm_tokenizer.eos_token_id]


def test_truncation_cuts_or_drops_and_counts(minilm_tokenizer):
    frame = pd.DataFrame({"instruction": ["short", "word " * 80], "output": ["ok", "ok"]})
    config = DataConfig(path="x", prompt_template="{instruction}", response_template="{output}")
    encoder = LanguageModelingEncoder(minilm_tokenizer, PromptFormatter(config), False)
    rows, cut, dropped = encoder.encode(frame, 40, "cut")
    # The long row's prompt fills all 40 tokens, leaving no response to learn: dropped, counted.
    assert (len(rows), cut, dropped) == (1, 0, 1)
    # 39 prompt tokens + "ok" + EOS = 41: cut to 40, the response's first token survives.
    rows, cut, dropped = encoder.encode(frame.assign(instruction=["short", "word " * 39]), 40, "cut")
    assert (len(rows), cut, dropped) == (2, 1, 0) and len(rows[1]["input_ids"]) == 40
    rows, cut, dropped = encoder.encode(frame, 40, "drop")
    assert (len(rows), cut, dropped) == (1, 0, 1)


def test_chat_template_trains_on_assistant_turns_only(minilm_tokenizer):
    template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} [SEP] {% endfor %}"
                "{% if add_generation_prompt %}assistant: {% endif %}")
    tokenizer = type(minilm_tokenizer).from_pretrained(minilm_tokenizer.name_or_path)
    tokenizer.chat_template = template
    messages = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello friend"},
                {"role": "user", "content": "bye"}, {"role": "assistant", "content": "see you"}]
    ids, trained = chat_ids_and_mask(tokenizer, messages)
    trained_text = tokenizer.decode([t for t, keep in zip(ids, trained, strict=True) if keep])
    assert trained_text == "hello friend [SEP] see you [SEP]"


# -- packing ---------------------------------------------------------------------------------------

def _tiny_causal_lm(model_type: str):
    """A tiny random-init LM with large weights: near-uniform outputs of the default init would
    hide what a sample attends to. Mistral is the tiny Llama's shape under Mistral's code."""
    config_name = "llama" if model_type == "mistral" else model_type
    random_init = yaml.safe_load((config_dir() / f"model/tiny_{config_name}.yaml").read_text())["random_init"]
    random_init["model_type"] = model_type
    return load_backbone("tiny", random_init={**random_init, "initializer_range": 0.3},
                         causal_lm=True).eval()


def _samples(lengths: list[int]) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for n in lengths:
        ids = torch.randint(1000, 3000, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE] * 2 + ids[2:]})  # a 2-token "prompt"
    return out


def _per_sample_losses(model, batch: dict[str, torch.Tensor], lengths: list[int]) -> list[float]:
    with torch.no_grad():
        extra = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
        losses, trained = token_losses(model(input_ids=batch["input_ids"], use_cache=False,
                                             **extra).logits, batch["labels"])
    out, start = [], 0
    for n in lengths:  # token t's loss sits at t - 1 after the shift
        span = slice(start, start + n - 1)
        out.append(float(losses[0, span].sum() / trained[0, span].sum()))
        start += n
    return out


@pytest.mark.parametrize("model_type", PACKING_MODEL_TYPES)
def test_a_packed_row_gives_each_sample_its_own_loss(model_type: str):
    model, lengths = _tiny_causal_lm(model_type), [9, 6, 12]
    samples = _samples(lengths)
    alone = [_per_sample_losses(model, pad_batch([s], 0), [len(s["input_ids"])])[0] for s in samples]
    packed = pad_batch(pack(samples, 64), 0)
    assert packed["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in packed
    assert _per_sample_losses(model, packed, lengths) == pytest.approx(alone, rel=1e-5)
    # The same row under one causal mask (no position restarts) lets later samples see earlier
    # ones: their losses change. This is what the check above would miss if packing leaked.
    leaky = {"input_ids": packed["input_ids"], "labels": packed["labels"],
             "attention_mask": torch.ones_like(packed["input_ids"])}
    contaminated = _per_sample_losses(model, leaky, lengths)
    assert contaminated[0] == pytest.approx(alone[0], rel=1e-5)
    assert all(abs(c - a) > 1e-2 for c, a in zip(contaminated[1:], alone[1:], strict=True))


def test_packing_is_refused_where_attention_ignores_position_ids():
    with pytest.raises(ConfigError, match="not supported for 'bloom' models"):
        check_packing_supported("bloom")


def test_validation_loss_is_the_same_packed_or_not(tmp_path: Path, minilm_tokenizer):
    import lightning as L
    from omegaconf import OmegaConf

    from ftexp.tasks.causal_lm import CausalLMTask

    data = tmp_path / "facts.jsonl"
    facts_frame().to_json(data, orient="records", lines=True)
    losses = {}
    for packing in (False, True):
        cfg = compose_config(lm_overrides(data, f"data.packing={packing}", "data.max_length=256"),
                             output_dir=tmp_path)
        module = CausalLMDataModule(OmegaConf.to_object(cfg.data), minilm_tokenizer)
        module.setup()
        plain = task_settings(cfg)
        task = CausalLMTask(**plain)
        result = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                           enable_checkpointing=False).validate(task, module, verbose=False)
        losses[packing] = result[0]["val/loss"]
        rows = len(module.datasets["validation"])
        assert rows < len(THINGS) if packing else rows == len(THINGS), rows
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


# -- training, generation and export ---------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    from ftexp.train import train

    root = tmp_path_factory.mktemp("sft")
    data = root / "facts.jsonl"
    facts_frame().to_json(data, orient="records", lines=True)
    out = root / "run"
    cfg = compose_config(lm_overrides(data, "adapter=none", "optimizer.learning_rate=3e-3",
                                      "trainer.max_epochs=40", "data.batch_size=2",
                                      # A 2-layer model finds the question faster without
                                      # Alpaca's long preamble in front of it.
                                      "data.prompt_template='Q: {instruction} A:'",
                                      "generation.max_new_tokens=12",
                                      "trainer.log_every_n_steps=1"), output_dir=out)
    train(cfg)
    return out


def test_tiny_llama_learns_instructions_and_generates_the_answer(trained_run: Path, margin):
    from ftexp.generate import RunGenerator

    metrics = json.loads((trained_run / "metrics.json").read_text())
    history = pd.read_csv(trained_run / "csv" / "metrics.csv")["val/loss"].dropna().tolist()
    margin.below("val/loss last / first", history[-1] / history[0], 0.2, history)
    assert metrics["val/perplexity"] == pytest.approx(torch.exp(torch.tensor(metrics["val/loss"])).item(),
                                                      rel=1e-4)
    samples = [json.loads(line) for line in (trained_run / "generations.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * 40 and samples[0]["prompt"] == "Q: What colour is the apple? A:"
    assert [s["generation"] for s in samples[-3:]] == [
        "the apple is red.", "the sky is blue.", "the grass is green."]

    generator = RunGenerator(trained_run)
    answers = generator.generate([{"instruction": "What colour is the sky?"},
                                  {"instruction": "What colour is the coal?"}])
    assert answers == ["the sky is blue.", "the coal is black."]


@pytest.mark.learning  # its exact answers are learned: scripts/test_margins.py reruns it
def test_generate_cli_answers_a_prompt_and_a_file(trained_run: Path, tmp_path: Path):
    run = subprocess.run([sys.executable, "-m", "ftexp.generate", str(trained_run),
                          "--prompt", "What colour is the grass?"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "the grass is green."
    prompts = tmp_path / "prompts.csv"
    pd.DataFrame({"instruction": ["What colour is the snow?", "What colour is the rose?"]}).to_csv(
        prompts, index=False)
    out = tmp_path / "out.jsonl"
    run = subprocess.run([sys.executable, "-m", "ftexp.generate", str(trained_run), "--file",
                          str(prompts), "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert pd.read_json(out, lines=True)["generation"].tolist() == ["the snow is white.", "the rose is pink."]


def _logits_match(trained_run: Path, export_dir: Path, atol: float) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftexp.predict import load_trained

    task, tokenizer, _ = load_trained(trained_run)
    reloaded = AutoModelForCausalLM.from_pretrained(export_dir).eval()
    assert AutoTokenizer.from_pretrained(export_dir).eos_token == tokenizer.sep_token
    ids = torch.tensor([tokenizer("what colour is the plum? the plum is purple.")["input_ids"]])
    with torch.no_grad():
        ours = task.network(input_ids=ids).logits
        theirs = reloaded(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours, atol=atol, rtol=0)


def test_export_reloads_in_plain_transformers_with_the_same_logits(trained_run: Path, tmp_path: Path):
    from ftexp.export import export_run

    out = export_run(trained_run, tmp_path / "model", dtype="float32")
    assert {"model.safetensors", "config.json", "generation_config.json", "README.md",
            "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert "test/loss" in (out / "README.md").read_text()
    _logits_match(trained_run, out, atol=1e-5)
    with pytest.raises(Exception, match="is not empty"):
        export_run(trained_run, out)


def test_a_4bit_lora_run_exports_dequantized_and_merged(tmp_path: Path):
    pytest.importorskip("bitsandbytes")
    from ftexp.export import export_run
    from ftexp.train import train

    data = tmp_path / "facts.jsonl"
    facts_frame().to_json(data, orient="records", lines=True)
    run = tmp_path / "run"
    train(compose_config(lm_overrides(data, "adapter=lora", "quant=4bit", "quant.compute_dtype=float32",
                                      "optimizer.learning_rate=1e-2", "trainer.max_epochs=2",
                                      "task.sample_generations=0"), output_dir=run))
    out = export_run(run, tmp_path / "model", dtype="float32")
    # The merged fp32 model computes what 4-bit base + LoRA computed, up to float rounding.
    _logits_match(run, out, atol=1e-3)


def test_a_column_the_template_needs_is_named_when_missing(tmp_path: Path, minilm_tokenizer):
    from omegaconf import OmegaConf

    data = tmp_path / "no_output.jsonl"
    facts_frame().drop(columns=["output"]).to_json(data, orient="records", lines=True)
    cfg = compose_config(lm_overrides(data), output_dir=tmp_path)
    module = CausalLMDataModule(OmegaConf.to_object(cfg.data), minilm_tokenizer)
    with pytest.raises(DataError, match=r"column\(s\) \['output'\] not found .* Fix data.prompt_template"):
        module.setup()
