"""The Sweeper class Hydra discovers; the work is in `_impl` (imported when a sweep starts)."""

from __future__ import annotations

from typing import Any, List, Optional

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from .config import FtexpOptunaSweeperConf  # noqa: F401  (registers hydra/sweeper=ftexp_optuna)


class FtexpOptunaSweeper(Sweeper):
    """Optuna studies as Hydra multiruns: persistent, resumable, shared by several workers,
    with pruning, failure accounting and one or several objectives."""

    def __init__(self, **settings: Any) -> None:
        from ._impl import FtexpOptunaSweeperImpl

        self._impl = FtexpOptunaSweeperImpl(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self._impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Optional[Any]:
        return self._impl.sweep(arguments)
