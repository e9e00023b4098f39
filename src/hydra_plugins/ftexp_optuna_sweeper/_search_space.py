"""The search space: Hydra sweep overrides (`choice`, `range`, `interval`, `tag(log, …)`) and the
sweeper's `params` turned into Optuna distributions, and trial values back into overrides."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, ListConfig
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from ftexp.runs.errors import ConfigError


def as_override_text(value: Any) -> str:
    """A value as override text that parses back to the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple, ListConfig)):
        return "[" + ",".join(as_override_text(v) for v in value) + "]"
    if isinstance(value, (dict, DictConfig)):
        return "{" + ",".join(f"{k}:{as_override_text(v)}" for k, v in value.items()) + "}"
    text = str(value)
    with contextlib.suppress(Exception):
        if OverridesParser.create().parse_override(f"k={text}").value() == text:
            return text
    # Quoted: escape the quotes, and backslashes where they come right before a quote.
    return "'" + re.sub(r"(\\+)(?='|$)", r"\1\1", text).replace("'", "\\'") + "'"


@dataclass
class Param:
    """One swept key: how it is written in an override, and its Optuna distribution."""
    key: str  # as given, e.g. 'adapter.r', '+adapter.use_dora', or a group: 'adapter'
    distribution: BaseDistribution
    # Categorical choices that are lists or dicts travel as their override text.
    texts: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.key.lstrip("+")

    def override(self, value: Any) -> str:
        return f"{self.key}={value if value in self.texts else as_override_text(value)}"


def _plain_choice(value: Any, texts: set[str]) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    text = as_override_text(value)
    texts.add(text)
    return text


def distribution(override: Override) -> tuple[BaseDistribution, set[str]]:
    """The Optuna distribution of a sweep override: choice → categorical, range → int (or
    stepped float) with Python's exclusive stop, interval → float (int with `tag(int, …)`), log
    scale with `tag(log, …)`."""
    texts: set[str] = set()
    key = override.get_key_element()
    if override.is_choice_sweep() or (override.is_range_sweep() and override.value().shuffle):
        choices = [_plain_choice(v, texts) for v in override.sweep_iterator()]
        return CategoricalDistribution(list(dict.fromkeys(choices))), texts
    if override.is_range_sweep():
        sweep = override.value()
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(f"'{override.input_line}' is an empty range.")
        low, high, step = min(values), max(values), abs(sweep.step)
        if all(isinstance(v, int) for v in values) and isinstance(sweep.step, int):
            return IntDistribution(low, high, step=step), texts
        return FloatDistribution(float(low), float(high), step=float(step)), texts
    if override.is_interval_sweep():
        sweep = override.value()
        log_scale = "log" in sweep.tags
        if "int" in sweep.tags:
            return IntDistribution(int(sweep.start), int(sweep.end), log=log_scale), texts
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale), texts
    raise ConfigError(f"cannot sweep '{key}' with '{override.input_line}': use choice(…), range(…), "
                      "interval(…) or tag(log, interval(…)).")


def search_space(arguments: Sequence[str], params: Mapping[str, Any] | None
                 ) -> tuple[dict[str, Param], list[str]]:
    """({name: Param}, fixed overrides) from the command line's overrides and the sweeper's
    `params`; the command line wins where both name a key."""
    parser = OverridesParser.create()
    swept: dict[str, Param] = {}
    fixed: list[tuple[str, str]] = []  # (key, override)
    for override in parser.parse_overrides(list(arguments)):
        name = override.get_key_element().lstrip("+~")
        if override.is_sweep_override():
            swept[name] = Param(override.get_key_element(), *distribution(override))
        else:
            fixed.append((name, override.input_line))
    given = set(swept) | {name for name, _ in fixed}
    for key, value in (params or {}).items():
        name = str(key).lstrip("+")
        if name in given:
            continue
        text = f"{key}={value}" if isinstance(value, str) else f"{key}={as_override_text(value)}"
        try:
            override = parser.parse_override(text)
        except Exception as err:  # Hydra's parse errors are several lines long
            raise ConfigError(f"hydra.sweeper.params: cannot parse '{text}': "
                              f"{str(err).strip().splitlines()[0]}") from err
        if override.is_sweep_override():
            swept[name] = Param(override.get_key_element(), *distribution(override))
        else:
            fixed.append((name, text))
    return swept, [text for _, text in fixed]


def grid_values(space: Mapping[str, Param]) -> dict[str, list[Any]]:
    """GridSampler's search space: every value of every parameter (intervals have none)."""
    grid: dict[str, list[Any]] = {}
    for name, param in space.items():
        dist = param.distribution
        if isinstance(dist, CategoricalDistribution):
            grid[name] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            grid[name] = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, FloatDistribution) and dist.step is not None:
            count = int(round((dist.high - dist.low) / dist.step)) + 1
            grid[name] = [round(dist.low + i * dist.step, 12) for i in range(count)]
        else:
            raise ConfigError(f"sampler=grid needs choice(…) or range(…) for every parameter; "
                              f"'{name}' is an interval.")
    return grid
