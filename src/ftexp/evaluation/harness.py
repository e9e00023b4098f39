"""lm-evaluation-harness on a network in memory: the task checks made before any model loads, the
evaluation itself (lm-eval's HFLM wrapping the network, so nothing is exported or reloaded), and
the score files the report reads.

Written where a run's scores go (a run dir, or the eval dir of `ftexp.evaluate`):
    metrics.json          eval/<task>/<metric> and eval/<task>/<metric>_stderr
    eval/results.json     per task: version, few-shot count, limit, item count, output type,
                          scores, stderrs and which way each metric is better
    eval/<task>.jsonl     one record per item: doc_id, its score under each metric, and lm-eval's
                          sample fields (doc, target, arguments, resps, filtered_resps, doc_hash)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ftexp.runs import atomic, run_dir
from ftexp.runs.errors import ConfigError, FtexpError, did_you_mean

log = logging.getLogger(__name__)

SHIPPED_TASKS = Path(__file__).resolve().parent / "tasks"
EVAL_DIR = "eval"
RESULTS_FILE = "results.json"
# datasets' packaged builders: they read local files and need no network.
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow", "pandas")
CONVERSATION_FORMATS = ("conversational", "sharegpt", "unpaired_conversational", "unpaired_messages")


def require_harness() -> Any:
    try:
        import lm_eval
    except ImportError as err:
        raise FtexpError("eval=lm_eval needs lm-evaluation-harness, which is not installed: "
                         "pip install 'ftexp[eval]'.") from err
    return lm_eval


def harness_version() -> str:
    from importlib.metadata import version

    return f"lm-eval {version('lm_eval')}"


def _task_manager(names: list[str], include_path: str | None) -> Any:
    """lm-eval's TaskManager over ftexp's shipped tasks and `include_path`; lm-eval's own ~15,000
    task YAMLs are indexed (about 5 s) only when a name is not found among those."""
    from lm_eval.tasks import TaskManager

    paths = [str(SHIPPED_TASKS), *([include_path] if include_path else [])]
    own = TaskManager(include_path=paths, include_defaults=False)
    if all(name in own.all_tasks for name in names):
        return own
    return TaskManager(include_path=paths)


def _check_yaml_files(include_path: str) -> None:
    from lm_eval.tasks._yaml_loader import load_yaml

    for path in sorted(Path(include_path).rglob("*.yaml")):
        try:
            load_yaml(path, resolve_func=False, recursive=False)
        except Exception as err:  # yaml.YAMLError and whatever the loader's constructors raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"task YAML '{path}' does not parse ({first}); fix it or remove it "
                              "from eval.include_path.") from err


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _check_reachable(name: str, cfg: dict[str, Any]) -> None:
    """Offline, a task reading a Hub dataset needs it in the local datasets cache."""
    path = cfg.get("dataset_path")
    if cfg.get("custom_dataset") or not path or path in LOCAL_BUILDERS or Path(path).exists():
        return
    import datasets

    try:
        datasets.load_dataset_builder(path, cfg.get("dataset_name"))
    except Exception as err:  # ConnectionError, FileNotFoundError, …: the data are not here
        raise ConfigError(f"eval task '{name}' reads the Hub dataset '{path}', which is not in the "
                          "local datasets cache and cannot be fetched offline: run once with the "
                          "network, or copy its YAML into eval.include_path with `dataset_path: json` "
                          "and `dataset_kwargs: {data_files: {test: <local file>}}`.") from err


def check_tasks(ev: DictConfig) -> Any:
    """Refuse, in one line, what would fail only after training: the harness missing, a task YAML
    that does not parse, an unknown task name, a task whose data cannot be reached offline.
    Returns the TaskManager that knows the tasks."""
    require_harness()
    if ev.include_path:
        _check_yaml_files(ev.include_path)
    names = [str(name) for name in ev.tasks]
    manager = _task_manager(names, ev.include_path)
    for name in names:
        if name not in manager.all_tasks:
            raise ConfigError(f"unknown eval task '{name}'.{did_you_mean(name, manager.all_tasks)} "
                              "See `lm_eval ls tasks`, or add your own with eval.include_path=<folder>.")
    if _offline():
        for name in names:
            entry = manager.task_index[name]
            if entry.cfg:
                _check_reachable(name, entry.cfg)
    return manager


def uses_chat_template(ev: DictConfig, data: DictConfig | None) -> bool:
    """eval.apply_chat_template, with auto on when the run trained on conversations."""
    if ev.apply_chat_template != "auto":
        return bool(ev.apply_chat_template)
    if data is None:
        return False
    preference = data.get("preference") or {}
    return data.get("messages_column") is not None or preference.get("format") in CONVERSATION_FORMATS


def evaluation_network(network: Any, ev: DictConfig, quantized: bool, device: Any) -> Any:
    """The trained network as the harness scores it: the PEFT model, or a copy with the adapter
    merged in (eval.merge_adapter; never into a k-bit base, where merging rounds), on `device`, in
    eval mode."""
    if ev.merge_adapter and hasattr(network, "merge_and_unload") and not quantized:
        network = network.merge_and_unload()
    return network.to(device).eval()


def evaluate(network: Any, tokenizer: Any, ev: DictConfig, out: Path, *, chat: bool, model_name: str,
             mixed_precision: Any = None, manager: Any = None) -> dict[str, float]:
    """Run the harness on `network` (a transformers or PEFT causal LM, already on its device), write
    the score files under `out` and return the metrics.json entries."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    manager = manager or check_tasks(ev)
    lm = HFLM(pretrained=network, tokenizer=tokenizer, batch_size=ev.batch_size,
              max_batch_size=ev.max_batch_size, mixed_precision_dtype=mixed_precision)
    gen_kwargs = OmegaConf.to_container(ev.gen_kwargs) if ev.gen_kwargs else None
    results = lm_eval.simple_evaluate(
        model=lm, tasks=[str(t) for t in ev.tasks], num_fewshot=ev.num_fewshot,
        limit=ev.limit, log_samples=ev.log_samples, bootstrap_iters=ev.bootstrap_iters,
        apply_chat_template=chat, fewshot_as_multiturn=chat and ev.fewshot_as_multiturn,
        gen_kwargs=gen_kwargs, task_manager=manager,
        # lm-eval's own defaults (its CLI's --seed 0,1234,1234,1234), the few-shot one configurable
        random_seed=0, numpy_random_seed=ev.seed, torch_random_seed=ev.seed, fewshot_random_seed=ev.seed)
    return write_results(out, results, model_name, ev.limit)


