"""Find the runs under the paths a report is asked for, and read them into comparisons.

A run dir holds `config.yaml` (or Hydra's `.hydra/config.yaml`); its state is `complete` with a
`metrics.json`, `pruned` when that file says `pruned: true`, and `failed` without it. A sweep dir
made by our Optuna sweeper also holds `optuna.db`: each study in it becomes one comparison whose
trials are matched to run dirs by the `trial:` node of their config (study name and number).
Runs that belong to no study found make one comparison of their own.

Seeds are replicates, not parameters: runs whose configs differ only in seed (the same `group`)
are one configuration, and with such repeats the best is the configuration with the best mean
over its seeds. A base-model evaluation (`python -m ftexp.evaluate`: `"kind": "evaluation"` in
metrics.json, group `base:<model>`) is read like a run. Benchmark scores are metrics.json keys
`eval/<task>/<metric>`: objectives like any other, better in the direction lm-eval's
`eval/results.json` gives when nothing else says which.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ftexp.reporting import ReportError
from ftexp.reporting.objectives import EVALUATION, default_objectives, direction_notes, objective_for
from ftexp.reporting.objectives import objective_value as objective_value
from ftexp.reporting.studies import in_memory_study
from ftexp.runs.objective import MAXIMIZE, MINIMIZE, PRUNED, Objective, was_pruned
from ftexp.runs.seeds import GROUP_EXCLUDES

STUDY_FILE = "optuna.db"
BASE_GROUP = "base:"  # the group of a base model's evaluation: base:<name_or_path>
# Keys that say where or how a run was stored, not what it tried (`group` follows from the config).
_NOT_PARAMS = ("hydra", "paths", "trial", "debug", "logger", "group")
# Keys that pick a replicate, not a setting: left out of importances and parameter plots.
REPLICATE_KEYS = ("seed", "seeds")
_NOT_SETTINGS = (*GROUP_EXCLUDES, "hydra")
_OPTUNA_STATES = {"COMPLETE": "complete", "PRUNED": PRUNED, "FAIL": "failed",
                  "RUNNING": "running", "WAITING": "waiting"}


@dataclass
class Run:
    """One run dir, or one study trial (whose run dir may be missing)."""
    name: str
    path: Path | None = None
    number: int = 0  # trial number, or the run's place in the comparison
    state: str = "failed"  # complete | pruned | failed | running | waiting
    config: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    choices: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    values: list[float | None] = field(default_factory=list)  # one per objective
    duration_s: float | None = None
    started: float = 0.0
    wandb_id: str | None = None

    @property
    def trial(self) -> dict[str, Any]:
        return self.config.get("trial") or {}

    @property
    def has_overrides(self) -> bool:
        return self.path is not None and (self.path / ".hydra" / "overrides.yaml").is_file()

    @property
    def is_evaluation(self) -> bool:
        """An evaluation dir (a base model scored, nothing trained)."""
        group = self.config.get("group")
        return self.metrics.get("kind") == EVALUATION or (isinstance(group, str)
                                                           and group.startswith(BASE_GROUP))


def settings_of(config: dict[str, Any]) -> dict[str, Any]:
    """A config flattened, without seed, paths and logging."""
    return flatten({k: v for k, v in config.items() if k not in _NOT_SETTINGS})


def replicate_key(run: Run) -> str:
    """What runs of one configuration share: the config's `group`, else (run dirs made before that
    key) the config without seed, paths and logging. A trial without a run dir is its own."""
    if run.path is None and not run.config:
        return f"trial {run.number} {id(run)}"
    group = run.config.get("group")
    if isinstance(group, str) and group:
        return group
    return json.dumps(settings_of(run.config), sort_keys=True, default=str)


@dataclass
class Comparison:
    """Runs compared on the same objectives: one Optuna study, or the run dirs outside any."""
    title: str
    runs: list[Run]
    objectives: list[Objective]
    study: Any = None  # the optuna.Study behind the figures (read from storage, or built in memory)
    from_storage: bool = False
    param_names: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    curve_metric: str = ""  # the validation metric drawn against the step (a csv/metrics.csv column)
    # A sweep with `repeats`: each trial's other seeds (its row shows the seed that reported to the
    # study); they count in the configurations over seeds, not as trials.
    repeats: list[Run] = field(default_factory=list)

    def ranked(self) -> list[Run]:
        """Complete runs with every objective value, best first on the first objective."""
        scored = [r for r in self.runs if r.state == "complete" and r.values
                  and all(v is not None for v in r.values)]
        first = self.objectives[0]
        return sorted(scored, key=lambda r: -first.sign * r.values[0])  # type: ignore[operator]

    def ranked_configurations(self) -> list[list[Run]]:
        """The ranked runs by configuration (seeds of one setting), best mean of the first objective
        first; each configuration's runs best first."""
        groups: dict[str, list[Run]] = {}
        for run in self.ranked():
            groups.setdefault(replicate_key(run), []).append(run)
        sign = self.objectives[0].sign
        return sorted(groups.values(), key=lambda g: -sign * sum(r.values[0] for r in g) / len(g))

    @property
    def has_repeats(self) -> bool:
        """Whether some configuration was run under several seeds."""
        return any(len(g) > 1 for g in self.ranked_configurations())

    @property
    def best(self) -> Run | None:
        """The best run of the best configuration (by its mean over seeds); one objective only."""
        if len(self.objectives) != 1:
            return None
        groups = self.ranked_configurations()
        return groups[0][0] if groups else None

    @property
    def best_value(self) -> float | None:
        """The best configuration's mean of the objective over its seeds (its value without seeds)."""
        if len(self.objectives) != 1 or not (groups := self.ranked_configurations()):
            return None
        return sum(r.values[0] for r in groups[0]) / len(groups[0])  # type: ignore[misc]

    def count(self, state: str) -> int:
        return sum(r.state == state for r in self.runs)


