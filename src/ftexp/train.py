"""The training job: validated config in, fine-tuned model and its metrics out (in the run dir)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ftexp import run_dir
from ftexp.console import print_config_tree, print_metrics_table, quiet_third_party
from ftexp.paths import project_root

log = logging.getLogger(__name__)


def _plain(node: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]


def _logger_run(cfg: DictConfig) -> dict[str, Any]:
    """What the loggers record about the run besides their own settings (the builders take plain
    values): the resolved config (secrets redacted, as in config.yaml), the task, the sweep trial,
    and the chosen group options."""
    from hydra.core.hydra_config import HydraConfig

    choices = OmegaConf.to_container(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    return {"config": _plain(run_dir.redacted_config(cfg)), "task": cfg.task.name,
            "study_name": cfg.trial.study_name, "trial_number": cfg.trial.number, "choices": choices}


def build_trainer(cfg: DictConfig, out: Path, monitor: str, mode: str, extra_callbacks: list[Any],
                  model_type: str | None = None):
    import lightning as L
    from lightning.pytorch.callbacks import (
        EarlyStopping,
        LearningRateMonitor,
        ModelCheckpoint,
        RichProgressBar,
    )

    from ftexp.builders.loggers import build_loggers
    from ftexp.builders.strategy import (
        build_strategy,
        launched_processes,
        resolve_precision,
        transformer_block_classes,
    )
    from ftexp.callbacks.compile import CompileNetwork
    from ftexp.callbacks.nonfinite import NonFiniteGuard
    from ftexp.callbacks.resume import ResumeCheckpoint
    from ftexp.checkpoints import AtomicCheckpointIO

    t, c = cfg.trainer, cfg.callbacks
    callbacks: list[Any] = list(extra_callbacks)
    if c.checkpoint:
        callbacks.append(ModelCheckpoint(dirpath=out / "checkpoints", filename="best",
                                         monitor=monitor, mode=mode, save_weights_only=True,
                                         enable_version_counter=False))
    if c.early_stopping_patience is not None:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=c.early_stopping_patience,
                                       min_delta=c.early_stopping_min_delta))
    if c.resume_every_n_steps or c.resume_every_minutes:
        resume_saver = ResumeCheckpoint(out / "checkpoints", c.resume_every_n_steps, c.resume_every_minutes)
        callbacks.append(resume_saver)
    else:
        resume_saver = None
    callbacks.append(NonFiniteGuard(c.on_nonfinite, c.nonfinite_max_skips, resume_saver))
    if t.compile:
        callbacks.append(CompileNetwork())
    if cfg.callbacks.rich_progress and t.enable_progress_bar:
        callbacks.append(RichProgressBar(leave=True))
    loggers = build_loggers(_plain(cfg.logger), out, _logger_run(cfg))
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    precision = resolve_precision(t.precision, t.accelerator)
    log.info("precision: %s", precision)
    strategy = _plain(cfg.strategy)
    wraps_blocks = strategy["auto_wrap"] or strategy["activation_checkpointing"]
    blocks = (transformer_block_classes(model_type)
              if strategy["name"] == "fsdp" and wraps_blocks and model_type else None)
    # Under torchrun / SLURM the processes exist already: tell Lightning how many, so it joins
    # them instead of launching its own.
    devices, num_nodes = launched_processes() or (t.devices, t.num_nodes)
    return L.Trainer(
        accelerator=t.accelerator, devices=devices, num_nodes=num_nodes,
        strategy=build_strategy(strategy, blocks), precision=precision,
        max_epochs=t.max_epochs, max_steps=t.max_steps,
        val_check_interval=t.val_check_interval, log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=t.gradient_clip_val, accumulate_grad_batches=t.accumulate_grad_batches,
        limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches,
        limit_test_batches=t.limit_test_batches, deterministic=t.deterministic,
        enable_progress_bar=t.enable_progress_bar, enable_model_summary=False,
        callbacks=callbacks, logger=loggers or False, default_root_dir=out,
        enable_checkpointing=bool(c.checkpoint),  # else Lightning adds its own, unmonitored one
        # DeepSpeed writes its own checkpoint folders; every other strategy writes through ours.
        plugins=[AtomicCheckpointIO()] if strategy["name"] != "deepspeed" else None,
        num_sanity_val_steps=0)


def _labeled_text(cfg: DictConfig, tokenizer: Any, out: Path):
    """DataModule and task for classification / regression, and the run's target description."""
    from ftexp.data.labeled_text import LabeledTextDataModule
    from ftexp.tasks import task_class

    datamodule = LabeledTextDataModule(OmegaConf.to_object(cfg.data), tokenizer, seed=cfg.seed,
                                       task_name=cfg.task.name, cache_dir=cfg.paths.cache_dir)
    datamodule.setup()  # read and check the data before spending time on the model
    target = datamodule.targets.describe()
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank == 0:
        run_dir.write_json(out / run_dir.LABELS_FILE, target)
    task = task_class(target)(target=target, **task_settings(cfg))
    return datamodule, task, []


