"""Lightning callbacks of ftexp's own, and the user's `callbacks.extra` nodes.

A user callback is any `_target_` class (a lightning Callback) given on the command line:
`+callbacks.extra.<name>._target_=my.module.MyCallback`, with its arguments as sibling keys.
"""

from __future__ import annotations

from typing import Any

from ftexp.builders.targets import check_node, instantiate_node


def check_callback_nodes(nodes: dict[str, Any]) -> None:
    """Before the model loads: each node's target imports and takes the node's keys."""
    for name, node in nodes.items():
        check_node(node, f"callbacks.extra.{name}")


def build_extra_callbacks(nodes: dict[str, Any]) -> list[Any]:
    """The user's callbacks, in the order given."""
    from lightning.pytorch.callbacks import Callback

    built = []
    for name, node in nodes.items():
        callback = instantiate_node(node, f"callbacks.extra.{name}")
        if not isinstance(callback, Callback):
            from ftexp.runs.errors import ConfigError

            raise ConfigError(f"callbacks.extra.{name}._target_={node['_target_']} is not a Lightning "
                              "Callback (lightning.pytorch.callbacks.Callback).")
        built.append(callback)
    return built
