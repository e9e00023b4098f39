"""Rules that span config groups: combinations a task, a method or a strategy cannot serve.

Two phases, both before any weights load:
- `check_combinations(cfg)`: from the config alone (run by ftexp.config.validation, also before a job
  starts, so no heavy imports at module level);
- `check_model_fit(cfg, model_type)`: what needs the architecture (read from its config, not
  its weights) and the optional packages: adapter keys, packing support, the `_target_` nodes.
Each group's own checks sit beside its schema, in its module of ftexp.config.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from ftexp.builders.init_from import check_init_from
from ftexp.config.adapter import ADAPTERS, LORAPLUS_ADAPTERS, NON_PEFT_ADAPTERS, PROMPT_LEARNING_ADAPTERS
from ftexp.config.optimizer import ADAM_MINI_TARGET, MUON_TARGET
from ftexp.config.preference_tasks import reference_source
from ftexp.runs.errors import ConfigError
from ftexp.runs.objective import lower_is_better
from ftexp.tasks.registry import TASKS, TaskSpec, get_task


def _tasks_that(flag: str) -> str:
    """'causal_lm / pretrain': the tasks whose entry sets `flag`, for messages."""
    return " / ".join(name for name, spec in TASKS.items() if getattr(spec, flag))


def check_combinations(cfg: DictConfig) -> None:
    spec = get_task(cfg.task.name)
    _check_strategy(cfg)
    _check_adapter_and_quant(cfg, spec)
    _check_data_for_task(cfg, spec)
    _check_monitor(cfg, spec)
    _check_caches(cfg, spec)
    _check_reference(cfg)
    _check_sampling(cfg)
    _check_optimizer(cfg)
    _check_added_tokens(cfg)
    _check_kernels(cfg)
    _check_eval(cfg, spec)
    check_init_from(cfg)


def _check_eval(cfg: DictConfig, spec: TaskSpec) -> None:
    from ftexp.config.adapter import PROMPT_LEARNING_ADAPTERS

    if cfg.eval.name == "none":
        return
    if not spec.language_model:
        raise ConfigError(f"eval=lm_eval scores language models; a task={spec.name} run is scored on "
                          "another labelled file with `python -m ftexp.evaluate <run dir> "
                          "data.path=<file>` (or set eval=none).")
    if cfg.adapter.method in PROMPT_LEARNING_ADAPTERS:
        raise ConfigError(f"eval=lm_eval cannot score adapter={cfg.adapter.method}: its virtual tokens "
                          "shift the harness's logits; use a weight adapter (lora, dora, ia3, ...) or "
                          "eval=none.")


def _check_strategy(cfg: DictConfig) -> None:
    from ftexp.builders.strategy import strategy_conflict  # light: torch is imported lazily there

    plain = OmegaConf.to_container
    conflict = strategy_conflict(plain(cfg.strategy), plain(cfg.quant), cfg.trainer.accelerator,
                                 cfg.data.batch_size, cfg.optimizer.learning_rate)
    if conflict:
        raise ConfigError(conflict)


def _check_adapter_and_quant(cfg: DictConfig, spec: TaskSpec) -> None:
    method = cfg.adapter.method
    if cfg.quant.method != "none" and ADAPTERS[method].trains_base_weights:
        raise ConfigError(f"quant={cfg.quant.method} with adapter={method}: quantized "
                          "weights cannot be trained directly; use an adapter (e.g. adapter=lora, "
                          "i.e. QLoRA), adapter=frozen, or quant=none.")
    if cfg.quant.method == "eetq" and ADAPTERS[method].trains_backbone:
        # PEFT wraps EETQ layers only as the `eetq` package's EetqLinear; transformers 5 loads its own
        # (through `kernels`), which PEFT cannot target and cannot dequantize for export.
        raise ConfigError(f"quant=eetq with adapter={method}: PEFT cannot put adapters on transformers' "
                          "EETQ layers (nor merge them for export); use quant=hqq or quant=8bit for "
                          "LoRA on int8 weights, or adapter=frozen.")
    if not ADAPTERS[method].trains_backbone and not spec.trains_with_frozen_backbone:
        raise ConfigError(f"adapter=frozen trains nothing under task={spec.name} (there is no "
                          "head); use adapter=lora, freeze or none.")


def _check_data_for_task(cfg: DictConfig, spec: TaskSpec) -> None:
    data = cfg.data
    if data.label_separator is not None and spec.labels != "classes":
        raise ConfigError(f"data.label_separator={data.label_separator!r} reads several labels per "
                          f"row (multi-label classification), but task={spec.name} needs one "
                          f"{spec.labels or 'text'} per row; set "
                          "data.label_separator=null or use task=classification.")
    if spec.needs_prompts:
        has_template = data.prompt_template is not None and data.response_template is not None
        if not has_template and data.messages_column is None:
            raise ConfigError(f"task={spec.name} needs data.prompt_template and data.response_template "
                              "(e.g. data=code_alpaca), or data.messages_column for conversations.")
    if data.packing and not spec.packing:
        raise ConfigError(f"data.packing=true applies to task={_tasks_that('packing')}, not "
                          f"task={spec.name}; remove the override.")
    if data.packing and cfg.model.shift_short_attention:
        raise ConfigError("data.packing=true with model.shift_short_attention=true: S²-Attn's groups would "
                          "cut across the packed samples' boundaries; set data.packing=false.")
    if data.packing and cfg.task.get("on_policy_fraction", 0) > 0:
        raise ConfigError(f"task.on_policy_fraction={cfg.task.on_policy_fraction} with data.packing=true: "
                          "the student's samples replace each row's response, which packed rows do not "
                          "keep apart; set data.packing=false.")
    if data.packing and cfg.adapter.method in PROMPT_LEARNING_ADAPTERS:
        raise ConfigError(f"data.packing=true with adapter={cfg.adapter.method}: its virtual "
                          "tokens cannot be shared by packed samples; set data.packing=false "
                          "or use a weight adapter such as adapter=lora.")


def _check_monitor(cfg: DictConfig, spec: TaskSpec) -> None:
    """task.monitor must be a metric the task reports (else the best checkpoint, early stopping
    and sweep pruning fail only after the first evaluation), watched in its own direction."""
    monitor = cfg.task.monitor
    stages = ("val", "train_eval") if cfg.trainer.evaluate_training_set else ("val",)
    known = [*spec.monitor_choices(stages), "train/loss"]
    if monitor not in known:
        raise ConfigError(f"task.monitor={monitor} is not reported by task={spec.name}; choose one of "
                          f"{', '.join(known)}.")
    lower = lower_is_better(monitor)
    if cfg.task.monitor_mode != ("min" if lower else "max"):
        raise ConfigError(f"task.monitor={monitor} is better when {'lower' if lower else 'higher'}, "
                          f"but task.monitor_mode={cfg.task.monitor_mode} would keep the worst "
                          f"checkpoint; set task.monitor_mode={'min' if lower else 'max'}.")


def _check_caches(cfg: DictConfig, spec: TaskSpec) -> None:
    if not cfg.data.cache_encoder_embeddings:
        return
    if not spec.cached_embeddings:
        raise ConfigError(f"data.cache_encoder_embeddings=true applies to "
                          f"task={_tasks_that('cached_embeddings')}, not task={spec.name}; remove "
                          "the override.")
    if ADAPTERS[cfg.adapter.method].trains_backbone:
        raise ConfigError(f"data.cache_encoder_embeddings=true needs a frozen encoder, but "
                          f"adapter={cfg.adapter.method} trains it (its embeddings change every "
                          "step); use adapter=frozen, or set data.cache_encoder_embeddings=false.")


def _check_reference(cfg: DictConfig) -> None:
    """task.reference (dpo, kto, grpo with beta > 0): where the reference log-probs can come from."""
    # None: the objective has no reference pass (no key, reference_free, GRPO's beta=0).
    if reference_source(cfg.task, cfg.adapter.method) is None:
        return
    reference = cfg.task.reference
    method = cfg.adapter.method
    is_peft = method not in NON_PEFT_ADAPTERS
    if reference == "adapter" and not is_peft:
        raise ConfigError(f"task.reference=adapter disables the PEFT adapter to get the reference, but "
                          f"adapter={method} is not one; use task.reference=copy or precompute, or a "
                          "PEFT adapter (adapter=lora).")
    copies = reference == "copy" or (reference == "auto" and not is_peft)
    if copies and cfg.strategy.name in ("fsdp", "deepspeed"):
        raise ConfigError(f"task.reference=copy keeps a whole unsharded copy of the model on every device, "
                          f"which strategy={cfg.strategy.name} exists to avoid; train an adapter (its "
                          "disabled network is the reference), or, if the model fits on one device, "
                          "use task.reference=precompute (computed once, before training).")
    # LoRA inits that rewrite the base weights (PiSSA, OLoRA, LoftQ, …): with the adapter disabled
    # the network is no longer the starting policy.
    init = str(cfg.adapter.get("init_lora_weights", True)).lower()
    uses_base = reference in ("adapter", "precompute") or (reference == "auto" and is_peft)
    if uses_base and init not in ("true", "false", "gaussian"):
        raise ConfigError(f"adapter.init_lora_weights={init} changes the base weights, so the "
                          f"adapter-disabled network is not the starting policy task.reference={reference} "
                          "needs; use task.reference=copy, or init_lora_weights=true / gaussian.")
    if reference == "copy" and cfg.quant.method != "none":
        raise ConfigError(f"task.reference=copy with quant={cfg.quant.method}: a quantized model is not "
                          "copied; use task.reference=adapter (the adapter-disabled network) or precompute.")


def _check_sampling(cfg: DictConfig) -> None:
    """Online RL (task=grpo / ppo, the tasks with task.num_generations) and on-policy distillation
    (task.on_policy_fraction > 0) sample from the policy during training: with the generation
    group's temperature, on a model each device holds whole."""
    if "num_generations" not in cfg.task and not cfg.task.get("on_policy_fraction", 0) > 0:
        return
    if not cfg.generation.temperature > 0:
        raise ConfigError(f"generation.temperature={cfg.generation.temperature}: task={cfg.task.name} "
                          "samples its completions, which needs a temperature > 0 (e.g. 1.0).")
    strategy = cfg.strategy
    if strategy.name == "fsdp" or (strategy.name == "deepspeed" and strategy.stage == 3):
        raise ConfigError(f"task={cfg.task.name} samples with transformers' generate, which needs the whole "
                          f"model on each device, but strategy={strategy.name} shards its weights; use "
                          "strategy=ddp (or deepspeed ZeRO stage 2) with an adapter, or one device.")
    if cfg.task.get("generation_backend") == "vllm":
        _check_vllm(cfg)


