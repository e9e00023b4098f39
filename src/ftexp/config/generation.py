"""The `generation` group: decoding settings."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from ftexp.config.base import GroupSchema
from ftexp.runs.errors import ConfigError


@dataclass
class GenerationConfig(GroupSchema):
    """Decoding settings for sample generations during training and for `ftexp.generate`."""
    max_new_tokens: int = 128
    do_sample: bool = False  # false: greedy decoding
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0

    @staticmethod
    def check(generation: DictConfig) -> None:
        if generation.max_new_tokens < 1:
            raise ConfigError(f"generation.max_new_tokens={generation.max_new_tokens} must be at least 1.")
