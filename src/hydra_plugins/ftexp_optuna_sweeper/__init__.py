"""ftexp's Optuna sweeper for Hydra: `hydra/sweeper=ftexp_optuna` (see README, 'Sweeps').

Hydra finds it by scanning the `hydra_plugins` namespace package: `config.py` registers the
config node, `ftexp_optuna_sweeper.py` the Sweeper class (both light), `sweep_configs.py` the
`sweep` config group that serves the campaign files of the top-level `sweeps/` folder; `_impl.py`
(optuna and the sweep loop, with `_search_space.py`, `_study.py` and `_workers.py`) is imported only when a
sweep starts.
"""

__version__ = "0.1.0"