def _check_vllm(cfg: DictConfig) -> None:
    """task.generation_backend=vllm: a colocated engine on one CUDA device, fed merged weights."""
    import importlib.util

    import torch

    fix = "or use task.generation_backend=transformers"
    if not torch.cuda.is_available():
        raise ConfigError(f"task.generation_backend=vllm needs a CUDA GPU and none is visible; {fix}.")
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(f"task.generation_backend=vllm needs vLLM: pip install 'ftexp[vllm]', {fix}.")
    if cfg.quant.method != "none":
        raise ConfigError(f"task.generation_backend=vllm with quant={cfg.quant.method}: the policy's "
                          "weights are pushed into vLLM merged, which a quantized base cannot take; "
                          f"use quant=none {fix}.")
    devices = cfg.trainer.devices
    one_device = devices in (1, "1") or (devices == "auto" and torch.cuda.device_count() == 1)
    if cfg.strategy.name != "auto" or not one_device or cfg.trainer.num_nodes != 1:
        raise ConfigError(f"task.generation_backend=vllm runs one colocated engine on one GPU; use "
                          f"strategy=auto trainer.devices=1, {fix}.")


# model.kernels option -> (the module it imports, the pyproject extra that installs it).
KERNEL_PACKAGES = {"liger": ("liger_kernel", "liger"), "cut_cross_entropy": ("cut_cross_entropy", "cce")}


