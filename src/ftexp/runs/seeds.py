"""Repeated seeds: the `group` that runs differing only by seed share, the seeds `seeds=` asks
for, and the loop that runs one configuration under each of them.

`group` is what a report or a logger groups runs by to show seed variance: a readable prefix
(task, model, adapter) and a short hash of the resolved config without the keys that say which
seed a run used, where it is stored or how it is logged (`GROUP_EXCLUDES`). So `-m seed=1,2,3`,
`seeds=3` and `hydra.sweeper.repeats=3` all give runs of one group, and runs of different
adapters (or any other setting) different groups.

`seeds=3` (or `seeds=[1,2,3]`) runs the configuration once per seed, one after another in one
process, each in `<run dir>/seed_<n>`: a complete run dir of its own (config.yaml, .hydra/,
checkpoints, metrics.json). The outer dir then holds only those, ftexp.log and seeds.json, like a
multirun dir holds its jobs, so `ftexp.report <outer dir>` finds every seed's run.

Light: no torch (the CLI checks `seeds` before a job starts).
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import logging
import re
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ftexp.runs import atomic, run_dir
from ftexp.runs.errors import ConfigError, FtexpError, is_out_of_memory, out_of_memory_error

log = logging.getLogger(__name__)

# Top-level keys that do not change what a run tries: its seed(s), its group, where it is stored
# (paths), how it is logged, which sweep trial it is, whether it resumed, tracebacks.
GROUP_EXCLUDES = ("seed", "seeds", "group", "paths", "logger", "trial", "resume", "debug")
SEED_DIR = "seed_{}"  # each seed's run dir, inside the run dir of a `seeds=` run
SEEDS_FILE = "seeds.json"  # in that outer dir: the group, the seeds, those finished
_HASH_CHARS = 8
_SEEDS_HINT = "give a count (seeds=3: seed, seed+1, seed+2) or a list of distinct seeds (seeds=[1,2,3])"


class SeedFailed(FtexpError):
    """One seed of a `seeds=` run failed; the runs of the seeds before it are complete."""


# -- group ------------------------------------------------------------------------------------------

def _label(text: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"


def _model_label(model: Mapping[str, Any]) -> str:
    """Hub id or folder → its last part; `package:<module>/<subdir>` → the module; random-init → its
    architecture."""
    name, random_init = str(model.get("name_or_path")), model.get("random_init") or {}
    if name == "random-init" and random_init.get("model_type"):
        return f"random-{random_init['model_type']}"
    if name.startswith("package:"):
        return name.removeprefix("package:").split("/")[0]
    return Path(name).name


def _machine_free(value: Any, root: str) -> Any:
    """`value` with the checkout's path replaced by a placeholder: data paths resolve to absolute
    paths under it, and two workers of a sweep in different checkouts must agree on a group."""
    if isinstance(value, dict):
        return {k: _machine_free(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_machine_free(v, root) for v in value]
    if isinstance(value, str) and root and value.startswith(root):
        return "<root>" + value[len(root):]
    return value


def run_group(cfg: DictConfig) -> str:
    """`<task>-<model>-<adapter>-<hash>` of the validated config: equal for runs that differ
    only in the keys of GROUP_EXCLUDES."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    root = str((plain.get("paths") or {}).get("root_dir") or "")
    what = _machine_free({k: v for k, v in plain.items() if k not in GROUP_EXCLUDES}, root)
    digest = hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()
    prefix = "-".join(_label(p) for p in (plain["task"]["name"], _model_label(plain["model"]),
                                          plain["adapter"]["method"]))
    return f"{prefix}-{digest[:_HASH_CHARS]}"


# -- seeds ------------------------------------------------------------------------------------------

def seed_list(seeds: Any, seed: int) -> list[int] | None:
    """The seeds `seeds` asks for (None: a single run with `seed`), or a one-line ConfigError."""
    if seeds is None:
        return None
    if isinstance(seeds, ListConfig):
        seeds = OmegaConf.to_container(seeds)
    if isinstance(seeds, bool):
        raise ConfigError(f"seeds={seeds}: {_SEEDS_HINT}.")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ConfigError(f"seeds={seeds}: at least one seed is needed; {_SEEDS_HINT}.")
        return [seed + i for i in range(seeds)]
    if isinstance(seeds, (list, tuple)):
        shown = "[" + ",".join(map(str, seeds)) + "]"
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ConfigError(f"seeds={shown}: the list must hold whole numbers; {_SEEDS_HINT}.")
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            raise ConfigError(f"seeds={shown}: seed {repeated[0]} is listed twice, and a seed's run "
                              f"would only repeat another; {_SEEDS_HINT}.")
        return list(seeds)
    raise ConfigError(f"seeds={seeds!r}: {_SEEDS_HINT}.")


