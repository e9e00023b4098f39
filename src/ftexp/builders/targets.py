"""`_target_` config nodes (optimizer, scheduler, loggers, user callbacks): import the target,
check the node's keys against its signature, and build it with hydra.utils.instantiate.

Hydra would report a wrong key only when the object is built, in a multi-line traceback (and its
own lookup logs an error before raising); these helpers say it in one line before the model
loads, with a did-you-mean, and name the pip extra when the target's package is missing.
`where` is the node's place in the config (`optimizer`, `logger.csv`, `callbacks.extra.probe`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal

from ftexp.config.upgrade import current_target
from ftexp.runs.errors import ConfigError, did_you_mean

# Optional packages a target may come from → the ftexp extra that installs it.
EXTRAS = {"bitsandbytes": "quant", "wandb": "wandb", "tensorboard": "tensorboard",
          "tensorboardX": "tensorboard", "mlflow": "mlflow", "galore_torch": "galore",
          "apollo_torch": "apollo", "badam": "badam", "adam_mini": "adam_mini"}
# Hydra's own keys in a `_target_` node.
HYDRA_KEYS = ("_target_", "_args_", "_recursive_", "_convert_", "_partial_")


def _import(target: str) -> Any:
    """The object at a dotted path: the longest importable module prefix, then attributes."""
    parts = target.split(".")
    try:  # the top package first: a missing (or hidden) one must not hide behind its submodules
        importlib.import_module(parts[0])
    except ImportError as err:
        raise ModuleNotFoundError(f"no module named '{parts[0]}'", name=parts[0]) from err
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            found = importlib.util.find_spec(module_name) is not None
        except (ModuleNotFoundError, ValueError):  # a parent package is missing / was hidden
            found = False
        if not found:
            continue
        obj = importlib.import_module(module_name)  # a module that fails to import says why
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                raise ImportError(f"module '{obj.__name__}' has no attribute '{attr}'")
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(f"no module named '{parts[0]}'", name=parts[0])


def import_target(target: Any, where: str) -> Callable[..., Any]:
    """The class or function `<where>._target_` names, or a one-line ConfigError."""
    key = f"{where}._target_"
    if not isinstance(target, str) or not target.strip():
        raise ConfigError(f"{key} must be a dotted import path, e.g. torch.optim.AdamW; got {target!r}.")
    target = current_target(target)  # code that moved keeps its old path (config.upgrade)
    try:
        obj = _import(target)
    except Exception as err:
        package = target.split(".")[0]
        if isinstance(err, ModuleNotFoundError) and package in EXTRAS:
            raise ConfigError(f"{key}={target} needs the package '{package}', which is not installed; "
                              f"run: pip install 'ftexp[{EXTRAS[package]}]'.") from err
        module_name, _, attr = target.rpartition(".")
        hint = ""
        with contextlib.suppress(Exception):
            module = _import(module_name)
            hint = did_you_mean(attr, [n for n in dir(module) if not n.startswith("_")], f"{module_name}.")
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"{key}={target} cannot be imported: {reason}.{hint}") from err
    if not callable(obj):
        raise ConfigError(f"{key}={target} is not a class or function.")
    return obj


def parameters(target: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The named parameters of a class's __init__ or a function ({} when it has no signature)."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return {}
    return {n: p for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL}


def _literal_choices(target: Callable[..., Any]) -> dict[str, tuple[Any, ...]]:
    """Parameters annotated with a Literal: their allowed values."""
    with contextlib.suppress(Exception):
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
        return {n: typing.get_args(h) for n, h in hints.items() if typing.get_origin(h) is Literal}
    return {}


def check_node(node: Any, where: str, wired: Iterable[str] = (),
               provided: Iterable[str] = ()) -> Callable[..., Any]:
    """Import the node's target and check the node against its signature: every key a parameter
    (did-you-mean), Literal-typed values among their choices, every required parameter set.
    `wired`: the arguments ftexp passes itself, which the node must not set; `provided`: ones
    ftexp fills in when the node leaves them out. Returns the target."""
    if not isinstance(node, dict) or "_target_" not in node:
        raise ConfigError(f"{where} has no _target_: set {where}._target_ to a class or function "
                          "(a dotted import path), or null to leave it out.")
    target = import_target(node["_target_"], where)
    params = parameters(target)
    wired = set(wired)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    settable = [n for n, p in params.items()
                if n not in wired and p.kind is not inspect.Parameter.VAR_KEYWORD]
    for key in node:
        if key in HYDRA_KEYS:
            continue
        if key in wired and key in params:
            raise ConfigError(f"{where}.{key} is filled in by ftexp from the run; remove it from the config.")
        if key not in params and not takes_any:
            raise ConfigError(f"unknown key '{where}.{key}' for {node['_target_']}."
                              f"{did_you_mean(str(key), settable, f'{where}.')} "
                              f"Valid keys: {', '.join(settable)}.")
    for key, allowed in _literal_choices(target).items():
        if key in node and node[key] not in allowed:
            raise ConfigError(f"'{where}.{key}={node[key]}' is not a valid choice."
                              f"{did_you_mean(str(node[key]), [str(a) for a in allowed])} "
                              f"Choices: {', '.join(map(str, allowed))}.")
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    missing = [n for n, p in params.items()
               if p.default is inspect.Parameter.empty and p.kind in named
               and n not in node and n not in wired and n not in provided]
    if missing:
        raise ConfigError(f"{where} needs '{missing[0]}' for {node['_target_']}: "
                          f"set {where}.{missing[0]}=<value>.")
    return target


def instantiate_node(node: dict[str, Any], where: str, wired: Iterable[str] = (), **wiring: Any) -> Any:
    """Build the node (checked first), passing each `wiring` argument its target names as a
    parameter and the node does not set (never through **kwargs, which may go anywhere).
    `wired` names the arguments ftexp always passes (see check_node)."""
    from hydra.utils import instantiate

    target = check_node(node, where, wired, provided=wiring)
    params = parameters(target)
    passed = {k: v for k, v in wiring.items() if k in params and k not in node}
    # Partial, then called with the wiring: wiring values (parameters, loggers, the run's config
    # with its own `_target_` nodes) must pass as they are, not through instantiate.
    return instantiate(dict(node), _partial_=True, _convert_="all")(**passed)
