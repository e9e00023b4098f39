"""The experiment loggers a run writes to (the `logger` group)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def build_loggers(settings: dict[str, Any], run_dir: Path) -> list[Any]:
    """Lightning loggers for `settings` (the resolved `logger` group); [] when none is asked."""
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = []
    if settings.get("csv"):
        loggers.append(CSVLogger(save_dir=run_dir, name="csv", version=""))
    return loggers
