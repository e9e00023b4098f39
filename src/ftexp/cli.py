"""`python -m ftexp`: check the command line, then hand it to Hydra, which composes and runs.

Hydra's own messages for a bad override are several lines long, and a wrong type inside a group
file would only surface deep inside training. So before Hydra runs, `preflight` composes the
same overrides with Hydra's compose API and validates the result against the schemas, turning
any problem into one line (see `ftexp.runs.errors`). Nothing heavy is imported until a job starts.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import hydra
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError

from ftexp.config.validation import bad_value_message, validate
from ftexp.runs.errors import ConfigError, debug_requested, did_you_mean, reported_as_one_line
from ftexp.runs.paths import config_dir, project_root
from ftexp.runs.seeds import check_seeds

OmegaConf.register_new_resolver("ftexp_root", lambda: str(project_root()), replace=True)


def _register_plugins() -> None:
    """Hydra finds ftexp's sweeper and the `sweep` group's config source by scanning the
    `hydra_plugins` namespace package. Some editable installs (import-hook ones) hide that
    namespace from the scan: then load them from beside the ftexp package and register them."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()
    sweeper = "hydra_plugins.ftexp_optuna_sweeper.ftexp_optuna_sweeper.FtexpOptunaSweeper"
    if sweeper in plugins.class_name_to_class:
        return
    beside = Path(__file__).resolve().parents[1]  # the folder holding ftexp/ and hydra_plugins/
    try:
        import hydra_plugins

        if str(beside / "hydra_plugins") not in list(hydra_plugins.__path__):
            hydra_plugins.__path__.append(str(beside / "hydra_plugins"))
    except ImportError:
        sys.path.append(str(beside))
    from hydra_plugins.ftexp_optuna_sweeper import ftexp_optuna_sweeper, sweep_configs

    plugins.register(ftexp_optuna_sweeper.FtexpOptunaSweeper)
    plugins.register(sweep_configs.SweepsConfigSource)


_register_plugins()

# Hydra flags after which we let Hydra alone speak (help, info, shell completion, custom config).
_HYDRA_ONLY_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--package",
                     "-p", "--shell-completion", "-sc", "--config-path", "-cp", "--config-name",
                     "-cn", "--config-dir", "-cd", "--experimental-rerun", "--version")


def group_options(root: Path) -> dict[str, list[str]]:
    """{'model': ['bert_base', 'minilm', …], …} for every group folder under the config dir."""
    groups: dict[str, list[str]] = {}
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        if options:
            groups[folder.relative_to(root).as_posix()] = options
    return groups