def _name(metric_key: str, filters: set[str]) -> tuple[str, str]:
    """lm-eval's "acc,none" → ("acc", "none"); a task with several filters keeps them apart."""
    metric, _, filter_name = metric_key.partition(",")
    return (metric if len(filters) <= 1 else f"{metric}@{filter_name}"), filter_name


def _task_scores(scores: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    filters = {k.partition(",")[2] for k in scores if "," in k}
    values, stderrs = {}, {}
    for key, value in scores.items():
        if "," not in key or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue  # alias, sample counts, "N/A" stderrs
        name, _ = _name(key, filters)
        if name.endswith("_stderr") or "_stderr@" in name:
            stderrs[name.replace("_stderr", "")] = float(value)
        else:
            values[name] = float(value)
    return values, stderrs


def _item_records(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per item, its score under every (metric, filter) of the task."""
    filters = {s.get("filter", "none") for s in samples}
    records: dict[int, dict[str, Any]] = {}
    for sample in samples:
        record = records.setdefault(int(sample["doc_id"]), {
            k: v for k, v in sample.items() if k not in sample.get("metrics", [])})
        for metric in sample.get("metrics", []):
            name, _ = _name(f"{metric},{sample.get('filter', 'none')}", filters)
            record[name] = sample[metric]
    return [records[k] for k in sorted(records)]


def record_tasks(folder: Path, entries: dict[str, dict[str, Any]], model_name: str,
                 harness: str | None = None) -> None:
    """Add (or replace) these tasks' entries in `folder`/results.json, keeping the other tasks';
    `harness`: who scored them (None: leave what the file says)."""
    path = folder / RESULTS_FILE
    saved = json.loads(path.read_text()) if path.is_file() else {}
    scorer = harness or saved.get("harness", "ftexp")
    run_dir.write_json(path, {**saved, "harness": scorer, "model": model_name,
                              "tasks": {**saved.get("tasks", {}), **entries}})


def write_results(out: Path, results: dict[str, Any], model_name: str, limit: Any) -> dict[str, float]:
    from lm_eval.utils import handle_non_serializable

    folder = out / EVAL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tasks: dict[str, dict[str, Any]] = {}
    metrics: dict[str, float] = {}
    for task, scores in results["results"].items():
        values, stderrs = _task_scores(scores)
        n = (results.get("n-samples") or {}).get(task) or {}
        higher = (results.get("higher_is_better") or {}).get(task) or {}
        tasks[task] = {"version": (results.get("versions") or {}).get(task),
                       "num_fewshot": (results.get("n-shot") or {}).get(task),
                       "limit": limit, "n_samples": n.get("effective"),
                       "output_type": ((results.get("configs") or {}).get(task) or {}).get("output_type"),
                       "metrics": values, "stderr": stderrs,
                       "higher_is_better": {m: bool(higher.get(m.partition("@")[0], True)) for m in values}}
        for metric, value in values.items():
            metrics[f"eval/{task}/{metric}"] = value
            if metric in stderrs:
                metrics[f"eval/{task}/{metric}_stderr"] = stderrs[metric]
    for task, samples in (results.get("samples") or {}).items():
        lines = "".join(json.dumps(r, default=handle_non_serializable) + "\n" for r in _item_records(samples))
        atomic.write_text(folder / f"{task}.jsonl", lines)
    record_tasks(folder, tasks, model_name, harness_version())
    return metrics