def task_settings(cfg: DictConfig) -> dict[str, Any]:
    """The groups a task keeps in its checkpoint (see tasks/base.py)."""
    return {group: _plain(cfg[group]) for group in
            ("model", "adapter", "task", "scheduler", "optimizer", "quant", "generation")}


def _use_cached_embeddings(cfg: DictConfig, datamodule: Any, task: Any, precision: str) -> None:
    """Train the head on stored encoder embeddings, computing them (once per key) if needed."""
    import torch

    from ftexp.data.cache import ContentCache
    from ftexp.data.embeddings import embed_rows, embedding_key
    from ftexp.data.rows import rows_loader

    cache = ContentCache(cfg.paths.cache_dir, "embeddings")
    key = embedding_key(datamodule.encoding_key, _plain(cfg.model), _plain(cfg.quant),
                        cfg.task.pooling, precision, cfg.paths.cache_dir)
    use_gpu = cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    autocast = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)

    def compute() -> dict[str, torch.Tensor]:
        task.configure_model()
        network = task.network.to(device)
        # fork_rng: each DataLoader draws a seed from the global generator; computing here must
        # not shift the run's random stream, or a cache miss would train unlike a cache hit.
        with torch.random.fork_rng(devices=[]):
            embeddings = {split: embed_rows(network, rows_loader(rows, cfg.data.eval_batch_size, False,
                                                                 datamodule.collate, 0, cfg.seed),
                                            device, autocast, f"{split} split")
                          for split, rows in datamodule.datasets.items()}
        network.to("cpu")
        return embeddings

    datamodule.use_embeddings(cache.get_or_compute(key, compute, "encoder embeddings"))
    datamodule.embedding_cache = cache


def _language_modeling(cfg: DictConfig, tokenizer: Any, out: Path):
    """DataModule and task for causal_lm / pretrain, with the sample-generation callback."""
    from ftexp.callbacks.sample_generations import SampleGenerations
    from ftexp.data.causal_lm import CausalLMDataModule
    from ftexp.tasks.causal_lm import CausalLMTask

    datamodule = CausalLMDataModule(OmegaConf.to_object(cfg.data), tokenizer, cfg.task.name,
                                    cfg.task.train_on_prompt, seed=cfg.seed, cache_dir=cfg.paths.cache_dir)
    datamodule.setup()
    task = CausalLMTask(**task_settings(cfg))
    prompts = datamodule.validation_prompts(cfg.task.sample_generations)
    callbacks = [SampleGenerations(tokenizer, prompts,
                                   [datamodule.encoder.prompt_ids(p) for p in prompts],
                                   _plain(cfg.generation), out / run_dir.GENERATIONS_FILE)] if prompts else []
    return datamodule, task, callbacks