def _check_kernels(cfg: DictConfig) -> None:
    """model.kernels: fused CUDA (Triton) loss kernels, so a CUDA device and the package. torch is
    imported only when a kernel is asked for, to see whether CUDA is there."""
    kernels = cfg.model.get("kernels", "none")
    if kernels == "none":
        return
    import importlib.util

    module, extra = KERNEL_PACKAGES[kernels]
    cuda = cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    if cuda:
        import torch

        cuda = torch.cuda.is_available()
    if not cuda:
        raise ConfigError(f"model.kernels={kernels} runs on CUDA GPUs only, and this run has none "
                          f"(trainer.accelerator={cfg.trainer.accelerator}); set model.kernels=none "
                          "(the chunked loss, model.loss_chunk_tokens, also avoids full logits).")
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"model.kernels={kernels} needs the {module} package, which is not "
                          f"installed; pip install 'ftexp[{extra}]', or set model.kernels=none.")


def _check_optimizer(cfg: DictConfig) -> None:
    """GaLore / APOLLO (optimizer.projection), BAdam (optimizer.blocks) and Adam-mini are full
    fine-tuning methods: they change how the base weights' own updates are stored. Muon needs
    trainable matrices in the blocks, whole on each device."""
    o, method, strategy = cfg.optimizer, cfg.adapter.method, cfg.strategy.name
    if o.projection is not None:
        if not ADAPTERS[method].trains_base_weights:
            raise ConfigError(f"optimizer.projection (GaLore / APOLLO) projects the gradients of full "
                              f"weight matrices, but adapter={method} trains "
                              f"{'none' if method == 'frozen' else 'low-rank or small adapter weights'}; "
                              "use adapter=none (or freeze), or optimizer=adamw.")
        if strategy in ("fsdp", "deepspeed"):
            raise ConfigError(f"optimizer.projection (GaLore / APOLLO) needs each weight's whole gradient "
                              f"matrix, which strategy={strategy} shards; use strategy=ddp or one device.")
    target = str(o._target_)
    if target == MUON_TARGET:
        if method == "frozen" or method in PROMPT_LEARNING_ADAPTERS:
            raise ConfigError(f"optimizer=muon updates the matrices inside the transformer blocks, which "
                              f"adapter={method} does not train; use optimizer=adamw, or a weight adapter "
                              "(lora, …) or full fine-tuning.")
        if strategy in ("fsdp", "deepspeed"):
            raise ConfigError(f"optimizer=muon orthogonalises each weight's whole update matrix, which "
                              f"strategy={strategy} shards; use strategy=ddp or one device.")
    if target == ADAM_MINI_TARGET:
        if not ADAPTERS[method].trains_base_weights:
            raise ConfigError(f"optimizer=adam_mini partitions the model's own weights by attention head "
                              f"and neuron, which adapter={method} does not train (its state saving is "
                              "for full fine-tuning); use adapter=none (or freeze), or optimizer=adamw.")
        if strategy in ("fsdp", "deepspeed"):
            raise ConfigError(f"optimizer=adam_mini is wired for one device or DDP here, not "
                              f"strategy={strategy}; use strategy=ddp or one device.")
    if target in (MUON_TARGET, ADAM_MINI_TARGET):
        name = "muon" if target == MUON_TARGET else "adam_mini"
        for key, what in (("loraplus_lr_ratio", "LoRA+ learning-rate groups"),
                          ("blocks", "BAdam's block switching")):
            if o[key] is not None:
                raise ConfigError(f"optimizer={name} builds its own parameter groups, so "
                                  f"optimizer.{key} ({what}) has no effect there; use optimizer=adamw "
                                  f"with it, or optimizer.{key}=null.")
    if o.loraplus_lr_ratio is not None and method not in LORAPLUS_ADAPTERS:
        raise ConfigError(f"optimizer.loraplus_lr_ratio (LoRA+) sets the learning rate of LoRA's B "
                          f"matrices, which adapter={method} does not have; use adapter=lora or dora, "
                          "or optimizer.loraplus_lr_ratio=null.")
    if o.blocks is not None:
        if method != "none":
            raise ConfigError(f"optimizer.blocks (BAdam) chooses which layers train itself (full "
                              f"fine-tuning, one block at a time), so adapter={method} cannot; use "
                              "adapter=none, or optimizer=adamw.")
        if strategy != "auto":
            raise ConfigError(f"optimizer.blocks (BAdam) trains on one device: the parameters with "
                              f"gradients change every few steps, which strategy={strategy} cannot "
                              "follow; use strategy=auto with trainer.devices=1.")