def check_seeds(cfg: DictConfig) -> list[int] | None:
    """`seed_list` of the config, and what a `seeds=` run cannot be combined with."""
    seeds = seed_list(cfg.get("seeds"), int(cfg.seed))
    if seeds is None:
        return None
    if cfg.strategy.name != "auto":
        raise ConfigError(f"seeds= runs its seeds one after another in one process, which a multi-process "
                          f"strategy ({cfg.strategy.name}) cannot; launch one run per seed instead "
                          "(seed=1, seed=2, …: they share a group).")
    if cfg.get("trial") is not None and cfg.trial.number is not None:
        raise ConfigError("seeds= does not run inside a sweep trial: use hydra.sweeper.repeats=k, which "
                          "runs each trial under k seeds and tells the study their mean.")
    if cfg.get("resume"):
        raise ConfigError("resume= continues one run: resume=<run dir>/seed_<n>, one seed at a time.")
    return seeds


# -- the loop ---------------------------------------------------------------------------------------

def _free_memory() -> None:
    """Between seeds: drop the last run's objects (and CUDA's cached blocks)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _hydra_files(outer: Path, hydra_subdir: str | None) -> dict[str, Any]:
    """Hydra's files of the outer run (config, hydra, overrides), read and removed: each seed's run
    dir gets its own copy, and the outer dir must not look like a run itself to the report."""
    folder = outer / hydra_subdir if hydra_subdir else None
    if folder is None or not folder.is_dir():
        return {}
    files = {p.name: OmegaConf.load(p) for p in sorted(folder.glob("*.yaml"))}
    shutil.rmtree(folder)
    return files


def _write_hydra_files(files: dict[str, Any], run: Path, hydra_subdir: str, seed: int, group: str) -> None:
    """The outer run's Hydra files for one seed's run: as if it had been run with `seed=<n>`."""
    def overrides(lines: Any) -> list[str]:
        kept = [o for o in (lines or []) if o.lstrip("+~").split("=")[0] not in ("seed", "seeds")]
        return [*kept, f"seed={seed}"]

    folder = run / hydra_subdir
    folder.mkdir(parents=True, exist_ok=True)
    for name, node in files.items():
        node = copy.deepcopy(node)
        if name == "config.yaml":
            node.seed, node.seeds, node.group = seed, None, group
        elif name == "overrides.yaml":
            node = OmegaConf.create(overrides(OmegaConf.to_container(node)))
        elif name == "hydra.yaml" and OmegaConf.select(node, "hydra.runtime") is not None:
            node.hydra.runtime.output_dir = str(run)
            node.hydra.overrides.task = overrides(OmegaConf.to_container(node.hydra.overrides.task))
        with atomic.atomic_path(folder / name) as tmp:
            OmegaConf.save(node, tmp, resolve=False)
    run_dir.redact_hydra_files(run)  # as the run itself would (secrets on the command line)


def run_seeds(cfg: DictConfig, seeds: list[int], train: Callable[[DictConfig], dict[str, Any]],
              hydra_subdir: str | None = ".hydra") -> dict[str, dict[str, Any]]:
    """Train `cfg` under each seed in `<run dir>/seed_<n>`, in order; {"seed_<n>": metrics}. A
    failing seed stops the loop with one line (SeedFailed); the seeds before it keep their runs."""
    outer = Path(cfg.paths.output_dir)
    group = cfg.group or run_group(cfg)
    hydra_files = _hydra_files(outer, hydra_subdir)
    summary: dict[str, Any] = {"group": group, "seeds": seeds, "finished": []}
    run_dir.write_json(outer / SEEDS_FILE, summary)
    results: dict[str, dict[str, Any]] = {}
    for i, seed in enumerate(seeds):
        run = outer / SEED_DIR.format(seed)
        one = copy.deepcopy(cfg)
        one.seed, one.seeds, one.group, one.paths.output_dir = seed, None, group, str(run)
        if hydra_files and hydra_subdir:
            _write_hydra_files(hydra_files, run, hydra_subdir, seed, group)
        log.info("seed %d (%d of %d), group %s: %s", seed, i + 1, len(seeds), group, run)
        try:
            results[run.name] = train(one)
        except (FtexpError, MemoryError, RuntimeError) as err:
            if not isinstance(err, FtexpError) and not is_out_of_memory(err):
                raise  # a bug: its traceback, not a line
            reason = str(err if isinstance(err, FtexpError) else out_of_memory_error(err))
            done = ", ".join(map(str, summary["finished"])) or "none"
            raise SeedFailed(f"seed {seed} ({i + 1} of {len(seeds)}) failed: {reason} "
                             f"[finished seeds: {done}, in {outer}]") from err
        finally:
            _free_memory()
        summary["finished"].append(seed)
        run_dir.write_json(outer / SEEDS_FILE, summary)
    return results