def _tune(cfg: DictConfig, trainer: Any, task: Any, datamodule: Any, out: Path) -> dict[str, Any]:
    """Resolve `batch_size: auto` and the learning rate (a number, auto or find) on the real
    setup, batch size first (the best rate depends on it); return what was chosen. A resumed run
    reads back what its first start chose."""
    import json

    from ftexp.tuning import configured_learning_rate, find_batch_size, find_learning_rate

    tuned_file = out / run_dir.TUNED_FILE
    if cfg.resume and tuned_file.is_file():
        tuned = json.loads(tuned_file.read_text())
        datamodule.batch_size, task.learning_rate = tuned["batch_size"], tuned["learning_rate"]
        return tuned
    configured = configured_learning_rate(cfg.optimizer.learning_rate, cfg.adapter.method,
                                          trainer.world_size, cfg.scheduler.learning_rate_scaling)
    # The batch-size search takes optimizer steps; with `find` any rate serves until it is found.
    task.learning_rate = configured if configured is not None else 1e-7
    if cfg.data.batch_size == "auto":
        find_batch_size(trainer, task, datamodule, cfg.data.max_batch_size)
    if configured is None:
        task.learning_rate = find_learning_rate(trainer, task, datamodule, out / run_dir.LR_FIND_PLOT)
    tuned = {"batch_size": datamodule.batch_size, "learning_rate": task.learning_rate}
    if trainer.is_global_zero:
        run_dir.write_json(tuned_file, tuned)
    return tuned


def _leave_process_group(trainer: Any, task: Any, best_path: str) -> bool:
    """End the multi-process part of a run: rank zero turns a sharded best checkpoint into one
    file, then every rank leaves the process group (so rank zero's single-device test syncs with
    no one). True on rank zero."""
    import torch.distributed as dist

    from ftexp.checkpoints import consolidate

    zero = trainer.is_global_zero
    if zero and best_path:
        consolidate(Path(best_path), task.trainable_names() if task.saves_trainable_only else None)
    trainer.strategy.barrier("consolidated")
    if dist.is_initialized():
        dist.destroy_process_group()
    return zero


def _test(cfg: DictConfig, trainer: Any, task: Any, datamodule: Any, best_path: str,
          out: Path) -> dict[str, float]:
    """Test-split metrics of the best weights, and the predictions file. After a multi-process fit
    this runs on one device: a distributed sampler would split and pad the test rows across ranks,
    and sharded strategies have wrapped the task's modules in place, so the task is rebuilt from
    the (consolidated) checkpoint."""
    import lightning as L

    from ftexp.predict import load_trained, write_predictions

    if not len(datamodule.datasets["test"]):
        return {}
    tester, ckpt = trainer, best_path or None
    if trainer.world_size > 1:
        if best_path:
            task, _, _ = load_trained(out, str(Path(best_path).relative_to(out)))
        elif cfg.strategy.name != "ddp":
            log.warning("no checkpoint to rebuild the sharded model from (callbacks.checkpoint=false): "
                        "skipping the test split")
            return {}
        tester, ckpt = L.Trainer(accelerator=cfg.trainer.accelerator, devices=1, precision=trainer.precision,
                                 logger=False, enable_checkpointing=False, enable_model_summary=False,
                                 enable_progress_bar=cfg.trainer.enable_progress_bar), None
    results = tester.test(task, datamodule=datamodule, ckpt_path=ckpt, verbose=False, weights_only=True)
    if hasattr(task, "test_predictions"):
        write_predictions(out / run_dir.PREDICTIONS_FILE, datamodule.frames["test"], task,
                          task.test_predictions)
    return {k: float(v) for k, v in results[0].items()}


def _cache_metrics(datamodule: Any, task: Any) -> dict[str, Any]:
    """What the caches did this run, and how many encoder forward passes it took."""
    found: dict[str, Any] = {}
    for name in ("tokenized_cache", "embedding_cache"):
        cache = getattr(datamodule, name, None)
        if cache is not None and cache.events:
            found[f"cache_{cache.kind}"] = cache.events[-1]
    passes = getattr(task.network, "encoder_forward_passes", None)
    if passes is not None:
        found["encoder_forward_passes"] = passes
    return found


