"""`_target_` config nodes (optimizer, scheduler, loggers, user callbacks): import the target,
check the node's keys against its signature, and build it with hydra.utils.instantiate.

Hydra would report a wrong key only when the object is built, in a multi-line traceback; these
helpers say it in one line before the model loads, with a did-you-mean over the target's
parameters, and name the pip extra when the target's package is missing.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from typing import Any

from ftexp.errors import ConfigError, did_you_mean

# Optional packages a target may come from → the ftexp extra that installs it.
EXTRAS = {"bitsandbytes": "quant", "wandb": "wandb", "tensorboard": "tensorboard",
          "tensorboardX": "tensorboard", "mlflow": "mlflow"}


def import_target(target: str, where: str) -> Callable[..., Any]:
    """The class or function `target` names (`package.module.Name`); `where` is the config key,
    for the message. (Hydra's own lookup logs an error of its own before raising.)"""
    package = target.split(".")[0]
    try:
        importlib.import_module(package)
    except ImportError as err:
        extra = EXTRAS.get(package)
        fix = f"pip install 'ftexp[{extra}]'" if extra else f"pip install {package}"
        raise ConfigError(f"{where}={target} needs the package '{package}', which is not "
                          f"installed; run: {fix}.") from err
    parts = target.split(".")
    for split in range(len(parts) - 1, 0, -1):  # the longest importable module prefix
        try:
            found: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for name in parts[split:]:
                found = getattr(found, name)
        except AttributeError:
            break
        return found
    raise ConfigError(f"{where}={target} cannot be imported: no '{parts[-1]}' there; check the "
                      "spelling (a dotted path to a class or function).")


def parameters(target: Callable[..., Any]) -> tuple[list[str], bool]:
    """(named parameters, accepts **kwargs) of a class's __init__ or a function."""
    signature = inspect.signature(target)
    names = [p.name for p in signature.parameters.values()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    open_ended = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    return names, open_ended


def check_node(node: dict[str, Any], where: str, wired: Iterable[str] = ()) -> Callable[..., Any]:
    """Import the node's target and check that it takes every key of the node (`wired`: the
    arguments ftexp passes itself, which the node must not set). Returns the target."""
    if "_target_" not in node:
        raise ConfigError(f"{where} needs a _target_ (a class or function to build), e.g. "
                          f"+{where}._target_=my.module.Thing.")
    target = import_target(str(node["_target_"]), f"{where}._target_")
    names, open_ended = parameters(target)
    wired = set(wired)
    for key in node:
        if key.startswith("_") and key.endswith("_"):
            continue  # Hydra's own keys: _target_, _partial_, _convert_, _args_
        if key in wired:
            raise ConfigError(f"{where}.{key} is passed by ftexp itself; remove it from the config.")
        if key not in names and not open_ended:
            options = [n for n in names if n not in wired and n != "self"]
            raise ConfigError(f"{where}.{key} is not a parameter of {node['_target_']}."
                              f"{did_you_mean(str(key), options, f'{where}.')} "
                              f"Its parameters: {', '.join(options)}.")
    return target


def instantiate_node(node: dict[str, Any], where: str, **wiring: Any) -> Any:
    """Build the node, passing each `wiring` argument its target takes and the node does not set."""
    from hydra.utils import instantiate

    target = check_node(node, where)
    names, open_ended = parameters(target)
    passed = {k: v for k, v in wiring.items() if (k in names or open_ended) and k not in node}
    # _partial_: wiring values (tensors, loggers, paths) are passed as they are, not as config.
    return instantiate(dict(node), _partial_=True, _convert_="all")(**passed)
