"""Which backbone weights train: all (full fine-tuning), none (frozen), the last layers (freeze
tuning), or a PEFT adapter (LoRA and friends). The task head always trains; it lives outside
the backbone."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import re
import sys
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ftexp.builders.hqq import has_hqq_layers, hqq_all_linear
from ftexp.builders.llama_pro import check_llama_pro_fits, expand_blocks, train_new_blocks_only
from ftexp.config.adapter import ADAPTERS, NON_PEFT_ADAPTERS
from ftexp.runs.errors import ConfigError, did_you_mean


@contextlib.contextmanager
def _without_bitsandbytes() -> Iterator[None]:
    """PEFT imports bitsandbytes whenever it is installed: `import peft` does (peft/helpers.py, for
    an analysis helper ftexp does not use), and so does every LoRA layer it creates (to offer the
    k-bit layer types). Importing it costs ~0.75 s on 2 CPU cores (it compiles kernels with
    torch.compile, which loads torch._inductor), paid by every adapter run. A model quantized by
    bitsandbytes has imported it already; if nothing has, nothing PEFT builds here needs it. So
    while PEFT imports or wraps in that case, `import bitsandbytes` fails as if it were absent
    (PEFT's documented fallback); afterwards it imports again, and PEFT's and transformers'
    cached answers to "is it installed?" stay or become true for a quantized run later in the
    same process (a sweep over quant=none,4bit)."""
    if "bitsandbytes" in sys.modules or importlib.util.find_spec("bitsandbytes") is None:
        yield
        return
    from transformers.utils import import_utils as transformers_imports

    transformers_imports.is_bitsandbytes_available()  # cached with the true answer first
    sys.modules["bitsandbytes"] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        yield
    finally:
        if "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None:
            del sys.modules["bitsandbytes"]
        if "peft" in sys.modules:
            from peft import import_utils as peft_imports

            peft_imports.is_bnb_available.cache_clear()
            peft_imports.is_bnb_4bit_available.cache_clear()


def import_peft() -> Any:
    """`import peft`, without bitsandbytes unless something has loaded it (see above)."""
    with _without_bitsandbytes():
        import peft
    return peft


def _peft_class(method: str, params: dict[str, Any]) -> tuple[type, dict[str, Any]]:
    peft = import_peft()

    if method == "peft":  # escape hatch: any PEFT config class by dotted path
        target = params.pop("_target_", None)
        if not target:
            raise ConfigError("adapter=peft needs adapter._target_, e.g. "
                              "adapter._target_=peft.VeraConfig.")
        module, _, name = target.rpartition(".")
        try:
            return getattr(importlib.import_module(module or "peft"), name), {}
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"adapter._target_='{target}' is not an importable PEFT config "
                              "class (e.g. peft.VeraConfig).") from err
    name, implied = ADAPTERS[method].peft_config, ADAPTERS[method].implied
    return getattr(peft, name), implied


def peft_config(method: str, params: dict[str, Any], task_type: str | None = None) -> Any:
    """Build the PEFT config for `method` from the adapter group's keys, or say which key is wrong.

    `task_type="CAUSAL_LM"` makes PEFT wrap a language model so that `generate` works (prompt
    methods then feed their virtual tokens to generation too); None keeps a headless wrapper.
    """
    params = dict(params)
    if method == "adalora":
        # Its rank schedule needs the run's step count; training passes the real one, a model
        # rebuilt for inference or for checking keys needs only a valid placeholder.
        params.setdefault("total_step", 1)
    cls, implied = _peft_class(method, params)
    valid = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in params:
        if key not in valid:
            raise ConfigError(f"adapter key '{key}' is not a {cls.__name__} setting."
                              f"{did_you_mean(key, valid, 'adapter.')} See the PEFT docs of "
                              f"{cls.__name__} for its keys.")
    if task_type is not None:
        implied = {**implied, "task_type": task_type}
    try:
        return cls(**{**params, **implied})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"adapter={method}: {str(err).splitlines()[0]}") from err


def check_adapter_fits(method: str, model_type: str) -> None:
    """Refuse, before any weights load, a method the architecture cannot take."""
    if method == "llama_adapter":
        import_peft()
        from peft.tuners.adaption_prompt.config import TRANSFORMERS_MODEL_CONFIG

        if model_type not in TRANSFORMERS_MODEL_CONFIG:
            raise ConfigError(
                f"adapter=llama_adapter (PEFT adaption prompt) works only on "
                f"{', '.join(sorted(TRANSFORMERS_MODEL_CONFIG))} decoders, not '{model_type}'; "
                "choose adapter=lora or prefix_tuning for this model.")


def validate_adapter(adapter: dict[str, Any], model_type: str) -> None:
    """Everything about the adapter that can be checked without weights: method fits the
    architecture, PEFT keys exist."""
    method = adapter["method"]
    if method == "llama_pro":
        check_llama_pro_fits(model_type)
    if method not in NON_PEFT_ADAPTERS:
        check_adapter_fits(method, model_type)
        peft_config(method, {k: v for k, v in adapter.items() if k != "method"})


def transformer_layers(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's stack of transformer blocks (encoder.layer, layers, h, …)."""
    depth = getattr(backbone.config, "num_hidden_layers", None)
    stacks = [m for m in backbone.modules() if isinstance(m, nn.ModuleList) and len(m) == depth]
    if not stacks:
        raise ConfigError("adapter=freeze cannot find the transformer layers of this model; "
                          "use adapter.trainable_patterns to name what should train.")
    return stacks[0]


def train_matching(backbone: nn.Module, patterns: list[str]) -> None:
    """Also train the parameters whose name matches one of the regular expressions."""
    compiled = [re.compile(p) for p in patterns]
    for name, param in backbone.named_parameters():
        if any(p.search(name) for p in compiled):
            param.requires_grad_(True)


def freeze_all_but(backbone: nn.Module, last_n_layers: int, patterns: list[str]) -> None:
    """Train only the last `last_n_layers` blocks and parameters whose name matches a pattern."""
    backbone.requires_grad_(False)
    if last_n_layers:
        layers = transformer_layers(backbone)
        if not 0 < last_n_layers <= len(layers):
            raise ConfigError(f"adapter.last_n_layers={last_n_layers} must be between 1 and the "
                              f"model's {len(layers)} layers.")
        for layer in layers[-last_n_layers:]:
            layer.requires_grad_(True)
    train_matching(backbone, patterns)


def apply_adapter(backbone: nn.Module, adapter: dict[str, Any], task_type: str | None = None) -> nn.Module:
    """Return the backbone prepared for adapter['method']; PEFT methods wrap it."""
    params = {k: v for k, v in adapter.items() if k != "method"}
    method = adapter["method"]
    if method == "none":
        backbone.requires_grad_(True)
        return backbone
    if method == "frozen":
        return backbone.requires_grad_(False)
    if method == "freeze":
        freeze_all_but(backbone, params.get("last_n_layers") or 0,
                       list(params.get("trainable_patterns") or []))
        return backbone
    if method == "llama_pro":
        check_llama_pro_fits(getattr(backbone.config, "model_type", ""))
        train_new_blocks_only(backbone, expand_blocks(backbone, params["num_expand_layers"]))
        train_matching(backbone, list(params.get("trainable_patterns") or []))
        return backbone
    peft = import_peft()
    if params.get("target_modules") == "all-linear" and has_hqq_layers(backbone):
        params["target_modules"] = hqq_all_linear(backbone)
    check_adapter_fits(method, getattr(backbone.config, "model_type", ""))
    config = peft_config(method, params, task_type)
    _train_new_token_rows(backbone, config)  # model.add_special_tokens
    with _without_bitsandbytes():
        wrapped = peft.get_peft_model(backbone, config)
    _load_expected_state(backbone, wrapped)  # model.init_from_adapter=continue
    return wrapped


# Ids of tokens model.add_special_tokens gave the tokenizer, left by backbone.grow_vocabulary for
# apply_adapter, whose PEFT adapter must train their (new, otherwise random) embedding rows.
_NEW_TOKENS: weakref.WeakKeyDictionary[Any, list[int]] = weakref.WeakKeyDictionary()


def expect_trainable_tokens(backbone: nn.Module, token_ids: list[int]) -> None:
    """Make the rows of `token_ids` trainable in the adapter apply_adapter puts on `backbone`."""
    if token_ids:
        _NEW_TOKENS[backbone] = list(token_ids)


def _train_new_token_rows(backbone: nn.Module, config: Any) -> None:
    """Train the new tokens' rows of the input embeddings (and of an untied LM head, so the model
    can also predict them): PEFT's trainable_token_indices, which trains and saves only those rows
    and merges them on export, where the method has it; else the whole embedding modules
    (modules_to_save)."""
    token_ids = _NEW_TOKENS.pop(backbone, None)
    if not token_ids:
        return
    modules = {name.rsplit(".", 1)[-1]: module for name, module in backbone.named_modules()}
    names = [n for n, m in modules.items() if m is backbone.get_input_embeddings()]
    output = backbone.get_output_embeddings() if hasattr(backbone, "get_output_embeddings") else None
    tied = output is not None and output.weight is backbone.get_input_embeddings().weight
    names += [n for n, m in modules.items() if output is not None and m is output and not tied]
    if hasattr(config, "trainable_token_indices"):
        config.trainable_token_indices = {name: list(token_ids) for name in names}
    elif hasattr(config, "modules_to_save"):
        config.modules_to_save = [*(config.modules_to_save or []), *names]
    else:
        raise ConfigError(f"model.add_special_tokens: {type(config).__name__} cannot train the new tokens' "
                          "embedding rows; use adapter=lora or adapter=none.")


# Trained adapter tensors waiting for the model they are meant for (model.init_from_adapter=
# continue, builders/init_from.py), loaded by apply_adapter once it has wrapped that model.
_EXPECTED_STATE: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def expect_adapter_state(backbone: nn.Module, state: dict[str, Any] | None) -> None:
    """Load `state` into the adapter apply_adapter puts on `backbone` (None: forget any waiting)."""
    if state is None:
        _EXPECTED_STATE.pop(backbone, None)
    else:
        _EXPECTED_STATE[backbone] = state


def _load_expected_state(backbone: nn.Module, wrapped: nn.Module) -> None:
    state = _EXPECTED_STATE.pop(backbone, None)
    if state is None:
        return
    result = wrapped.load_state_dict(state, strict=False)
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    missing = sorted(trainable & set(result.missing_keys))
    if missing or result.unexpected_keys:
        raise ConfigError(f"model.init_from_adapter=continue: the earlier run's adapter does not fit "
                          f"this run's (missing {missing[:2]}, unexpected "
                          f"{sorted(result.unexpected_keys)[:2]}); use model.init_from_adapter=merge.")


def backbone_is_frozen(method: str) -> bool:
    """Only `frozen` leaves the whole backbone fixed (so its dropout stays off too)."""
    return not ADAPTERS[method].trains_backbone if method in ADAPTERS else False


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    return trainable, total


def adalora_orthogonal_penalty(peft_model: nn.Module) -> torch.Tensor | float:
    """AdaLoRA's regulariser keeping P (lora_A) and Q (lora_B) near-orthogonal, weighted by the
    config's orth_reg_weight. PEFT adds it only to a loss the wrapped model computes itself; our
    heads compute the loss outside the backbone, so the task adds it (same formula as PEFT's)."""
    name = peft_model.active_adapter
    weight = peft_model.peft_config[name].orth_reg_weight
    penalties = []
    for param_name, p in peft_model.named_parameters():
        if ("lora_A" in param_name or "lora_B" in param_name) and name in param_name:
            cov = p @ p.T if "lora_A" in param_name else p.T @ p
            penalties.append(torch.linalg.matrix_norm(cov - torch.eye(*cov.shape, device=cov.device,
                                                                      dtype=cov.dtype)))
    return weight * torch.stack(penalties).mean() if penalties else 0.0