def _train(cfg: DictConfig) -> dict[str, Any]:
    """Fine-tune as `cfg` says; write config, checkpoint, metrics and predictions; return metrics."""
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    quiet_third_party()
    import lightning as L
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank == 0:  # in multi-process runs, rank zero alone prints and writes
        print_config_tree(run_dir.redacted_config(cfg))
        run_dir.write_config(out, cfg)
        run_dir.write_json(out / run_dir.ENVIRONMENT_FILE, run_dir.environment(project_root()))

    from ftexp.builders.adapter import validate_adapter
    from ftexp.builders.backbone import load_tokenizer, model_type_of
    from ftexp.builders.quant import quantization_config
    from ftexp.callbacks.optuna_pruning import OptunaPruning
    from ftexp.callbacks.throughput import ThroughputMonitor
    from ftexp.config import LM_TASKS

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    quantization_config(_plain(cfg.quant))  # bitsandbytes present and settings valid
    m = cfg.model
    model_type = model_type_of(m.name_or_path, _plain(m.random_init) if m.random_init else None,
                               trust_remote_code=m.trust_remote_code, revision=m.revision)
    validate_adapter(_plain(cfg.adapter), model_type)
    if cfg.data.packing:
        from ftexp.data.packing import check_packing_supported

        check_packing_supported(model_type)
    tokenizer = load_tokenizer(m.tokenizer or m.name_or_path, trust_remote_code=m.trust_remote_code,
                               revision=m.revision, chat_template=m.chat_template)
    build = _language_modeling if cfg.task.name in LM_TASKS else _labeled_text
    datamodule, task, callbacks = build(cfg, tokenizer, out)
    throughput, pruning = ThroughputMonitor(), OptunaPruning(_plain(cfg.trial))  # pruning: sweep trials only
    trainer = build_trainer(cfg, out, cfg.task.monitor, cfg.task.monitor_mode,
                            [*callbacks, throughput, pruning], model_type)
    if cfg.data.cache_encoder_embeddings:
        _use_cached_embeddings(cfg, datamodule, task, str(trainer.precision))
    datamodule.count_loss_items = task.loss_items
    datamodule.evaluate_training_set = cfg.trainer.evaluate_training_set
    tuned = _tune(cfg, trainer, task, datamodule, out)

    resume_from = None
    if cfg.resume:
        from ftexp.checkpoints import resume_checkpoint

        resume_from = resume_checkpoint(Path(cfg.resume))
        log.info("resuming from %s", resume_from)
    started = time.perf_counter()
    trainer.fit(task, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    fit_seconds = time.perf_counter() - started
    # Lightning also reports `*_step` / `*_epoch` twins of step-logged values; keep the plain ones.
    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items()
                               if k.startswith(("train/", "train_eval/", "val/"))
                               and not k.endswith(("_step", "_epoch"))}
    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if checkpoint is not None else ""
    if best_path:
        metrics[f"best/{cfg.task.monitor}"] = float(checkpoint.best_model_score)

    if trainer.world_size > 1 and not _leave_process_group(trainer, task, best_path):
        return metrics  # ranks other than zero are done: rank zero tests and writes
    metrics.update(_test(cfg, trainer, task, datamodule, best_path, out))

    from ftexp.callbacks.nonfinite import NonFiniteGuard

    guard = next(c for c in trainer.callbacks if isinstance(c, NonFiniteGuard))
    metrics["nonfinite_skipped_steps"] = len(guard.skipped_steps)
    metrics.update(task.parameter_counts)
    metrics.update(tuned)
    metrics.update(throughput.summary())
    metrics.update(pruning.summary())  # pruned: true, pruned_at_step: n when the study pruned it
    metrics.update(_cache_metrics(datamodule, task))
    if best_path:
        metrics["checkpoint_mb"] = round(Path(best_path).stat().st_size / 2**20, 3)
    metrics["fit_seconds"] = round(fit_seconds, 2)
    metrics["train_samples"] = len(datamodule.datasets["train"])
    metrics["global_steps"] = trainer.global_step
    run_dir.write_json(out / run_dir.METRICS_FILE, metrics)
    print_metrics_table(metrics)
    log.info("run directory: %s", out)
    return metrics


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fine-tune as `cfg` says (see `_train`); return metrics. W&B runs the job opened are finished
    even when it fails (exit code 1 there), with the final metrics in their summary."""
    from ftexp.builders.loggers import closing_loggers

    with closing_loggers() as loggers:
        metrics = _train(cfg)
        loggers.result(metrics)
        return metrics
