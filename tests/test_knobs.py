"""Training knobs: token-normalised gradient accumulation, batch_size auto, learning_rate auto /
find, early stopping, gradient checkpointing and NEFTune."""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch

from conftest import compose_config, sentiment_rows, tiny_overrides
from ftexp.data.causal_lm import CausalLMDataModule
from ftexp.predict import predict_file
from ftexp.runs import run_dir
from ftexp.tasks.causal_lm import CausalLMTask
from ftexp.train import task_settings, train


def _ragged_instructions(path: Path, n: int = 32) -> Path:
    """Responses of very different lengths, so micro-batches hold very different token counts."""
    rng = random.Random(0)
    rows = [{"instruction": f"Repeat the word {w}.", "input": "",
             "output": " ".join([w] * rng.choice([1, 2, 15, 30])), "split": "train"}
            for w in (rng.choice(["red", "blue", "green", "sky", "tree"]) for _ in range(n))]
    rows += [{**rows[0], "split": "validation"}, {**rows[1], "split": "test"}]
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    return path


class _FirstGradients(L.Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not hasattr(self, "grads"):
            self.grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters()
                          if p.grad is not None}


def _first_step_gradients(data: Path, tokenizer, batch_size: int, accumulate: int,
                          windowed: bool = True, *extra: str) -> dict[str, torch.Tensor]:
    cfg = compose_config(["task=causal_lm", "data=code_alpaca", f"data.path={data}", "model=tiny_llama",
                          "adapter=none", "data.max_length=96", f"data.batch_size={batch_size}",
                          "trainer.precision=32", *extra], resolve=False)
    from omegaconf import OmegaConf

    datamodule = CausalLMDataModule(OmegaConf.to_object(cfg.data), tokenizer)
    datamodule.setup()
    L.seed_everything(0, verbose=False)  # same adapter init in every call
    task = CausalLMTask(**task_settings(cfg))
    if not windowed:  # the negative control: a loader whose batches carry no window count
        datamodule.loss_items = None
    grabber = _FirstGradients()
    L.Trainer(max_steps=1, accumulate_grad_batches=accumulate, logger=False, callbacks=[grabber],
              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              limit_val_batches=0, num_sanity_val_steps=0).fit(task, datamodule)
    return grabber.grads


def _max_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(((a[k] - b[k]).norm() / b[k].norm().clamp(min=1e-12)).item() for k in a)


def test_accumulating_4_batches_of_8_matches_one_batch_of_32(tmp_path: Path, minilm_tokenizer):
    data = _ragged_instructions(tmp_path / "ragged.jsonl")
    big = _first_step_gradients(data, minilm_tokenizer, batch_size=32, accumulate=1)
    accumulated = _first_step_gradients(data, minilm_tokenizer, batch_size=8, accumulate=4)
    assert _max_relative_difference(accumulated, big) < 1e-5
    # Averaging per micro-batch instead (what a plain loss mean does) is measurably different:
    # the test would catch a loader that stops carrying the window's token count.
    naive = _first_step_gradients(data, minilm_tokenizer, batch_size=8, accumulate=4, windowed=False)
    assert _max_relative_difference(naive, big) > 1e-2


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path: Path, minilm_tokenizer):
    data = _ragged_instructions(tmp_path / "ragged.jsonl", n=8)
    lora = ("adapter=lora", "adapter.lora_dropout=0")
    plain = _first_step_gradients(data, minilm_tokenizer, 8, 1, True, *lora)
    checkpointed = _first_step_gradients(data, minilm_tokenizer, 8, 1, True, *lora,
                                         "model.gradient_checkpointing=true")
    assert plain and _max_relative_difference(checkpointed, plain) < 1e-5


def test_gradient_checkpointing_is_switched_on(tmp_path: Path):
    cfg = compose_config(["task=causal_lm", "data=code_alpaca", "model=tiny_llama", "adapter=lora",
                          "model.gradient_checkpointing=true"], resolve=False)
    task = CausalLMTask(**task_settings(cfg))
    task.configure_model()
    backbone = task.network.base_model.model
    assert getattr(backbone, "is_activation_checkpointing", None) or backbone.is_gradient_checkpointing


def test_neftune_noises_embeddings_in_training_only():
    cfg = compose_config(["task=causal_lm", "data=code_alpaca", "model=tiny_llama", "adapter=lora",
                          "task.neftune_noise_alpha=5"], resolve=False)
    task = CausalLMTask(**task_settings(cfg))
    task.configure_model()
    embeddings = task.network.get_input_embeddings()
    ids = torch.tensor([[5, 6, 7, 8]])
    clean = torch.nn.functional.embedding(ids, embeddings.weight)
    task.network.train()
    noisy = embeddings(ids)
    # NEFTune: uniform noise of at most alpha / sqrt(seq_len * dim) per element.
    bound = 5 / (ids.size(1) * embeddings.weight.size(1)) ** 0.5
    assert 0 < (noisy - clean).abs().max() <= bound + 1e-6
    task.network.eval()
    assert torch.equal(embeddings(ids), clean)


