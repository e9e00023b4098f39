"""Evaluate a finished run or any causal LM on benchmarks, or a classifier on another labelled file:

    python -m ftexp.evaluate <run dir | exported dir | model dir | Hub id | model=<option>> \
        eval.tasks=[a,b] [eval.key=value ...]
    python -m ftexp.evaluate <classifier or regressor run dir> data.path=<labelled file>

Benchmarks run through lm-evaluation-harness (the `eval` group's keys: src/ftexp/config/evaluation.py;
a run dir starts from the eval settings it trained with). The scores go where the report finds
them: into the run dir itself (metrics.json's eval/<task>/<metric>, eval/results.json,
eval/<task>.jsonl), or, for a model outside any run (the baseline a comparison needs), into an
eval dir (-o, default outputs/evals/<date>_<time>_<name>) that the report reads like a run: its
config.yaml names the model, its group is `base:<model>`.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ftexp.runs import run_dir
from ftexp.runs.console import quiet_third_party
from ftexp.runs.errors import ConfigError, FtexpError, did_you_mean, reported_as_one_line


def parse_overrides(items: list[str]) -> tuple[DictConfig, str | None]:
    """(eval overrides, data.path) from `key=value` arguments."""
    allowed = ("eval.", "data.path")
    dotlist = []
    for item in items:
        key, sep, _ = item.partition("=")
        key = key.lstrip("+")
        if not sep:
            raise ConfigError(f"'{item}' is not key=value; e.g. eval.tasks=[ftexp_colours_mc].")
        if key == "eval":
            continue  # eval=lm_eval: what this command runs anyway
        if not key.startswith(allowed):
            raise ConfigError(f"'{key}' cannot be set here: ftexp.evaluate takes eval.<key>=…, "
                              "and data.path=<file>.")
        dotlist.append(item.lstrip("+"))
    parsed = OmegaConf.from_dotlist(dotlist)
    data_path = (parsed.get("data") or {}).get("path")
    return OmegaConf.create({"eval": parsed.get("eval") or {}}), data_path


def eval_settings(saved: Any, overrides: DictConfig) -> DictConfig:
    """The eval group: the schema's defaults, what the run trained with, the overrides; checked."""
    from omegaconf.errors import ConfigKeyError, ValidationError

    from ftexp.config.evaluation import EvalConfig
    from ftexp.config.validation import bad_value_message

    settings = OmegaConf.structured(EvalConfig)
    try:
        merged = OmegaConf.merge(settings, saved or {}, overrides.eval, {"name": "lm_eval"})
    except ConfigKeyError as err:
        key = str(err.key)
        hint = did_you_mean(key, list(settings.keys()), "eval.")
        raise ConfigError(f"unknown config key 'eval.{key}'.{hint}") from err
    except ValidationError as err:
        raise ConfigError(bad_value_message(err)) from err
    EvalConfig.check(merged)
    return merged


def _default_out(name: str) -> Path:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name or name).strip("_") or "model"
    return Path("outputs") / "evals" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{stem}"


def _write_eval_dir(out: Path, target: Any, ev: DictConfig) -> None:
    """config.yaml of an eval dir: ftexp's composed config naming the evaluated model."""
    from ftexp.evaluation.targets import compose_config

    model = ([target.name] if target.model is not None else
             [f"model.name_or_path={target.name}", "model.random_init=null", "model.tokenizer=null"])
    out.mkdir(parents=True, exist_ok=True)
    cfg = compose_config([*model, "task=causal_lm", "eval=lm_eval",
                          f"group='base:{target.name}'", f"paths.output_dir={out.resolve()}"])
    OmegaConf.set_struct(cfg, False)
    cfg.eval = ev
    run_dir.write_config(out, cfg)


def _merge_metrics(out: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    path = out / run_dir.METRICS_FILE
    saved = json.loads(path.read_text()) if path.is_file() else {}
    merged = {**saved, **metrics}
    run_dir.write_json(path, merged)
    return merged


def evaluate_target(target_text: str, overrides: list[str],
                    out: Path | None = None) -> tuple[Path, dict[str, float]]:
    """Evaluate as the command line says; return (where the scores went, the new metrics)."""
    from ftexp.evaluation import harness
    from ftexp.evaluation.targets import describe, load_language_model

    eval_overrides, data_path = parse_overrides(overrides)
    target = describe(target_text)
    if data_path is not None:
        from ftexp.evaluation.labelled import score_file

        if target.run is None:
            raise FtexpError("data.path= scores a classifier or regressor run: give its run dir.")
        if not Path(data_path).is_file():
            raise FtexpError(f"data file '{data_path}' does not exist; check data.path.")
        out = out or target.run
        metrics = score_file(target.run, Path(data_path), out)
        _merge_metrics(out, metrics)
        return out, metrics
    if target.config is not None:
        from ftexp.tasks.registry import get_task

        spec = get_task(target.config.task.name)
        if not spec.language_model:
            raise FtexpError(f"'{target.run}' is a task={spec.name} run: score it on a labelled file "
                             "with data.path=<file>; eval.tasks=[...] scores language models.")
    ev = eval_settings(target.config.get("eval") if target.config is not None else None, eval_overrides)
    manager = harness.check_tasks(ev)  # before any weights load
    network, tokenizer = load_language_model(target, ev)
    out = out or target.run or _default_out(target.name)
    if target.run is None and not (out / run_dir.CONFIG_FILE).is_file():
        _write_eval_dir(out, target, ev)
    chat = harness.uses_chat_template(ev, target.config.data if target.config is not None else None)
    metrics = harness.evaluate(network, tokenizer, ev, out, chat=chat, model_name=target.name,
                               mixed_precision=target.mixed_precision, manager=manager)
    extra = {} if target.run is not None else {"kind": "evaluation", "model": target.name,
                                               "group": f"base:{target.name}"}
    _merge_metrics(out, {**extra, **metrics})
    return out, metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ftexp-evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("target", help="a run dir, an exported or other model dir, or a Hub id")
    parser.add_argument("overrides", nargs="*", help="eval.<key>=<value> ..., or data.path=<labelled file>")
    parser.add_argument("-o", "--out", type=Path, default=None,
                        help="where the scores go (default: the run dir; else outputs/evals/<date>_<name>)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)
    with reported_as_one_line(args.debug):
        quiet_third_party()
        out, metrics = evaluate_target(args.target, args.overrides, args.out)
        for key, value in sorted(metrics.items()):
            if not key.endswith("_stderr"):
                print(f"{key}: {value:.4f}")
        print(f"scores written to {out}")


if __name__ == "__main__":
    from ftexp.runs.process import run_command

    run_command(main)  # main() reads sys.argv; then exits without the interpreter's teardown
