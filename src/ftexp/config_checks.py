"""Checks a typed config needs beyond its types: contradictions, out-of-range values, and
combinations a task or method cannot serve. Called by `ftexp.config.validate`."""

from __future__ import annotations

from omegaconf import DictConfig

from ftexp.config import LM_TASKS, PROMPT_LEARNING_ADAPTERS
from ftexp.errors import ConfigError


def check_semantics(cfg: DictConfig) -> None:
    """Contradictions and out-of-range values that the types alone cannot catch."""
    data = cfg.data
    if not data.text_columns:
        raise ConfigError("data.text_columns is empty: name at least one text column, "
                          "e.g. data.text_columns=[sentence].")
    if data.split_column is None:
        probs = list(data.split_probabilities)
        if len(probs) != 3 or any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
            raise ConfigError(
                f"data.split_probabilities={probs} must be three non-negative numbers "
                "(train, validation, test) that sum to 1, e.g. [0.9,0.05,0.05]."
            )
        if probs[0] == 0:
            raise ConfigError("data.split_probabilities gives the train split no rows; "
                              "make its first number positive.")
    for key in ("max_length", "max_batch_size", "eval_batch_size"):
        if data[key] < 1:
            raise ConfigError(f"data.{key}={data[key]} must be at least 1.")
    if not (data.batch_size == "auto" or _is_number(data.batch_size, integer=True) and data.batch_size >= 1):
        raise ConfigError(f"data.batch_size={data.batch_size} must be a whole number of at least 1, "
                          "or auto.")
    if data.max_train_samples is not None and data.max_train_samples < 1:
        raise ConfigError(f"data.max_train_samples={data.max_train_samples} must be at least 1 "
                          "(or null for all rows).")
    _check_optimization(cfg)
    _check_strategy(cfg)
    if not 0.0 < cfg.task.threshold < 1.0:
        raise ConfigError(f"task.threshold={cfg.task.threshold} must be in (0, 1).")
    if cfg.data.label_separator == "":
        raise ConfigError("data.label_separator is empty: use null, or a character such as '|'.")
    if cfg.data.label_separator is not None and cfg.task.name == "regression":
        raise ConfigError(f"data.label_separator={cfg.data.label_separator!r} reads several labels per "
                          "row (multi-label classification), but task=regression needs one number per "
                          "row; set data.label_separator=null or use task=classification.")
    if not 0.0 <= cfg.task.head_dropout < 1.0:
        raise ConfigError(f"task.head_dropout={cfg.task.head_dropout} must be in [0, 1).")
    if cfg.model.random_init is not None and "model_type" not in cfg.model.random_init:
        raise ConfigError("model.random_init needs a 'model_type' (e.g. bert, llama) to know "
                          "which architecture to build.")
    if "method" not in cfg.adapter:
        raise ConfigError("adapter.method is missing: choose an adapter, e.g. adapter=lora.")
    if cfg.adapter.method == "freeze" and not (cfg.adapter.get("last_n_layers")
                                               or cfg.adapter.get("trainable_patterns")):
        raise ConfigError("adapter=freeze trains nothing: set adapter.last_n_layers=N or "
                          "adapter.trainable_patterns=[regex,...].")
    if cfg.quant.method != "none" and cfg.adapter.method in ("none", "freeze"):
        raise ConfigError(f"quant={cfg.quant.method} with adapter={cfg.adapter.method}: quantized "
                          "weights cannot be trained directly; use an adapter (e.g. adapter=lora, "
                          "i.e. QLoRA), adapter=frozen, or quant=none.")
    _check_language_modeling(cfg)
    _check_monitor(cfg)
    _check_caches(cfg)
    patience = cfg.callbacks.early_stopping_patience
    if patience is not None and patience < 1:
        raise ConfigError(f"callbacks.early_stopping_patience={patience} must be at least 1 (or null).")
    if cfg.trainer.max_epochs < 1 and cfg.trainer.max_steps < 1:
        raise ConfigError("trainer.max_epochs and trainer.max_steps are both below 1: "
                          "set at least one of them.")


def _is_number(value: object, integer: bool = False) -> bool:
    kinds = (int,) if integer else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool)


def _check_strategy(cfg: DictConfig) -> None:
    from omegaconf import OmegaConf

    from ftexp.builders.strategy import strategy_conflict

    plain = OmegaConf.to_container
    conflict = strategy_conflict(plain(cfg.strategy), plain(cfg.quant), cfg.trainer.accelerator,
                                 cfg.data.batch_size, cfg.optimizer.learning_rate)
    if conflict:
        raise ConfigError(conflict)