def test_batch_size_auto_picks_a_power_of_two_and_trains(tmp_path: Path):
    data = tmp_path / "toy.csv"
    sentiment_rows(240).to_csv(data, index=False)
    capped = train(compose_config(tiny_overrides(data, "data.batch_size=auto", "data.max_batch_size=16",
                                                 "trainer.max_epochs=1"), output_dir=tmp_path / "a"))
    assert capped["batch_size"] == 16
    assert capped["global_steps"] == -(-capped["train_samples"] // 16)  # the run used it
    # No memory limit on this CPU: the training set's size caps it (largest power of two ≤ rows).
    by_data = train(compose_config(tiny_overrides(data, "data.batch_size=auto", "data.max_batch_size=4096",
                                                  "optimizer.learning_rate=find", "trainer.max_epochs=1"),
                                   output_dir=tmp_path / "b"))
    assert by_data["batch_size"] == 1 << (by_data["train_samples"].bit_length() - 1)


def test_learning_rate_auto_and_find(tmp_path: Path):
    data = tmp_path / "toy.csv"
    sentiment_rows(240).to_csv(data, index=False)
    auto = train(compose_config(tiny_overrides(data, "adapter=frozen", "optimizer.learning_rate=auto",
                                               "trainer.max_epochs=1"), output_dir=tmp_path / "auto"))
    assert auto["learning_rate"] == 1e-3  # the documented default for a frozen backbone
    found = train(compose_config(tiny_overrides(data, "optimizer.learning_rate=find", "trainer.max_epochs=2",
                                                "scheduler=constant"),
                                 output_dir=tmp_path / "find"))
    assert 1e-7 < found["learning_rate"] < 1.0
    assert (tmp_path / "find" / run_dir.LR_FIND_PLOT).stat().st_size > 10_000  # a real image
    # Training then ran with it (a constant schedule: every step at the rate found).
    lrs = pd.read_csv(tmp_path / "find" / "csv" / "metrics.csv").filter(like="lr-").stack()
    assert lrs.iloc[0] == pytest.approx(found["learning_rate"])
    assert found["global_steps"] == 2 * -(-found["train_samples"] // 16)


def test_early_stopping_stops_when_the_monitor_stalls(tmp_path: Path):
    data = tmp_path / "toy.csv"
    sentiment_rows(240).to_csv(data, index=False)
    metrics = train(compose_config(tiny_overrides(data, "optimizer.learning_rate=1e-12",
                                                  "trainer.max_epochs=10",
                                                  "callbacks.early_stopping_patience=2"),
                                   output_dir=tmp_path / "run"))
    steps_per_epoch = -(-metrics["train_samples"] // 16)
    assert metrics["global_steps"] == 3 * steps_per_epoch  # best at epoch 1, then 2 without gain


@pytest.mark.slow
def test_compiled_network_trains_and_keeps_checkpoint_names(tmp_path: Path, margin):
    data = tmp_path / "toy.csv"
    sentiment_rows(240).to_csv(data, index=False)
    metrics = train(compose_config(tiny_overrides(data, "trainer.compile=true", "trainer.max_epochs=2"),
                                   output_dir=tmp_path / "run"))
    margin.metrics(metrics, ("val/acc", ">", 0.8))
    state = torch.load(tmp_path / "run" / run_dir.BEST_CHECKPOINT, weights_only=True)["state_dict"]
    assert not any("_orig_mod" in k for k in state)


def test_evaluate_training_set_scores_the_training_rows_in_eval_mode(tmp_path: Path):
    data = tmp_path / "toy.csv"
    rows = sentiment_rows(200)
    rows["split"] = ["train"] * 160 + ["validation"] * 20 + ["test"] * 20
    rows.to_csv(data, index=False)
    metrics = train(compose_config(tiny_overrides(data, "data.split_column=split", "trainer.max_epochs=1",
                                                  "trainer.evaluate_training_set=true"),
                                   output_dir=tmp_path / "run"))
    assert {"train_eval/acc", "train_eval/loss", "val/acc", "train/acc"} <= metrics.keys()
    # One epoch: the evaluation pass scores the final (= best) model, so predicting the training
    # rows with the saved model gives the same accuracy.
    train_rows = tmp_path / "train_rows.csv"
    rows[rows["split"] == "train"].to_csv(train_rows, index=False)
    predicted = predict_file(tmp_path / "run", train_rows, tmp_path / "predicted.csv")
    accuracy = (predicted["predicted_label"] == predicted["label"]).mean()
    assert metrics["train_eval/acc"] == pytest.approx(accuracy, abs=1e-6)