def _expand(override) -> list[str]:
    """Every value a (possibly sweeping) override takes; [] if it cannot be listed up front."""
    if not override.is_sweep_override():
        value = override.value()
        if not isinstance(value, str):
            return [override.get_value_element_as_str()]
        # Composed again below: a string with characters the override grammar reads (braces of a
        # template, spaces, quotes) goes back quoted, or `'{prompt} A:'` would parse as a dict.
        plain = re.fullmatch(r"[\w./:@+-]*", value) is not None
        return [value if plain else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"]
    try:
        return list(override.sweep_string_iterator())
    except (TypeError, HydraException, ValueError):
        return []  # e.g. an Optuna interval(): the sweeper samples it, nothing to list here


def preflight(argv: list[str]) -> DictConfig:
    """Compose and validate every value the command line asks for, or raise ConfigError; the
    config of the first combination (what a single run of this command composes)."""
    overrides_text = [a for a in argv if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides_text)
    except OverrideParseException as err:
        raise ConfigError(f"cannot parse override: {str(err).splitlines()[0]}") from err

    groups = group_options(config_dir())
    # The `sweep` group is the top-level sweeps/ folder (served by our config source, see conf/config.yaml).
    groups["sweep"] = sorted(f.stem for f in (project_root() / "sweeps").glob("*.yaml"))
    variants: list[list[tuple[str, str, str]]] = []  # per override: (as given, as checked, value)
    for override in parsed:
        key = override.key_or_group
        if key == "hydra" or key.startswith(("hydra.", "hydra/")) or override.is_delete():
            continue
        values = _expand(override)
        if not values:
            continue
        is_group = key in groups and override.package is None
        if is_group:
            # A list value (`logger=[csv,tensorboard]`) picks several options of the group.
            chosen = override.value() if isinstance(override.value(), list) else values
            for value in map(str, chosen):
                if value not in groups[key] and value != "null":
                    raise ConfigError(
                        f"unknown option '{value}' for config group '{key}'."
                        f"{did_you_mean(value, groups[key])} Choices: {', '.join(groups[key])}."
                    )
            checked = override.get_key_element()
        else:
            # '++' adds a key the config lacks, so an unknown key reaches `validate`, which
            # answers with a did-you-mean instead of Hydra's multi-line struct error.
            checked = override.get_key_element().lstrip("+")
            checked = checked if checked.startswith("~") else "++" + checked
        variants.append([(override.get_key_element(), checked, v) for v in values])

    first = [choices[0] for choices in variants]
    combinations = [first] + [first[:i] + [choice] + first[i + 1:]
                              for i, choices in enumerate(variants) for choice in choices[1:]]
    with initialize_config_dir(str(config_dir()), version_base="1.3", job_name="ftexp"):
        configs = []
        for combination in combinations:
            configs.append(_compose_checked(combination))
            _check(configs[-1])
    return configs[0]


def _check(cfg: DictConfig) -> None:
    validate(cfg, resolve=False)
    check_seeds(cfg)
    _check_adapter_keys(cfg)


def _compose_checked(combination: list[tuple[str, str, str]]) -> DictConfig:
    """The config Hydra will compose for these overrides, or a one-line ConfigError.

    Composed as written first (what Hydra runs; one compose when all is well). If Hydra refuses,
    compose again with every key forced (`++`): a bad key or value then reaches the checks and is
    named with a did-you-mean; if that composes and passes them, the keys were right and what
    Hydra refused is how they were written (a missing or extra `+`)."""
    try:
        return compose("config", overrides=[f"{g}={v}" for g, _, v in combination])
    except HydraException as as_written:
        try:
            cfg = compose("config", overrides=[f"{c}={v}" for _, c, v in combination])
        except HydraException as err:
            raise ConfigError(_composition_message(err)) from err
        _check(cfg)
        raise ConfigError(_hydra_hint(str(as_written))) from as_written


def _composition_message(err: HydraException) -> str:
    """One line for a failed compose: a value of the wrong type for its schema is named as
    `validate` names it; anything else is Hydra's first line."""
    cause = err.__cause__
    while cause is not None and not isinstance(cause, ValidationError):
        cause = cause.__cause__
    if isinstance(cause, ValidationError):
        return bad_value_message(cause)
    return str(err).strip().splitlines()[0]


def _check_adapter_keys(cfg: DictConfig) -> None:
    """PEFT methods take PEFT's keys: check them now (imports peft, as the job will anyway)."""
    from ftexp.config.adapter import NON_PEFT_ADAPTERS

    if cfg.adapter.method not in NON_PEFT_ADAPTERS:
        from ftexp.builders.adapter import peft_config

        params = OmegaConf.to_container(cfg.adapter, resolve=False)
        peft_config(params.pop("method"), params)


def _hydra_hint(message: str) -> str:
    first = message.strip().splitlines()[0]
    if "is not in struct" in message or "Could not override" in first:
        key = first.split("'")[1] if "'" in first else "the key"
        return (f"'{key}' is not in the chosen config file; to add it, prefix the override "
                f"with '+': +{key}=…")
    if "An item is already at" in message:
        key = first.split("'")[1] if "'" in first else "the key"
        return f"'{key}' already exists; drop the leading '+' to change it: {key}=…"
    return first


def _wants_preflight(argv: list[str]) -> bool:
    return not any(a.split("=")[0] in _HYDRA_ONLY_FLAGS for a in argv if a.startswith("-"))


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _run_job(cfg: DictConfig) -> dict[str, Any]:
    """One job; returns its metrics, which sweepers read their objectives from (a `seeds=` job:
    {"seed_<n>": metrics} for each seed)."""
    from hydra.core.hydra_config import HydraConfig

    # In a multirun a bad job must not end the sweep: its one-line error is logged and the
    # exception handed to Hydra, which records the job as failed and lets the sweeper go on.
    with reported_as_one_line(cfg.get("debug", False), exit_on_error=not _in_multirun()):
        if cfg.get("resume"):
            cfg = resumed_config(cfg, list(HydraConfig.get().overrides.task))
        cfg = validate(cfg)
        seeds = check_seeds(cfg)
        from ftexp.train import train  # heavy imports (torch, transformers) start here

        if seeds is None:
            return train(cfg)
        from ftexp.runs.seeds import run_seeds

        return run_seeds(cfg, seeds, train, HydraConfig.get().output_subdir)


def check_launch(argv: list[str], environ: dict[str, str]) -> list[str]:
    """The command line to run, made safe for multi-process launches, or a ConfigError.

    torchrun starts every rank with the same command; Hydra's default run dir carries a
    timestamp that can differ between ranks, so the run dir is pinned to the launch's id.
    A `-m` sweep cannot hold multi-process jobs: Lightning's launcher would re-run the whole sweep
    in each child process."""
    # The SLURM launcher is the exception: it runs each job's ranks as tasks of one SLURM job.
    multirun = any(a in ("-m", "--multirun") for a in argv) and "hydra/launcher=slurm" not in argv
    strategies = [a.split("=", 1)[1] for a in argv if a.startswith("strategy=")]
    if multirun and any(value.split(",")[0] != "auto" or "," in value for value in strategies):
        raise ConfigError("a -m sweep runs single-device trials (strategy=auto); launch multi-process "
                          "runs one at a time, e.g. torchrun --nproc-per-node 2 -m ftexp strategy=ddp "
                          "(README, 'Several devices').")
    resume = next((a.split("=", 1)[1] for a in argv if a.startswith("resume=")), None)
    if resume and resume != "null":
        run = resume_target(resume)
        argv = [f"resume={run}" if a.startswith("resume=") else a for a in argv]
        if not any(a.startswith("hydra.run.dir=") for a in argv):
            argv.append(f"hydra.run.dir={run}")  # the resumed run keeps writing to its own dir
        return argv
    if "TORCHELASTIC_RUN_ID" in environ and not any(a.startswith("hydra.run.dir=") for a in argv):
        run_id = environ["TORCHELASTIC_RUN_ID"]
        if run_id in ("", "none"):
            raise ConfigError("torchrun without --standalone or --rdzv-id gives the ranks no shared id "
                              "to name the run dir: add hydra.run.dir=outputs/runs/<name>.")
        return [*argv, f"hydra.run.dir=outputs/runs/torchrun-{run_id}"]
    return argv


def resume_target(value: str, runs: Path = Path("outputs/runs")) -> Path:
    """The run directory `resume=<value>` names (`last`: the newest one with a checkpoint)."""
    if value == "last":
        # A `seeds=` run keeps each seed's run one level down (<run>/seed_<n>).
        found = [*runs.glob("*/checkpoints/last*.ckpt"), *runs.glob("*/seed_*/checkpoints/last*.ckpt")]
        candidates = sorted(found, key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise ConfigError(f"resume=last: no run under {runs} has a checkpoint to resume from; "
                              "name the run directory: resume=<run dir>.")
        return candidates[-1].parent.parent.resolve()
    run = Path(value).expanduser().resolve()
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"resume={value}: not an ftexp run directory (no config.yaml in {run}).")
    return run


def resumed_config(cfg: DictConfig, task_overrides: list[str]) -> DictConfig:
    """The config a resumed run continues with: its own saved config, with the command line's
    key=value changes (e.g. more epochs) on top; swapping a group would make it another run."""
    from ftexp.config.upgrade import upgrade_saved_config

    run = Path(cfg.resume)
    saved = upgrade_saved_config(OmegaConf.load(run / "config.yaml"))
    groups = group_options(config_dir())
    for override in task_overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key in ("resume", "debug") or key.startswith("hydra"):
            continue
        if key in groups:
            raise ConfigError(f"resume continues a run with its own config; '{override}' swaps a "
                              "config group — start a new run for that, or change keys only "
                              "(e.g. trainer.max_epochs=5).")
        OmegaConf.update(saved, key, yaml.safe_load(value) if value else None, merge=True)
    saved.resume = str(run)
    saved.paths.output_dir = str(run)
    return saved


def main() -> None:
    argv = sys.argv[1:]
    debug = debug_requested() or any(a.lower() in ("debug=true", "debug=1") for a in argv)
    with reported_as_one_line(debug):
        argv = check_launch(argv, dict(os.environ))
        if _wants_preflight(argv):
            preflight(argv)
    sys.argv[1:] = argv
    _run_job()
