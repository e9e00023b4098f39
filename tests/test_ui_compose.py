"""The web UI's compose page logic (ftexp.ui.compose), without a browser: options come from conf/
and keys from the schemas, the composed config is what `--cfg job` prints, and a mistake gets the
CLI's own one-line message, did-you-mean included, before anything launches."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from ftexp.config.model import ModelConfig
from ftexp.config.rl_tasks import GRPOTaskConfig
from ftexp.runs.errors import FtexpError
from ftexp.runs.paths import config_dir
from ftexp.ui import compose

LORA_RUN = {"model": "tiny_llama", "task": "causal_lm", "adapter": "lora", "data": "code_alpaca"}


def test_every_group_offers_the_files_under_conf():
    options = compose.group_options()
    for group, offered in options.items():
        assert offered == sorted(p.stem for p in (config_dir() / group).glob("*.yaml")), group
    assert {"model", "task", "adapter", "quant", "data"} <= options.keys()
    defaults = compose.default_choices()
    assert all(defaults[group] in options[group] for group in defaults)


def test_the_command_names_only_what_differs_from_the_defaults():
    argv = compose.overrides({**LORA_RUN, "optimizer": "adamw"},
                             "trainer.max_steps=5 'data.prompt_template=Q: {x}'")
    assert argv == ["model=tiny_llama", "task=causal_lm", "adapter=lora", "data=code_alpaca",
                    "trainer.max_steps=5", "data.prompt_template=Q: {x}"]
    assert compose.Composition(argv, None, None).command == (
        "python -m ftexp model=tiny_llama task=causal_lm adapter=lora data=code_alpaca "
        "trainer.max_steps=5 'data.prompt_template=Q: {x}'")
    with pytest.raises(FtexpError, match="cannot read the overrides"):
        compose.overrides({}, "data.path='unclosed")


def test_the_composed_config_is_what_cfg_job_prints():
    argv = compose.overrides(LORA_RUN, "trainer.max_steps=5")
    shown = compose.compose(argv)
    assert shown.error is None
    printed = subprocess.run([sys.executable, "-m", "ftexp", *argv, "--cfg", "job"], capture_output=True,
                             text=True, timeout=120, check=True).stdout
    assert shown.config.strip() == printed.strip()


@pytest.mark.parametrize(("extra", "message"), [
    ("trainer.max_step=5", "unknown config key 'trainer.max_step'. Did you mean 'trainer.max_steps'?"),
    ("task.loss_type=sigmoid", "task.loss_type is a setting of task=dpo / grpo, not task=causal_lm"),
    ("trainer.max_steps=many", "trainer.max_steps"),
])
def test_a_mistake_gets_the_cli_line_before_launch(extra, message):
    shown = compose.compose(compose.overrides(LORA_RUN, extra))
    assert shown.config is None and message in shown.error and "\n" not in shown.error


def test_a_misspelt_option_is_named_with_its_neighbour():
    shown = compose.compose(["model=tiny_lama"])
    assert shown.error.startswith(
        "unknown option 'tiny_lama' for config group 'model'. Did you mean 'tiny_llama'?")


def test_keys_come_from_the_schema_of_the_group_and_of_the_chosen_task():
    shown = compose.compose(compose.overrides({**LORA_RUN, "task": "grpo", "data": "custom"},
                                              "data.path=x.jsonl trainer.max_steps=3"))
    assert shown.error is None, shown.error
    task = {k.name: k for k in compose.keys("task", shown.config)}
    assert set(task) == {f.name for f in dataclasses.fields(GRPOTaskConfig)}
    assert task["loss_type"].choices == GRPOTaskConfig.CHOICES["loss_type"]
    model = {k.name: k for k in compose.keys("model", shown.config)}
    assert model["name_or_path"].value == "random-init"
    assert model["dtype"].choices == ModelConfig.CHOICES["dtype"]
    assert model["dtype"].default == ModelConfig.dtype
    adapter = {k.name: k.value for k in compose.keys("adapter", shown.config)}  # open: as composed
    assert adapter["method"] == "lora" and adapter["r"] == 8
    assert not any(k.typed for k in compose.keys("adapter", shown.config))  # no schema default to show
