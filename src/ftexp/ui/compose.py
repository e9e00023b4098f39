"""What the compose page offers and checks, without any UI package: each config group's options
(read from conf/), each key's type, value in the composition, schema default and allowed values
(read from the schemas), and the command line with the CLI's own one-line errors. Nothing here
lists an option, a key or a choice a second time."""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from ftexp.runs.errors import FtexpError
from ftexp.runs.paths import config_dir

# The groups a run is composed from, in the order the page shows them.
GROUPS = ("model", "task", "adapter", "quant", "data", "optimizer", "scheduler", "trainer", "strategy",
          "callbacks", "logger", "eval", "generation")


@dataclass(frozen=True)
class Key:
    name: str
    type: str
    value: Any      # in the composed config
    default: Any    # the schema's
    choices: tuple[str, ...] = ()
    typed: bool = True  # False: a key of an open group (adapter, logger), without a schema default


@dataclass(frozen=True)
class Composition:
    argv: list[str]           # the overrides, as `python -m ftexp` takes them
    config: str | None        # the composed config as `--cfg job` prints it; None when refused
    error: str | None         # the CLI's one-line message; None when it composes and validates

    @property
    def command(self) -> str:
        return shlex.join(["python", "-m", "ftexp", *self.argv])


def group_options() -> dict[str, list[str]]:
    """{group: its options} for GROUPS, from the files under conf/."""
    from ftexp.cli import group_options as all_options

    options = all_options(config_dir())
    return {group: options[group] for group in GROUPS if group in options}


def default_choices() -> dict[str, str]:
    """The option each group takes when the command line names none (conf/config.yaml's defaults)."""
    defaults = yaml.safe_load((config_dir() / "config.yaml").read_text(encoding="utf-8"))["defaults"]
    return {group: str(option) for entry in defaults if isinstance(entry, dict)
            for group, option in entry.items() if group in GROUPS}


def overrides(choices: dict[str, str], extra: str = "") -> list[str]:
    """The command line for these group choices (those differing from the defaults) and the
    extra `key=value` overrides typed as on a shell line."""
    defaults = default_choices()
    argv = [f"{group}={option}" for group, option in choices.items()
            if option and option != defaults.get(group)]
    try:
        return argv + shlex.split(extra)
    except ValueError as err:  # an unclosed quote
        raise FtexpError(f"cannot read the overrides: {err}; quote values as on a shell line.") from err


def compose(argv: list[str]) -> Composition:
    """The config `python -m ftexp <argv>` would run, checked as the CLI checks it."""
    from ftexp.cli import preflight

    try:
        cfg = preflight(argv)
    except FtexpError as err:
        return Composition(argv, None, " ".join(str(err).split()))
    return Composition(argv, OmegaConf.to_yaml(cfg), None)


def keys(group: str, config: str) -> list[Key]:
    """The group's keys in a composed config (Composition.config): typed ones from its schema,
    the keys of an open group (adapter, logger) as composed."""
    from ftexp.config.root import GROUP_SCHEMAS
    from ftexp.tasks.registry import get_task

    cfg = OmegaConf.create(config)
    node = cfg.get(group)
    schema = GROUP_SCHEMAS.get(group)
    if group == "task":
        schema = get_task(node.name).settings
    if schema is None:
        return [Key(name, type(value).__name__, value, None, typed=False)
                for name, value in _plain(node).items()]
    return [Key(field.name, str(field.type), _plain(node.get(field.name)), _default(field),
                tuple(schema.CHOICES.get(field.name, ())))
            for field in dataclasses.fields(schema)]


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return _plain(field.default_factory())
    return "???"


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=False)
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return value