def _yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None


def _scalar(text: Any) -> Any:
    """An override's value as a number / bool / None where it reads as one."""
    if not isinstance(text, str):
        return text
    for cast in (int, float):
        try:
            value = cast(text)
            return value if not (isinstance(value, float) and math.isnan(value)) else text
        except ValueError:
            pass
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "null":  # Hydra's null; `none` is a string (adapter=none, eval=none)
        return None
    return text.strip().strip("'\"")


def _parse_overrides(lines: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for line in lines or []:
        if not isinstance(line, str) or "=" not in line or line.startswith("~"):
            continue
        key, value = line.split("=", 1)
        key = key.lstrip("+")
        if key.split(".")[0].split("/")[0] not in _NOT_PARAMS:
            found[key] = _scalar(value)
    return found


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() or (path / ".hydra" / "config.yaml").is_file()


def load_run(path: Path, name: str) -> Run:
    config = _yaml(path / "config.yaml") or _yaml(path / ".hydra" / "config.yaml") or {}
    hydra = _yaml(path / ".hydra" / "hydra.yaml") or {}
    choices = ((hydra.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    metrics_file = path / "metrics.json"
    try:
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    except (OSError, json.JSONDecodeError):
        metrics = {}
    state = (PRUNED if was_pruned(metrics) else "complete") if metrics else "failed"
    started_file = next(p for p in (path / "config.yaml", path / ".hydra" / "config.yaml") if p.is_file())
    started = started_file.stat().st_mtime
    ended = [p.stat().st_mtime for p in (metrics_file, path / "ftexp.log") if p.is_file()]
    wandb_file = path / "wandb_run_id"
    return Run(name=name, path=path, state=state, config=config if isinstance(config, dict) else {},
               overrides=_parse_overrides(_yaml(path / ".hydra" / "overrides.yaml")),
               choices={k: v for k, v in choices.items() if not str(k).startswith("hydra")},
               metrics=metrics, started=started,
               duration_s=max(ended) - started if ended and max(ended) >= started else None,
               wandb_id=wandb_file.read_text().strip() or None if wandb_file.is_file() else None)


def discover(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(run dirs, study files) under `paths`; run dirs are not searched further."""
    runs: list[Path] = []
    studies: list[Path] = []
    for path in paths:
        if not path.exists():
            raise ReportError(f"'{path}' does not exist.")
        if path.is_file():
            if path.name.endswith(".db"):
                studies.append(path)
                continue
            raise ReportError(f"'{path}' is a file: give a run dir, a sweep dir or an optuna.db file.")
        for folder, subfolders, files in os.walk(path):
            here = Path(folder)
            if STUDY_FILE in files:
                studies.append(here / STUDY_FILE)
            if is_run_dir(here):
                runs.append(here)
                subfolders[:] = []
            else:
                subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
    return list(dict.fromkeys(runs)), list(dict.fromkeys(studies))


def _sort_key(run: Run) -> tuple:
    parts = run.name.split("/")
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts) + ((0, run.started, ""),)


def _names(dirs: list[Path]) -> dict[Path, str]:
    """Each run dir named by its path below the folder the given runs share."""
    resolved = [d.resolve() for d in dirs]
    if len(resolved) == 1:
        return {dirs[0]: resolved[0].name}
    common = Path(os.path.commonpath(resolved))
    return {d: r.relative_to(common).as_posix() for d, r in zip(dirs, resolved, strict=True)}


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as {dotted key: value}."""
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node}


def _value_of(run: Run, key: str) -> Any:
    if key in run.overrides:
        return run.overrides[key]
    if "." not in key and key in run.choices:
        return run.choices[key]
    node: Any = run.config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if not isinstance(node, (dict, list)) else json.dumps(node)


def _varies(values: list[Any]) -> bool:
    return len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1


def varying_params(runs: list[Run]) -> list[str]:
    """The overrides whose values differ between runs (all runs' configs when some runs have no
    Hydra overrides: then every differing config value)."""
    keys = list(dict.fromkeys(k for r in runs for k in r.overrides))
    if runs and not all(r.has_overrides for r in runs):
        flat = [flatten({k: v for k, v in r.config.items() if k not in _NOT_PARAMS}) for r in runs]
        keys += [k for k in dict.fromkeys(k for f in flat for k in f) if k not in keys]
    return [k for k in keys if _varies([_value_of(r, k) for r in runs])]


def _storage(db: Path) -> Any:
    """An SQLite study file, or an Optuna journal file (the sweeper's `storage: <path>`)."""
    import optuna

    with db.open("rb") as head:
        sqlite = head.read(16).startswith(b"SQLite format 3")
    if sqlite:
        return optuna.storages.RDBStorage(f"sqlite:///{db}")
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(db)))


def _local_storage_file(spec: Any) -> Path | None:
    """The file a run's `trial.storage` names, when it is a local SQLite or journal file."""
    if not isinstance(spec, str) or not spec:
        return None
    path = Path(spec.removeprefix("sqlite:///")) if spec.startswith("sqlite:///") else (
        Path(spec) if "://" not in spec else None)
    return path if path is not None and path.is_file() else None


def _study_names(db: Path) -> list[str]:
    import optuna

    try:
        return optuna.study.get_all_study_names(_storage(db))
    except Exception as err:  # not a study file, or one from an incompatible Optuna
        raise ReportError(f"cannot read Optuna studies from '{db}': {str(err).splitlines()[0]}") from err


def _study_comparison(db: Path, name: str, members: list[Run], several: bool) -> Comparison:
    import optuna

    study = optuna.load_study(study_name=name, storage=_storage(db))
    names = study.metric_names or [next((r.trial.get("monitor") for r in members if r.trial.get("monitor")),
                                        None) or "objective"]
    if len(names) < len(study.directions):
        names = [f"objective {i}" for i in range(len(study.directions))]
    objectives = [Objective(n, MAXIMIZE if d == optuna.study.StudyDirection.MAXIMIZE else MINIMIZE)
                  for n, d in zip(names, study.directions, strict=True)]
    by_number: dict[int, dict[Any, Run]] = {}
    for run in sorted(members, key=lambda r: r.started):  # a trial started twice: keep the last dir
        by_number.setdefault(int(run.trial["number"]), {})[run.config.get("seed")] = run
    runs, repeats = [], []
    for trial in study.get_trials(deepcopy=False):
        seeds = list(by_number.pop(trial.number, {}).values())
        # With repeats, the seed that reported to the study (its trial.monitor is set) is the trial.
        run = next((r for r in seeds if r.trial.get("monitor")), seeds[0] if seeds else None)
        repeats += [r for r in seeds if r is not run]
        run = run or Run(name=f"trial {trial.number}")
        run.number = trial.number
        run.state = _OPTUNA_STATES.get(trial.state.name, trial.state.name.lower())
        run.values = list(trial.values) if trial.values else [None] * len(objectives)
        if trial.duration is not None:
            run.duration_s = trial.duration.total_seconds()
        run.params = dict(trial.params)
        runs.append(run)
    # Run dirs the study does not know of.
    extra = sorted((r for seeds in by_number.values() for r in seeds.values()), key=_sort_key)
    for run in extra:
        run.number = int(run.trial["number"])
    notes = [f"{len(extra)} run dir(s) name trials the study does not hold."] if extra else []
    runs += extra
    swept = list(dict.fromkeys(k for t in study.get_trials(deepcopy=False) for k in t.params))
    _fill_params(runs, swept)
    title = f"Study {name}" + (f" ({db})" if several else "")
    monitor = study.user_attrs.get("monitor") or next(
        (r.trial["monitor"] for r in runs if r.trial.get("monitor")), None)
    return Comparison(title, runs, objectives, study=study, from_storage=True,
                      param_names=swept + [k for k in varying_params(runs) if k not in swept], notes=notes,
                      curve_metric=monitor or _curve_metric(objectives, runs), repeats=repeats)


def _curve_metric(objectives: list[Objective], runs: list[Run]) -> str:
    """The first objective as logged per evaluation (without `best/`), else the runs' monitor."""
    metric = objectives[0].metric.removeprefix("best/")
    if metric.startswith(("val/", "train/", "train_eval/")):
        return metric
    return default_objectives(runs)[0].metric


def _fill_params(runs: list[Run], first: list[str]) -> None:
    """Each run's parameters: the study's sampled ones, then the overrides that differ."""
    with_dirs = [r for r in runs if r.path is not None]
    for key in varying_params(with_dirs):
        if key in first:
            continue
        for run in with_dirs:
            run.params.setdefault(key, _value_of(run, key))


def _plain_comparison(runs: list[Run], objectives: list[Objective | str] | None, titled: bool) -> Comparison:
    runs = sorted(runs, key=_sort_key)
    chosen = [o if isinstance(o, Objective) else objective_for(o, runs) for o in objectives or []]
    chosen = chosen or default_objectives(runs)
    for number, run in enumerate(runs):
        run.number = number
        run.values = [objective_value(run.metrics, o.metric) if run.state == "complete" else None
                      for o in chosen]
    _fill_params(runs, [])
    comparison = Comparison("Runs" if titled else "", runs, chosen,
                            param_names=list(dict.fromkeys(k for r in runs for k in r.params)),
                            curve_metric=_curve_metric(chosen, runs))
    lacking = [r for r in runs if r.state == "complete" and any(v is None for v in r.values)]
    metrics = ", ".join(o.metric for o in chosen)
    missing = [r.name for r in lacking if not r.is_evaluation]
    if missing:
        comparison.notes.append(f"{len(missing)} complete run(s) lack {metrics}: {', '.join(missing[:5])}.")
    evaluations = [r.name for r in lacking if r.is_evaluation]
    if evaluations:
        comparison.notes.append(f"{len(evaluations)} evaluation dir(s) (a base model scored, nothing "
                                f"trained) have no {metrics}: {', '.join(evaluations[:5])}; the "
                                "benchmark sections compare them.")
    comparison.notes += direction_notes(chosen, runs)
    comparison.study = in_memory_study(comparison)
    return comparison


def collect(paths: list[Path], objectives: list[Objective | str] | None = None) -> list[Comparison]:
    """One comparison per Optuna study found, and one for the run dirs outside any study. An
    objective given as a bare metric name is ranked in its direction (objective_for)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_dirs, dbs = discover(paths)
    names = _names(run_dirs) if run_dirs else {}
    runs = [load_run(d, names[d]) for d in run_dirs]
    # Studies in storage files that several of the runs name (a journal file, a database elsewhere
    # on this disk): a sweep's runs. One trial's run dir alone is reported as a run.
    named = [_local_storage_file(r.trial.get("storage")) for r in runs]
    known = {d.resolve() for d in dbs}
    for path in named:
        if path is not None and path.resolve() not in known and named.count(path) > 1:
            known.add(path.resolve())
            dbs.append(path)
    studies = [(db, name) for db in dbs for name in _study_names(db)]
    if not runs and not studies:
        shown = ", ".join(str(p) for p in paths)
        raise ReportError(f"no runs under {shown}: expected a run dir (with config.yaml), or a sweep or "
                          f"multirun dir holding run dirs or an {STUDY_FILE}.")
    comparisons, used = [], set()
    for db, name in studies:
        members = [r for r in runs if r.trial.get("study_name") == name and r.trial.get("number") is not None
                   and id(r) not in used and (_under(r.path, db.parent)
                                               or _local_storage_file(r.trial.get("storage")) == db)]
        used.update(id(r) for r in members)
        comparisons.append(_study_comparison(db, name, members, len(studies) > 1))
    rest = [r for r in runs if id(r) not in used]
    if rest:
        comparisons.append(_plain_comparison(rest, objectives, titled=bool(comparisons)))
    if all(not c.runs for c in comparisons):
        raise ReportError(f"no trials or runs under {', '.join(str(p) for p in paths)}: "
                          f"the study holds no trials yet.")
    return [c for c in comparisons if c.runs]


def _under(path: Path | None, folder: Path) -> bool:
    if path is None:
        return False
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False