# Checkpoints saved quantized whose kernels ftexp trains on CUDA only (transformers' integrations).
CUDA_ONLY_CHECKPOINT_QUANTIZATION = ("gptq", "awq", "aqlm", "eetq", "fp8", "hqq")


def check_prequantized(cfg: DictConfig, saved_as: str | None) -> None:
    """A base saved quantized (model.name_or_path's config has a quantization_config): an adapter
    trains on top as loaded; it cannot be quantized again, nor its own weights trained."""
    if saved_as is None:
        return
    name, method = cfg.model.name_or_path, cfg.adapter.method
    if cfg.quant.method != "none":
        raise ConfigError(f"model.name_or_path={name} is already quantized ({saved_as}); quant="
                          f"{cfg.quant.method} would quantize it a second time. Set quant=none: it trains "
                          "as saved.")
    if ADAPTERS[method].trains_base_weights:
        raise ConfigError(f"model.name_or_path={name} is saved quantized ({saved_as}), whose weights cannot "
                          f"train, but adapter={method} trains them; use adapter=lora (or another PEFT "
                          "adapter).")
    import torch

    cuda = torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    if saved_as in CUDA_ONLY_CHECKPOINT_QUANTIZATION and not cuda:
        raise ConfigError(f"model.name_or_path={name} is saved {saved_as}-quantized, which ftexp trains "
                          "through transformers' CUDA kernels only, and this run has no CUDA device; train "
                          "on a GPU, or start from the unquantized model.")


