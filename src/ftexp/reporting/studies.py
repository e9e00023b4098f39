"""An Optuna study in memory holding a comparison's runs as trials, so the run dirs of a plain
multirun get the same figures (history, importances, parallel coordinates, Pareto front) as a
sweep's study."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from ftexp.runs.objective import PRUNED

if TYPE_CHECKING:
    from ftexp.reporting.collect import Comparison


def in_memory_study(comparison: Comparison) -> Any:
    """An Optuna study holding the comparison's runs as trials, so the run dirs of a plain multirun
    get the same figures as a sweep's study."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import TrialState

    study = optuna.create_study(directions=[o.direction for o in comparison.objectives])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # set_metric_names is marked experimental
        study.set_metric_names([o.metric for o in comparison.objectives])
    distributions: dict[str, Any] = {}
    for key in comparison.param_names:
        values = [r.params[key] for r in comparison.runs if r.params.get(key) is not None]
        if not values:
            continue
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numbers:
            low, high = min(values), max(values)
            log = low > 0 and high / low >= 100
            distributions[key] = (IntDistribution(int(low), int(high), log=log)
                                  if all(isinstance(v, int) for v in values)
                                  else FloatDistribution(float(low), float(high), log=log))
        else:
            distributions[key] = CategoricalDistribution(sorted({str(v) for v in values}))
    for run in comparison.runs:
        params = {k: (v if not isinstance(distributions[k], CategoricalDistribution) else str(v))
                  for k, v in run.params.items() if k in distributions and v is not None}
        complete = run.state == "complete" and run.values and all(v is not None for v in run.values)
        state = (TrialState.COMPLETE if complete else TrialState.PRUNED if run.state == PRUNED
                 else TrialState.FAIL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study.add_trial(optuna.trial.create_trial(
                state=state, params=params, distributions={k: distributions[k] for k in params},
                values=run.values if complete else None, user_attrs={"run": run.name}))
    return study
