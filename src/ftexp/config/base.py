"""What every group schema shares: the GroupSchema base (allowed values, its own `check`),
the MISSING marker, the dtype names, and the number test the checks use."""

from __future__ import annotations

from typing import ClassVar

from omegaconf import DictConfig

MISSING = "???"
DTYPES = ("float32", "bfloat16", "float16")


def is_number(value: object, integer: bool = False) -> bool:
    kinds = (int,) if integer else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool)


class GroupSchema:
    """What every group schema may declare besides its fields: the values a key may take
    (checked after types, listed in the message) and `check`, the group's own rules."""
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {}
    # A `_target_` group: keys beyond the fields are the target's own arguments, checked against
    # its signature when the job starts (builders/targets.py) instead of refused here.
    TAKES_TARGET_ARGUMENTS: ClassVar[bool] = False

    @staticmethod
    def check(node: DictConfig) -> None:
        """Rules within this group that types cannot express; raise ConfigError with one line."""