def _check_added_tokens(cfg: DictConfig) -> None:
    """model.add_special_tokens: the new tokens' embedding rows start untrained, so something must
    train them: full fine-tuning, or a PEFT weight adapter (which trains those rows too)."""
    method = cfg.adapter.method
    if not cfg.model.get("add_special_tokens"):
        return
    if method in ("frozen", "freeze") or method in PROMPT_LEARNING_ADAPTERS:
        raise ConfigError(f"model.add_special_tokens adds tokens whose embedding rows must train, which "
                          f"adapter={method} cannot do; use adapter=none or a weight adapter such as "
                          "adapter=lora (it trains those rows too).")


def check_model_fit(cfg: DictConfig, model_type: str) -> None:
    """Second phase, at job start: what needs the model's type or the optional packages the
    config names. Imports torch / transformers / peft."""
    from ftexp.builders.adapter import validate_adapter
    from ftexp.builders.loggers import check_logger_nodes
    from ftexp.builders.optim import check_optimizer_node
    from ftexp.builders.quant import quantization_config
    from ftexp.builders.schedulers import check_scheduler_node
    from ftexp.callbacks import check_callback_nodes

    plain = OmegaConf.to_container
    quantization_config(plain(cfg.quant, resolve=True))  # bitsandbytes present and settings valid
    validate_adapter(plain(cfg.adapter, resolve=True), model_type)
    if cfg.model.get("rope_scaling"):
        from ftexp.builders.backbone import check_rope_scaling_fits

        check_rope_scaling_fits(model_type)
    if cfg.model.get("shift_short_attention"):
        from ftexp.builders.s2_attention import check_s2_fits

        check_s2_fits(model_type)
    if cfg.data.packing:
        from ftexp.data.packing import check_packing_supported

        check_packing_supported(model_type)
    check_optimizer_node(plain(cfg.optimizer, resolve=True))
    check_scheduler_node(plain(cfg.scheduler, resolve=True))
    check_logger_nodes(plain(cfg.logger, resolve=True))
    check_callback_nodes(plain(cfg.callbacks.extra, resolve=True))
    if "rewards" in cfg.task:  # task=grpo: each reward target imported and built, its keys checked
        from ftexp.tasks.grpo import build_rewards

        build_rewards(plain(cfg.task.rewards, resolve=True))
