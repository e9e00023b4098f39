"""What a person reads in the terminal: the config tree at start, sample generations while a
language model trains, and the metrics table at the end."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table
from rich.tree import Tree

console = Console()

# Groups shown first in the config tree, in the order a reader thinks of them.
_GROUP_ORDER = ("model", "adapter", "quant", "strategy", "task", "scheduler", "generation", "data",
                "trainer", "callbacks", "logger", "paths")


def print_config_tree(cfg: DictConfig) -> None:
    tree = Tree("config", style="bold")
    keys = [k for k in _GROUP_ORDER if k in cfg] + [k for k in cfg if k not in _GROUP_ORDER]
    for key in keys:
        value = cfg[key]
        branch = tree.add(f"[bold cyan]{key}")
        text = OmegaConf.to_yaml(value) if isinstance(value, DictConfig) else str(value)
        branch.add(Syntax(text.rstrip(), "yaml", theme="ansi_dark", background_color="default"))
    console.print(tree)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_metrics_table(metrics: Mapping[str, Any], title: str = "results") -> None:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in sorted(metrics):
        table.add_row(key, _fmt(metrics[key]))
    console.print(table)


def print_generations(prompts: list[str], texts: list[str], title: str) -> None:
    table = Table(title=title, show_header=True, header_style="bold", show_lines=True)
    table.add_column("prompt (end)", max_width=60, overflow="fold")
    table.add_column("generation", overflow="fold")
    for prompt, text in zip(prompts, texts, strict=True):
        table.add_row("…" + prompt[-200:] if len(prompt) > 200 else prompt, text or "[dim](empty)")
    console.print(table)


def quiet_third_party() -> None:
    """Keep the console for our progress bar and tables, not third-party chatter."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*is deprecated.*")  # PEFT
    # A frozen backbone stays in eval mode on purpose (no dropout in a fixed feature extractor).
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric.utilities.rank_zero").setLevel(logging.WARNING)
