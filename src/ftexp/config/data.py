"""The `data` group: the file, its columns and splits, batching, templates and packing for
language models, the preference-record vocabulary (data.preference), and the caches."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Optional

from omegaconf import DictConfig

from ftexp.config.base import MISSING, GroupSchema, is_number
from ftexp.runs.errors import ConfigError, did_you_mean

# -- preference data (data.preference) -------------------------------------------------------
# Record shapes ftexp.data.preference reads; its docstring shows each one.
PAIRED_FORMATS = ("standard", "conversational", "implicit_prompt", "sharegpt")
UNPAIRED_FORMATS = ("unpaired_standard", "unpaired_conversational", "unpaired_messages")
FORMATS = ("auto", *PAIRED_FORMATS, *UNPAIRED_FORMATS)
# The roles the normalised messages use (what chat templates expect).
ROLES = ("system", "user", "assistant", "tool")
# Role names as they appear in the wild → the normalised ones; `roles` in the settings adds to it.
DEFAULT_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "human": "user",
                 "gpt": "assistant"}


@dataclass
class PreferenceColumns(GroupSchema):
    """data.preference: where a table keeps each part of a preference record (reward models, the
    DPO family, KTO; ftexp.data.preference reads them). A dict (or Hydra node) with these keys
    works wherever an instance does."""
    # auto | standard | conversational | implicit_prompt | sharegpt | unpaired_standard |
    # unpaired_conversational | unpaired_messages
    format: str = "auto"
    prompt_column: str = "prompt"
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    completion_column: str = "completion"
    # KTO: true / false, 1 / 0 or "true" / "false" — is the completion desirable?
    label_column: str = "label"
    # A whole conversation (sharegpt, unpaired_messages); None: the first of `conversations`,
    # `messages` that the table has.
    messages_column: Optional[str] = None
    # A number per pair: how much better chosen is (None: no margin).
    margin_column: Optional[str] = None
    # The keys of a message; None: role/content, else from/value (ShareGPT), per message.
    role_key: Optional[str] = None
    content_key: Optional[str] = None
    # More role names → system | user | assistant | tool, added to DEFAULT_ROLES (e.g. {bot: assistant}).
    roles: dict[str, str] = field(default_factory=dict)
    # KTO on paired data: each pair becomes two examples, chosen desirable and rejected not.
    unpair: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"preference format '{self.format}' is unknown; use one of "
                              f"{', '.join(FORMATS)}.{did_you_mean(self.format, FORMATS)}")
        if (self.role_key is None) != (self.content_key is None):
            raise ConfigError("set role_key and content_key together (the two keys of a message), "
                              "or neither to detect role/content and from/value.")
        bad = {k: v for k, v in dict(self.roles).items() if v not in ROLES}
        if bad:
            name, value = next(iter(bad.items()))
            raise ConfigError(f"roles.{name}={value!r} is not a role chat templates know; map it to "
                              f"one of {', '.join(ROLES)}.")
        self.roles = {**DEFAULT_ROLES, **{str(k): str(v) for k, v in dict(self.roles).items()}}

    @classmethod
    def of(cls, settings: PreferenceColumns | Mapping[str, Any] | None) -> PreferenceColumns:
        if settings is None:
            return cls()
        if isinstance(settings, cls):
            return settings
        known = [f.name for f in fields(cls)]
        for key in settings:
            if key not in known:
                raise ConfigError(f"preference setting '{key}' is unknown; the settings are "
                                  f"{', '.join(known)}.{did_you_mean(str(key), known)}")
        return cls(**{k: (dict(v) if k == "roles" else v) for k, v in settings.items()})


@dataclass
class DataConfig(GroupSchema):
    path: str = MISSING  # CSV / TSV / JSON / JSONL / Parquet file
    format: str = "auto"  # auto (from the extension) | csv | tsv | json | jsonl | parquet
    text_columns: list[str] = field(default_factory=lambda: ["text"])
    label_column: str = "label"
    # Text files cannot hold lists: with a separator (e.g. "|"), "a|b" means labels a and b
    # (multi-label). JSON / JSONL / Parquet list cells need none.
    label_separator: Optional[str] = None
    # Column holding train / validation / test per row; None → random split by probabilities.
    split_column: Optional[str] = None
    split_probabilities: list[float] = field(default_factory=lambda: [0.9, 0.05, 0.05])
    split_seed: int = 42
    max_length: int = 128
    # A number, or `auto`: the largest power of two that fits in memory, at most max_batch_size
    # and the training set's size, found before training.
    batch_size: Any = 32
    max_batch_size: int = 256
    eval_batch_size: int = 64
    num_workers: int = 0
    # Training batches of similar length (transformers' group_by_length): random megabatches of
    # up to 50 batches, each sorted by length, so less padding; the order stays the seed's.
    group_by_length: bool = False
    # Keep at most this many training rows (None = all); handy for smoke runs.
    max_train_samples: Optional[int] = None
    # -- causal_lm / pretrain -------------------------------------------------------------------
    # Prompt and response text built from columns: "{instruction}" is the row's instruction.
    prompt_template: Optional[str] = None
    response_template: Optional[str] = None
    # An empty placeholder (e.g. no `input`): keep (render it empty) | drop_paragraph (drop the
    # blank-line-separated paragraph holding it) | error.
    empty_fields: str = "drop_paragraph"
    # Conversation data instead: a column of [{role, content}, …] rendered by the tokenizer's
    # chat template (model.chat_template sets one); loss on assistant turns only.
    messages_column: Optional[str] = None
    # Samples longer than max_length: cut (keep the first max_length tokens; preference pairs keep
    # their responses and lose the prompt's start first) | drop.
    truncation: str = "cut"
    # -- preference tasks (reward, dpo, simpo, orpo, kto) ---------------------------------------
    # Prompts longer than this keep their last tokens (null: only max_length limits them).
    max_prompt_length: Optional[int] = None
    preference: PreferenceColumns = field(default_factory=PreferenceColumns)
    # Several samples per row, each attending only to itself (position ids restart per sample).
    packing: bool = False
    # -- caches (under paths.cache_dir, keyed by a content hash of all they depend on) ------------
    # Reuse tokenized splits across runs with the same data file contents, tokenizer and settings.
    cache_tokenized: bool = True
    # adapter=frozen only: run the frozen encoder once, store the pooled embeddings, and train the
    # head on them; later runs with the same key do no encoder passes at all.
    cache_encoder_embeddings: bool = False

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "format": ("auto", "csv", "tsv", "json", "jsonl", "parquet"),
        "empty_fields": ("keep", "drop_paragraph", "error"), "truncation": ("cut", "drop")}

    @staticmethod
    def check(data: DictConfig) -> None:
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
        size = data.batch_size
        if not (size == "auto" or is_number(size, integer=True) and size >= 1):
            raise ConfigError(f"data.batch_size={data.batch_size} must be a whole number of at least 1, "
                              "or auto.")
        if data.max_train_samples is not None and data.max_train_samples < 1:
            raise ConfigError(f"data.max_train_samples={data.max_train_samples} must be at least 1 "
                              "(or null for all rows).")
        if data.max_prompt_length is not None and not 1 <= data.max_prompt_length < data.max_length:
            raise ConfigError(f"data.max_prompt_length={data.max_prompt_length} must be at least 1 and "
                              f"below data.max_length={data.max_length} (room for the response).")
        if data.group_by_length and data.cache_encoder_embeddings:
            raise ConfigError("data.group_by_length=true has nothing to group with "
                              "data.cache_encoder_embeddings=true (stored vectors have no length); "
                              "set one of them to false.")
        if data.label_separator == "":
            raise ConfigError("data.label_separator is empty: use null, or a character such as '|'.")
        from omegaconf import OmegaConf

        PreferenceColumns.of(OmegaConf.to_container(data.preference))  # its own one-line errors
