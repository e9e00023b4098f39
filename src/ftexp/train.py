"""The training job as a recipe read top to bottom: validated config in, fine-tuned model and its
metrics out (in the run dir).

    Recipe(cfg).setup()      model type, tokenizer, the task's data and module, the trainer,
                             cached embeddings, batch size and learning rate
              .fit()         Lightning's fit; always ends with a validation and a checkpoint
              .test()        the best weights on the test split, and the predictions file
              .evaluate()    benchmarks of the `eval` group (lm-evaluation-harness) on them
              .summarize()   metrics.json from the pieces that report something

Each stage returns one thing. The task's registry entry (ftexp.tasks.registry) says what the
task is; its class (`from_config`) builds its DataModule and callbacks.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from ftexp.runs import run_dir
from ftexp.runs.console import print_config_tree, print_metrics_table, quiet_third_party
from ftexp.runs.errors import FtexpError
from ftexp.runs.paths import project_root
from ftexp.tasks.registry import get_task

log = logging.getLogger(__name__)


class Reports(Protocol):
    """A part of the run (callback, task, DataModule) that adds to metrics.json."""

    def summary(self) -> dict[str, Any]: ...


def _plain(node: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]


def task_settings(cfg: DictConfig) -> dict[str, Any]:
    """The groups a task keeps in its checkpoint (see tasks/base.py)."""
    return {group: _plain(cfg[group]) for group in
            ("model", "adapter", "task", "scheduler", "optimizer", "quant", "generation")}


def _logger_run(cfg: DictConfig) -> dict[str, Any]:
    """What the loggers record about the run besides their own settings (the builders take plain
    values): the resolved config (secrets redacted, as in config.yaml), the task, the sweep trial,
    and the chosen group options."""
    from hydra.core.hydra_config import HydraConfig

    choices = OmegaConf.to_container(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    return {"config": _plain(run_dir.redacted_config(cfg)), "task": cfg.task.name, "group": cfg.group,
            "study_name": cfg.trial.study_name, "trial_number": cfg.trial.number, "choices": choices}


def build_trainer(cfg: DictConfig, out: Path, monitor: str, mode: str, extra_callbacks: list[Any],
                  model_type: str | None = None):
    """The Lightning Trainer with ftexp's callbacks, the user's (`callbacks.extra`) and the loggers."""
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
    from ftexp.callbacks import build_extra_callbacks
    from ftexp.callbacks.compile import CompileNetwork
    from ftexp.callbacks.final_validation import ValidateAtMaxSteps
    from ftexp.runs.checkpoints import AtomicCheckpointIO

    t, c = cfg.trainer, cfg.callbacks
    callbacks: list[Any] = [*extra_callbacks, ValidateAtMaxSteps()]
    if c.checkpoint:
        callbacks.append(ModelCheckpoint(dirpath=out / "checkpoints", filename="best",
                                         monitor=monitor, mode=mode, save_weights_only=True,
                                         enable_version_counter=False))
    if c.early_stopping_patience is not None:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=c.early_stopping_patience,
                                       min_delta=c.early_stopping_min_delta))
    if t.compile:
        callbacks.append(CompileNetwork())
    if c.rich_progress and t.enable_progress_bar:
        callbacks.append(RichProgressBar(leave=True))
    callbacks += build_extra_callbacks(_plain(c.extra))
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


class Recipe:
    """One training run. Attributes are filled stage by stage; read the stages in order."""

    def __init__(self, cfg: DictConfig):
        from ftexp.runs.seeds import run_group

        if cfg.group is None:  # what runs differing only by seed share: in config.yaml and metrics.json
            cfg.group = run_group(cfg)
        self.cfg = cfg
        self.spec = get_task(cfg.task.name)
        self.out = Path(cfg.paths.output_dir)
        self.reporters: list[Reports] = []  # what adds to metrics.json, besides fit and test
        # Filled by setup() and fit(), in this order.
        self.model_type: str | None = None
        self.datamodule: Any = None
        self.task: Any = None
        self.trainer: Any = None
        self.tuned: dict[str, Any] = {}
        self.best_path = ""
        self.tokenizer: Any = None
        self.eval_tasks: Any = None  # the harness's TaskManager, checked before the model loads
        self.fit_seconds = 0.0
        # data.cache_encoder_embeddings: seconds to get the embeddings before fit (the encoder
        # pass on a cache miss, reading them on a hit); None otherwise.
        self.embedding_seconds: float | None = None

    # -- setup ------------------------------------------------------------------------------------

    def setup(self) -> Any:
        """Everything fit needs, checked before the model loads; returns the trainer."""
        import lightning as L

        from ftexp.callbacks.nonfinite import NonFiniteGuard
        from ftexp.callbacks.optuna_pruning import OptunaPruning
        from ftexp.callbacks.resume import ResumeCheckpoint
        from ftexp.callbacks.throughput import ThroughputMonitor

        cfg = self.cfg
        self.model_type = self._setup_model_type()  # refuses a bad config before anything is written
        if cfg.eval.name != "none":
            from ftexp.evaluation.harness import check_tasks

            self.eval_tasks = check_tasks(cfg.eval)
        self._write_run_files()
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        self.tokenizer = tokenizer = self._setup_tokenizer()
        parts = self.spec.task_class().from_config(cfg, task_settings(cfg), tokenizer, self.out)
        self.datamodule, self.task = parts.datamodule, parts.task

        c = cfg.callbacks
        resume_saver = (ResumeCheckpoint(self.out / "checkpoints", c.resume_every_n_steps,
                                         c.resume_every_minutes)
                        if c.resume_every_n_steps or c.resume_every_minutes else None)
        reporting = [ThroughputMonitor(), OptunaPruning(_plain(cfg.trial)),  # pruning: sweep trials only
                     NonFiniteGuard(c.on_nonfinite, c.nonfinite_max_skips, resume_saver)]
        own = [*parts.callbacks, *([resume_saver] if resume_saver else []), *reporting]
        self.trainer = build_trainer(cfg, self.out, cfg.task.monitor, cfg.task.monitor_mode, own,
                                     self.model_type)
        self.reporters = [*reporting, self.task, self.datamodule]
        if cfg.data.cache_encoder_embeddings:
            self._setup_cached_embeddings(str(self.trainer.precision))
        self.task.before_fit(cfg, self.trainer, self.datamodule)
        self.tuned = self._setup_batch_size_and_learning_rate()
        return self.trainer

    def _write_run_files(self) -> None:
        from lightning.pytorch.utilities import rank_zero_only

        self.out.mkdir(parents=True, exist_ok=True)
        if rank_zero_only.rank == 0:  # in multi-process runs, rank zero alone prints and writes
            print_config_tree(run_dir.redacted_config(self.cfg))
            run_dir.write_config(self.out, self.cfg)
            run_dir.write_json(self.out / run_dir.ENVIRONMENT_FILE, run_dir.environment(project_root()))

    def _setup_model_type(self) -> str:
        """The architecture, read from its config (no weights), and the checks that need it."""
        from ftexp.builders.backbone import checkpoint_quantization, model_type_of
        from ftexp.builders.init_from import inherit_settings
        from ftexp.config.rules import check_model_fit, check_prequantized

        m = self.cfg.model
        inherit_settings(m)  # model.init_from: its absolute path, the earlier run's tokenizer
        model_type = model_type_of(m.name_or_path, _plain(m.random_init) if m.random_init else None,
                                   trust_remote_code=m.trust_remote_code, revision=m.revision)
        check_model_fit(self.cfg, model_type)
        check_prequantized(self.cfg, checkpoint_quantization(
            m.name_or_path, _plain(m.random_init) if m.random_init else None,
            trust_remote_code=m.trust_remote_code, revision=m.revision))
        return model_type

    def _setup_tokenizer(self) -> Any:
        from ftexp.builders.backbone import load_tokenizer

        m = self.cfg.model
        return load_tokenizer(m.tokenizer or m.name_or_path, trust_remote_code=m.trust_remote_code,
                              revision=m.revision, chat_template=m.chat_template,
                              added_tokens=list(m.add_special_tokens))

    def _setup_cached_embeddings(self, precision: str) -> None:
        """Train the head on stored encoder embeddings, computing them (once per key) if needed."""
        import torch

        from ftexp.builders.strategy import precompute_device
        from ftexp.data.cache import ContentCache
        from ftexp.data.embeddings import embed_rows, embedding_key
        from ftexp.data.rows import rows_loader

        cfg, datamodule, task = self.cfg, self.datamodule, self.task
        cache = ContentCache(cfg.paths.cache_dir, "embeddings")
        key = embedding_key(datamodule.encoding_key, _plain(cfg.model), _plain(cfg.quant),
                            cfg.task.pooling, precision, cfg.paths.cache_dir)
        device, autocast = precompute_device(self.trainer)

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

        started = time.perf_counter()
        embeddings = cache.get_or_compute(key, compute, "encoder embeddings")
        self.embedding_seconds = time.perf_counter() - started
        datamodule.use_embeddings(embeddings, cache)

    def _setup_batch_size_and_learning_rate(self) -> dict[str, Any]:
        """Resolve `batch_size: auto` and the learning rate (a number, auto or find) on the real
        setup, batch size first (the best rate depends on it); return what was chosen. A resumed
        run reads back what its first start chose."""
        import json

        from ftexp.runs.tuning import configured_learning_rate, find_batch_size, find_learning_rate

        cfg, trainer, task, datamodule = self.cfg, self.trainer, self.task, self.datamodule
        tuned_file = self.out / run_dir.TUNED_FILE
        if cfg.resume and tuned_file.is_file():
            tuned = json.loads(tuned_file.read_text())
            # Lightning's tuners set these same attributes; a resumed run restores their result.
            datamodule.batch_size, task.learning_rate = tuned["batch_size"], tuned["learning_rate"]
            return tuned
        configured = configured_learning_rate(cfg.optimizer.learning_rate, cfg.adapter.method,
                                              trainer.world_size, cfg.scheduler.learning_rate_scaling)
        # The batch-size search takes optimizer steps; with `find` any rate serves until it is found.
        task.learning_rate = configured if configured is not None else 1e-7
        if cfg.data.batch_size == "auto":
            find_batch_size(trainer, task, datamodule, cfg.data.max_batch_size)
        if configured is None:
            plot = self.out / run_dir.LR_FIND_PLOT
            task.learning_rate = find_learning_rate(trainer, task, datamodule, plot)
        tuned = {"batch_size": datamodule.batch_size, "learning_rate": task.learning_rate}
        if trainer.is_global_zero:
            run_dir.write_json(tuned_file, tuned)
        return tuned

    # -- fit --------------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train; return the validation metrics and the best score (the best checkpoint's path is
        kept in `self.best_path`)."""
        cfg, trainer = self.cfg, self.trainer
        resume_from = None
        if cfg.resume:
            from ftexp.runs.checkpoints import resume_checkpoint

            resume_from = resume_checkpoint(Path(cfg.resume))
            log.info("resuming from %s", resume_from)
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        started = time.perf_counter()
        try:
            trainer.fit(self.task, datamodule=self.datamodule, ckpt_path=resume_from, weights_only=True)
        except SIGTERMException as stop:
            raise FtexpError(self._stopped_message()) from stop
        self.fit_seconds = time.perf_counter() - started
        # Lightning also reports `*_step` / `*_epoch` twins of step-logged values; keep the plain ones.
        metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items()
                                   if k.startswith(("train/", "train_eval/", "val/"))
                                   and not k.endswith(("_step", "_epoch"))}
        checkpoint = trainer.checkpoint_callback
        self.best_path = checkpoint.best_model_path if checkpoint is not None else ""
        if self.best_path:
            metrics[f"best/{cfg.task.monitor}"] = float(checkpoint.best_model_score)
        return metrics

    def _stopped_message(self) -> str:
        from ftexp.callbacks.resume import ResumeCheckpoint

        saver = next((c for c in self.trainer.callbacks if isinstance(c, ResumeCheckpoint)), None)
        where = f"stopped (SIGTERM) at step {self.trainer.global_step}"
        if saver is None or saver.saved_step is None:
            return (f"{where}, before any resume checkpoint was saved (callbacks.resume_every_n_steps / "
                    "resume_every_minutes): nothing to continue from; start it again.")
        return (f"{where}; checkpoints/last.ckpt holds step {saver.saved_step}: continue with "
                f"python -m ftexp resume={self.out}")

    # -- test -------------------------------------------------------------------------------------

    def test(self) -> dict[str, float]:
        """Test-split metrics of the best weights, and the predictions file. After a multi-process
        fit this runs on one device: a distributed sampler would split and pad the test rows across
        ranks, and sharded strategies have wrapped the task's modules in place, so the task is
        rebuilt from the (consolidated) checkpoint."""
        import lightning as L

        from ftexp.predict import load_trained, write_predictions

        cfg, trainer, task, datamodule, best_path = (self.cfg, self.trainer, self.task, self.datamodule,
                                                     self.best_path)
        if not len(datamodule.datasets["test"]):
            return {}
        tester, ckpt = trainer, best_path or None
        if trainer.world_size > 1:
            if best_path:
                task, _, _ = load_trained(self.out, str(Path(best_path).relative_to(self.out)))
            elif cfg.strategy.name != "ddp":
                log.warning("no checkpoint to rebuild the sharded model from (callbacks.checkpoint=false): "
                            "skipping the test split")
                return {}
            tester, ckpt = L.Trainer(accelerator=cfg.trainer.accelerator, devices=1,
                                     precision=trainer.precision, logger=False, enable_checkpointing=False,
                                     enable_model_summary=False,
                                     enable_progress_bar=cfg.trainer.enable_progress_bar), None
        results = tester.test(task, datamodule=datamodule, ckpt_path=ckpt, verbose=False, weights_only=True)
        if self.spec.predicts:
            write_predictions(self.out / run_dir.PREDICTIONS_FILE, datamodule.frames["test"], task,
                              task.test_predictions)
        return {k: float(v) for k, v in results[0].items()}

    # -- evaluate ---------------------------------------------------------------------------------

    def evaluate(self, tested: bool) -> dict[str, float]:
        """The `eval` group's benchmarks on the best weights, in process, on the training device and
        precision; `tested`: test() left the best weights in the task already."""
        cfg = self.cfg
        if cfg.eval.name == "none":
            return {}
        from ftexp.builders.strategy import autocast_dtype
        from ftexp.data.causal_lm import decoder_tokenizer
        from ftexp.evaluation.harness import evaluate, evaluation_network, uses_chat_template
        from ftexp.evaluation.targets import device as evaluation_device
        from ftexp.predict import load_checkpoint, load_trained

        task = self.task
        if self.trainer.world_size > 1 and self.best_path:  # sharded in place: rebuild on one device
            task = load_trained(self.out, str(Path(self.best_path).relative_to(self.out)))[0]
        elif self.best_path and not tested:
            task.load_trained_state(load_checkpoint(Path(self.best_path))["state_dict"])
        device = self.trainer.strategy.root_device if self.trainer.world_size == 1 else evaluation_device()
        # The run is over: merging (eval.merge_adapter) leaves its saved weights as trained.
        network = evaluation_network(task.network, cfg.eval, cfg.quant.method != "none", device)
        mixed = autocast_dtype(self.trainer.precision)
        log.info("evaluating %s on %s", ", ".join(cfg.eval.tasks), device)
        return evaluate(network, decoder_tokenizer(self.tokenizer), cfg.eval, self.out,
                        manager=self.eval_tasks,
                        chat=uses_chat_template(cfg.eval, cfg.data), mixed_precision=mixed,
                        model_name=f"run {self.out.name} ({cfg.model.name_or_path})")

    def leave_process_group(self) -> bool:
        """End the multi-process part of a run: rank zero turns a sharded best checkpoint into one
        file, then every rank leaves the process group (so rank zero's single-device test syncs with
        no one). True on rank zero."""
        import torch.distributed as dist

        from ftexp.runs.checkpoints import consolidate

        trainer, task = self.trainer, self.task
        zero = trainer.is_global_zero
        if zero and self.best_path:
            consolidate(Path(self.best_path), task.trainable_names() if task.saves_trainable_only else None)
        trainer.strategy.barrier("consolidated")
        if dist.is_initialized():
            dist.destroy_process_group()
        return zero

    # -- summarize --------------------------------------------------------------------------------

    def summarize(self, fit_metrics: dict[str, Any], test_metrics: dict[str, float]) -> dict[str, Any]:
        """metrics.json: fit and test metrics, then what each part of the run reports."""
        metrics = {**fit_metrics, **test_metrics}
        for part in self.reporters:
            metrics.update(part.summary())
        metrics.update(self.tuned)
        if self.best_path:
            metrics["checkpoint_mb"] = round(Path(self.best_path).stat().st_size / 2**20, 3)
        metrics["fit_seconds"] = round(self.fit_seconds, 2)
        if self.embedding_seconds is not None:  # spent before fit, so not in fit_seconds
            metrics["embedding_seconds"] = round(self.embedding_seconds, 4)
        metrics["train_samples"] = self.datamodule.num_train_samples
        metrics["global_steps"] = self.trainer.global_step
        metrics["group"], metrics["seed"] = self.cfg.group, self.cfg.seed  # what reports group runs by
        run_dir.write_json(self.out / run_dir.METRICS_FILE, metrics)
        print_metrics_table(metrics)
        log.info("run directory: %s", self.out)
        return metrics


def _train(cfg: DictConfig) -> dict[str, Any]:
    quiet_third_party()
    recipe = Recipe(cfg)
    trainer = recipe.setup()
    fit_metrics = recipe.fit()
    if trainer.world_size > 1 and not recipe.leave_process_group():
        return fit_metrics  # ranks other than zero are done: rank zero tests and writes
    test_metrics = recipe.test()
    return recipe.summarize(fit_metrics, {**test_metrics, **recipe.evaluate(tested=bool(test_metrics))})


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fine-tune as `cfg` says; write config, checkpoint, metrics and predictions to the run dir;
    return the metrics. W&B runs the job opened are finished even when it fails (exit code 1
    there), with the final metrics in their summary."""
    from ftexp.builders.loggers import closing_loggers

    with closing_loggers() as loggers:
        metrics = _train(cfg)
        loggers.result(metrics)
        return metrics
