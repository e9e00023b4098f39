"""Load the tokenizer and the backbone (a headless transformers AutoModel) from config values."""

from __future__ import annotations

import logging
import tempfile
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from ftexp.errors import ConfigError
from ftexp.paths import resolve_model_path

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _not_found(what: str, source: str, err: Exception) -> ConfigError:
    return ConfigError(
        f"cannot load {what} '{source}': not a local directory and not in the Hugging Face cache "
        f"({type(err).__name__}); if there is no network, download it elsewhere and set "
        "model.name_or_path=/path/to/model."
    )


def _from_pretrained(auto_class: Any, what: str, source: str,
                     not_found: tuple[type[Exception], ...] = (OSError, ValueError), **kwargs: Any) -> Any:
    """`auto_class.from_pretrained` on a Hub id, local path or `package:` path, with a one-line
    error when nothing is there."""
    try:
        return auto_class.from_pretrained(resolve_model_path(source), **kwargs)
    except not_found as err:
        raise _not_found(what, source, err) from err


def load_tokenizer(source: str, *, trust_remote_code: bool = False, revision: str | None = None,
                   chat_template: str | None = None) -> Any:
    """The tokenizer, with a pad token guaranteed (decoder LLMs often ship without one) and the
    given chat template, if any, replacing its own."""
    tokenizer = _from_pretrained(AutoTokenizer, "tokenizer", source,
                                 trust_remote_code=trust_remote_code, revision=revision)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ConfigError(f"tokenizer '{source}' has no pad, eos or unk token to pad batches with; "
                              "use a tokenizer that defines one.")
        log.info("tokenizer has no pad token; padding with %r", fallback)
        tokenizer.pad_token = fallback
    return tokenizer


def is_decoder_only(config: Any) -> bool:
    """True for causal LMs (Llama, Qwen2, GPT-2, BLOOM…), False for BERT-style encoders."""
    model_type = getattr(config, "model_type", "")
    return (model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)


def model_type_of(name_or_path: str, random_init: dict[str, Any] | None = None, *,
                  trust_remote_code: bool = False, revision: str | None = None) -> str:
    """The architecture's model_type (bert, llama, …) from its config alone: no weights load."""
    if random_init is not None:
        return str(random_init["model_type"])
    return _from_pretrained(AutoConfig, "model", name_or_path, trust_remote_code=trust_remote_code,
                            revision=revision).model_type


def _drop_pooler(model: PreTrainedModel) -> PreTrainedModel:
    # BERT-style models carry a CLS pooler (dense + tanh) that our heads never use; left in, it
    # is dead weight and an "unused parameters" error under DDP. Their forward skips a None pooler.
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


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
) -> PreTrainedModel:
    """Pretrained weights from a Hub id / local path, or a random-init architecture from a config;
    quantized on load when a bitsandbytes config is given. Headless (AutoModel) for pooled heads,
    or with its LM head (AutoModelForCausalLM) when `causal_lm`."""
    torch_dtype = DTYPES[dtype]
    auto_class = AutoModelForCausalLM if causal_lm else AutoModel
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if random_init is not None:
        params = dict(random_init)
        config = AutoConfig.for_model(params.pop("model_type"), **params)
        # Random-init models are fixtures: the same weights on every build, whatever the run's
        # seed, so a checkpoint need not carry their frozen base to be reloaded.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = auto_class.from_config(config, dtype=torch_dtype, **extra)
        if quantization_config is None:
            return _drop_pooler(model)
        # bitsandbytes quantizes while loading weights, so a random-init model goes through disk.
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            return load_backbone(tmp, dtype=dtype, attn_implementation=attn_implementation,
                                 quantization_config=quantization_config, causal_lm=causal_lm)
    if quantization_config is not None:
        extra["quantization_config"] = quantization_config
    # Only OSError means "not there" here; a ValueError from a bad setting should surface as is.
    return _drop_pooler(_from_pretrained(auto_class, "model", name_or_path, not_found=(OSError,),
                                         dtype=torch_dtype, trust_remote_code=trust_remote_code,
                                         revision=revision, **extra))


def load_configured_backbone(model: dict[str, Any], quantization_config: Any = None,
                             causal_lm: bool = False) -> PreTrainedModel:
    """`load_backbone` from the model group's settings (a plain dict, as checkpoints keep it)."""
    return load_backbone(model["name_or_path"], random_init=model.get("random_init"),
                         dtype=model["dtype"], attn_implementation=model.get("attn_implementation"),
                         trust_remote_code=model["trust_remote_code"], revision=model.get("revision"),
                         quantization_config=quantization_config, causal_lm=causal_lm)