def _check_optimization(cfg: DictConfig) -> None:
    opt, sched = cfg.optimizer, cfg.scheduler
    lr = opt.learning_rate
    if not (lr in ("auto", "find") or _is_number(lr) and lr > 0):
        raise ConfigError(f"optimizer.learning_rate={lr} must be a positive number, auto (the "
                          "adapter method's default) or find (an LR range test).")
    if opt.fused not in ("auto", True, False):
        raise ConfigError(f"optimizer.fused={opt.fused} must be auto, true or false.")
    if len(opt.betas) != 2 or not all(0.0 <= b < 1.0 for b in opt.betas):
        raise ConfigError(f"optimizer.betas={list(opt.betas)} must be two numbers in [0, 1), "
                          "e.g. [0.9,0.999].")
    if opt.weight_decay < 0:
        raise ConfigError(f"optimizer.weight_decay={opt.weight_decay} must be 0 or more.")
    if not 0.0 <= sched.warmup_fraction < 1.0:
        raise ConfigError(f"scheduler.warmup_fraction={sched.warmup_fraction} must be in [0, 1).")
    if sched.warmup_steps is not None and sched.warmup_steps < 0:
        raise ConfigError(f"scheduler.warmup_steps={sched.warmup_steps} must be 0 or more (or null).")
    if sched.name == "constant" and (sched.warmup_fraction > 0 or (sched.warmup_steps or 0) > 0):
        raise ConfigError("scheduler=constant has no warmup; use scheduler=constant_with_warmup "
                          "to warm up, or set the warmup to 0.")


# Metrics each task reports per evaluation stage, and whether lower is better.
_TASK_METRICS = {"classification": ("acc", "f1_macro", "loss"),
                 "regression": ("mse", "mae", "r2", "loss"),
                 "causal_lm": ("loss", "perplexity"), "pretrain": ("loss", "perplexity")}
_LOWER_IS_BETTER = ("loss", "perplexity", "mse", "mae")


def _check_monitor(cfg: DictConfig) -> None:
    """task.monitor must be a metric the task reports (else the best checkpoint, early stopping
    and sweep pruning fail only after the first epoch), watched in its own direction."""
    task, monitor = cfg.task, cfg.task.monitor
    stages = ["val"] + (["train_eval"] if cfg.trainer.evaluate_training_set else [])
    known = [f"{stage}/{m}" for stage in stages for m in _TASK_METRICS.get(task.name, ())]
    # (LM tasks: _check_language_modeling has said which metrics they report.)
    if task.name not in LM_TASKS and monitor not in known + ["train/loss"]:
        raise ConfigError(f"task.monitor={monitor} is not reported by task={task.name}; choose one of "
                          f"{', '.join(known + ['train/loss'])}.")
    lower = monitor.rsplit("/", 1)[-1] in _LOWER_IS_BETTER
    if task.monitor_mode != ("min" if lower else "max"):
        raise ConfigError(f"task.monitor={monitor} is better when {'lower' if lower else 'higher'}, "
                          f"but task.monitor_mode={task.monitor_mode} would keep the worst "
                          f"checkpoint; set task.monitor_mode={'min' if lower else 'max'}.")


def _check_caches(cfg: DictConfig) -> None:
    if not cfg.data.cache_encoder_embeddings:
        return
    if cfg.task.name in LM_TASKS:
        raise ConfigError(f"data.cache_encoder_embeddings=true applies to classification and "
                          f"regression heads, not task={cfg.task.name}; remove the override.")
    if cfg.adapter.method != "frozen":
        raise ConfigError(f"data.cache_encoder_embeddings=true needs a frozen encoder, but "
                          f"adapter={cfg.adapter.method} trains it (its embeddings change every "
                          "step); use adapter=frozen, or set data.cache_encoder_embeddings=false.")


def _check_language_modeling(cfg: DictConfig) -> None:
    data, task = cfg.data, cfg.task
    if task.name == "causal_lm":
        has_template = data.prompt_template is not None and data.response_template is not None
        if not has_template and data.messages_column is None:
            raise ConfigError("task=causal_lm needs data.prompt_template and data.response_template "
                              "(e.g. data=code_alpaca), or data.messages_column for conversations.")
    if task.name in LM_TASKS:
        if cfg.adapter.method == "frozen":
            raise ConfigError(f"adapter=frozen trains nothing under task={task.name} (there is no "
                              "head); use adapter=lora, freeze or none.")
        if task.monitor not in ("val/loss", "val/perplexity"):
            raise ConfigError(f"task.monitor={task.monitor} is not reported by task={task.name}; "
                              "use val/loss (task=causal_lm sets it).")
        if data.packing and cfg.adapter.method in PROMPT_LEARNING_ADAPTERS:
            raise ConfigError(f"data.packing=true with adapter={cfg.adapter.method}: its virtual "
                              "tokens cannot be shared by packed samples; set data.packing=false "
                              "or use a weight adapter such as adapter=lora.")
    elif data.packing:
        raise ConfigError(f"data.packing=true applies to task=causal_lm / pretrain, not "
                          f"task={task.name}; remove the override.")
    alpha = task.neftune_noise_alpha
    if alpha is not None and (task.name not in LM_TASKS or alpha <= 0):
        raise ConfigError(f"task.neftune_noise_alpha={alpha}: NEFTune takes a positive value and "
                          "applies to task=causal_lm / pretrain; set it to null otherwise.")
    if task.sample_generations < 0:
        raise ConfigError(f"task.sample_generations={task.sample_generations} must be 0 or more.")
    if cfg.generation.max_new_tokens < 1:
        raise ConfigError(f"generation.max_new_tokens={cfg.generation.max_new_tokens} must be at least 1.")
