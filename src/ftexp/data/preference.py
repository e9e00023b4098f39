"""Preference data in the shapes people have it → one normalised form, or one line saying why not.

Paired records (reward models, the DPO family, ORPO, SimPO) become `PreferencePair`s; unpaired
ones (KTO) become `PreferenceExample`s. No tokenization happens here.

Formats (detected from the columns and the first row when `format` is `auto`; a log line says
which):

  standard                 prompt, chosen, rejected: text                     (TRL "standard")
  conversational           prompt: messages; chosen, rejected: messages       (TRL "conversational")
  implicit_prompt          chosen, rejected: whole conversations sharing all but their last
                           (assistant) message, which is the prompt           (TRL implicit prompt)
  sharegpt                 conversations: messages; chosen, rejected: one message each
                                                                              (LLaMA-Factory dpo_en_demo)
  unpaired_standard        prompt, completion: text; label: true / false      (TRL unpaired, KTO)
  unpaired_conversational  prompt, completion: messages; label
  unpaired_messages        messages (the last, assistant one is the completion); label
                                                                              (LLaMA-Factory kto_en_demo)

Messages are `{role, content}` or ShareGPT's `{from, value}` (auto-detected per message, or set
`role_key` / `content_key`); role names pass through `roles` (human → user, gpt → assistant, …).

The normalised form. A prompt is text (standard formats: no chat template, the response follows
the prompt's tokens) or a list of `{"role", "content"}` messages (rendered by the chat template
with a generation prompt). A response — chosen, rejected, completion — is always the text of
one final assistant turn: every format above reduces to "a shared prompt, then one assistant
message", so the prompt can be tokenized once per pair and each response appended to it; turns
before the final one, whatever column held them, belong to the prompt. A pair whose responses
would differ before that last turn is refused (`prompts differ`), as the losses compare two
continuations of one prompt.

Row numbers in messages count from 1 over the frame given: read the whole file (read_table)
before splitting it, so that they are the file's record numbers.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import pandas as pd

from ftexp.config.data import PAIRED_FORMATS, ROLES, UNPAIRED_FORMATS, PreferenceColumns
from ftexp.runs.errors import DataError

log = logging.getLogger(__name__)

Message = dict[str, str]
Prompt = Union[str, list[Message]]

# Message key pairs tried, in order, when role_key / content_key are left unset.
MESSAGE_KEYS = (("role", "content"), ("from", "value"))
# Conversation columns tried when messages_column is left unset.
MESSAGES_COLUMNS = ("conversations", "messages")


@dataclass(frozen=True)
class PreferencePair:
    """One prompt, the response preferred for it and the one rejected (both assistant text)."""
    prompt: Prompt
    chosen: str
    rejected: str
    # How much better chosen is (reward-model margin), when the data says so.
    margin: Optional[float] = None
    # The row's other columns (ids, a split column, …), untouched.
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PreferenceExample:
    """One prompt and one completion, marked desirable or not (KTO)."""
    prompt: Prompt
    completion: str
    desirable: bool
    extra: dict[str, Any] = field(default_factory=dict)


# -- detection --------------------------------------------------------------------------------------

def detect_format(frame: pd.DataFrame, settings: PreferenceColumns | Mapping[str, Any] | None = None,
                  paired: bool | None = None) -> str:
    """The format of `frame` under `settings` (its own `format` unless that is auto). `paired`
    narrows the choice to paired (True) or unpaired (False) formats."""
    s = PreferenceColumns.of(settings)
    if s.format != "auto":
        _check_kind(s.format, paired)
        return s.format
    columns = set(map(str, frame.columns))
    first = frame.iloc[0].to_dict() if len(frame) else {}
    conversation = _messages_column(s, columns)
    if {s.chosen_column, s.rejected_column} <= columns:
        if s.messages_column is None and s.prompt_column in columns:
            detected = "conversational" if _is_list(first.get(s.prompt_column)) else "standard"
        elif s.messages_column is not None or conversation is not None:
            detected = "sharegpt"
        else:
            detected = "implicit_prompt"
    elif s.label_column in columns and s.messages_column is None and s.completion_column in columns:
        detected = ("unpaired_conversational" if _is_list(first.get(s.prompt_column))
                    else "unpaired_standard")
    elif s.label_column in columns and (s.messages_column is not None or conversation is not None):
        detected = "unpaired_messages"
    else:
        raise DataError(
            f"cannot tell the preference format from the columns ({_listing(frame)}); paired data "
            f"needs '{s.chosen_column}' and '{s.rejected_column}' (with '{s.prompt_column}' or a "
            f"conversation column), unpaired data '{s.label_column}' with '{s.completion_column}' "
            "or a conversation column. Set prompt_column / chosen_column / rejected_column / "
            "completion_column / label_column / messages_column to your column names.")
    _check_kind(detected, paired)
    return detected


def _check_kind(fmt: str, paired: bool | None) -> None:
    if paired is True and fmt not in PAIRED_FORMATS:
        raise DataError(f"the data is unpaired ({fmt}: one completion per row with a label), but "
                        "this objective needs chosen / rejected pairs; use paired data or an "
                        "unpaired objective (KTO).")
    if paired is False and fmt not in UNPAIRED_FORMATS:
        raise DataError(f"the data is paired ({fmt}: chosen / rejected per row), but this reads one "
                        "labelled completion per row; set data.preference.unpair=true (each pair becomes "
                        "a desirable and an undesirable example), or use a paired objective.")


def _messages_column(s: PreferenceColumns, columns: set[str]) -> str | None:
    if s.messages_column is not None:
        return s.messages_column if s.messages_column in columns else None
    return next((c for c in MESSAGES_COLUMNS if c in columns), None)


def _needed_columns(fmt: str, s: PreferenceColumns, columns: set[str]) -> list[tuple[str, str]]:
    """(column, settings key naming it) for each column the format reads."""
    conversation = ((_messages_column(s, columns) or s.messages_column or MESSAGES_COLUMNS[0]),
                    "messages_column")
    chosen, rejected = (s.chosen_column, "chosen_column"), (s.rejected_column, "rejected_column")
    prompt, label = (s.prompt_column, "prompt_column"), (s.label_column, "label_column")
    needed = {"standard": [prompt, chosen, rejected], "conversational": [prompt, chosen, rejected],
              "implicit_prompt": [chosen, rejected], "sharegpt": [conversation, chosen, rejected],
              "unpaired_standard": [prompt, (s.completion_column, "completion_column"), label],
              "unpaired_conversational": [prompt, (s.completion_column, "completion_column"), label],
              "unpaired_messages": [conversation, label]}[fmt]
    if s.margin_column is not None and fmt in PAIRED_FORMATS:
        needed.append((s.margin_column, "margin_column"))
    return needed


def _prepare(frame: pd.DataFrame, settings: Any, paired: bool) -> tuple[PreferenceColumns, str, list]:
    s = PreferenceColumns.of(settings)
    if len(frame) == 0:
        raise DataError(f"the preference data has no rows (columns: {_listing(frame)}); add rows.")
    fmt = detect_format(frame, s, paired)
    columns = set(map(str, frame.columns))
    needed = _needed_columns(fmt, s, columns)
    for column, key in needed:
        if column not in columns:
            raise DataError(f"column '{column}' not found (format {fmt}); columns are: "
                            f"{_listing(frame)}. Set {key} to the column that holds it"
                            f"{'' if s.format == 'auto' else ', or format=auto'}.")
    if s.format == "auto":
        log.info("preference data: format '%s' detected from the columns (%s); set format to "
                 "choose another.", fmt, ", ".join(c for c, _ in needed))
    return s, fmt, [c for c, _ in needed]


# -- reading ----------------------------------------------------------------------------------------

def _read(frame: pd.DataFrame, columns: PreferenceColumns | Mapping[str, Any] | None, paired: bool,
          record: Callable[[_Rows, PreferenceColumns, dict[str, Any], dict[str, Any]], Any]) -> list[Any]:
    """`record(reader, settings, row, extra)` for every row, the reader pointed at the row's
    number (1-based) so a malformed row is named in its error."""
    s, fmt, used = _prepare(frame, columns, paired=paired)
    reader = _Rows(s, fmt)
    records = []
    for number, row in enumerate(frame.to_dict(orient="records"), start=1):
        reader.row = number
        records.append(record(reader, s, row, _extra(row, used)))
    return records


def _pair(reader: _Rows, s: PreferenceColumns, row: dict[str, Any], extra: dict[str, Any]) -> PreferencePair:
    margin = reader.margin(row[s.margin_column]) if s.margin_column is not None else None
    return PreferencePair(*reader.pair(row), margin, extra)


def _example(reader: _Rows, s: PreferenceColumns, row: dict[str, Any],
             extra: dict[str, Any]) -> PreferenceExample:
    return PreferenceExample(*reader.unpaired(row), reader.label(row[s.label_column]), extra)


def read_pairs(frame: pd.DataFrame,
               columns: PreferenceColumns | Mapping[str, Any] | None = None) -> list[PreferencePair]:
    """Every row of `frame` as a PreferencePair; the first malformed row stops it (DataError)."""
    return _read(frame, columns, True, _pair)


def read_unpaired(frame: pd.DataFrame,
                  columns: PreferenceColumns | Mapping[str, Any] | None = None) -> list[PreferenceExample]:
    """Every row of `frame` as a PreferenceExample (KTO); the first malformed row stops it."""
    return _read(frame, columns, False, _example)


def read_responses(frame: pd.DataFrame, prompt_column: str, response_column: str,
                   columns: PreferenceColumns | Mapping[str, Any] | None = None,
                   allow_empty: bool = False) -> list[tuple[Prompt, str]]:
    """(prompt, response) rows to score (a reward model's predictions): the prompt is text or a
    list of messages (normalised as in training data), the response text; the first malformed
    row stops it (DataError naming the row). `allow_empty`: an empty response is scored (a
    policy's sample that ended at once) instead of refused (a file's row)."""
    settings = PreferenceColumns.of(columns)
    reader = _Rows(settings, "conversational")
    rows = []
    for number, row in enumerate(frame.to_dict(orient="records"), start=1):
        reader.row = number
        value = row[prompt_column]
        prompt = (reader.messages(value, prompt_column) if _is_list(value)
                  else reader.text(value, prompt_column, is_prompt=True))
        response = reader.text(row[response_column], response_column)
        if not response.strip() and not allow_empty:
            raise reader.fail(f"'{response_column}' is empty; give the response text to score, or drop "
                              "the row.")
        rows.append((prompt, response))
    return rows


def unpair(pairs: list[PreferencePair]) -> list[PreferenceExample]:
    """Paired data for an unpaired objective: each pair → its chosen (desirable) and rejected
    (undesirable) completion, in that order."""
    return [example for p in pairs for example in
            (PreferenceExample(p.prompt, p.chosen, True, p.extra),
             PreferenceExample(p.prompt, p.rejected, False, p.extra))]


class _Rows:
    """Normalises one row at a time; `row` (1-based) is the row its errors name."""

    def __init__(self, settings: PreferenceColumns, fmt: str):
        self.s = settings
        self.fmt = fmt
        self.row = 0

    def fail(self, message: str) -> DataError:
        return DataError(f"row {self.row}: {message}")

    # pairs

    def pair(self, row: dict[str, Any]) -> tuple[Prompt, str, str]:
        s, fmt = self.s, self.fmt
        chosen_cell, rejected_cell = row[s.chosen_column], row[s.rejected_column]
        if fmt == "standard":
            prompt = self.text(row[s.prompt_column], s.prompt_column, is_prompt=True)
            chosen = self.text(chosen_cell, s.chosen_column)
            rejected = self.text(rejected_cell, s.rejected_column)
            self.check_responses(chosen, rejected)
            return prompt, chosen, rejected
        if fmt == "implicit_prompt":
            before: list[Message] = []
            chosen_turns = self.messages(chosen_cell, s.chosen_column, whole=True)
            rejected_turns = self.messages(rejected_cell, s.rejected_column, whole=True)
        else:
            prompt_column = s.prompt_column if fmt == "conversational" else self.conversation(row)
            before = self.messages(row[prompt_column], prompt_column)
            chosen_turns = self.messages(chosen_cell, s.chosen_column, response=True)
            rejected_turns = self.messages(rejected_cell, s.rejected_column, response=True)
        prompt, chosen = self.split(before + chosen_turns, s.chosen_column)
        prompt_r, rejected = self.split(before + rejected_turns, s.rejected_column)
        if prompt != prompt_r:
            at = next((i for i, (a, b) in enumerate(zip(prompt, prompt_r, strict=False))
                       if a != b),
                      min(len(prompt), len(prompt_r)))
            where = (f"'{s.chosen_column}' and '{s.rejected_column}'" if fmt == "implicit_prompt"
                     else f"prompt + '{s.chosen_column}' and prompt + '{s.rejected_column}'")
            raise self.fail(f"the prompts of the two conversations differ ({where} part at message "
                            f"{at + 1}); a pair shares everything before its final assistant turn, "
                            "so make the two identical up to their last message, or drop the row.")
        self.check_responses(chosen, rejected)
        return prompt, chosen, rejected

    def check_responses(self, chosen: str, rejected: str) -> None:
        for name, text in ((self.s.chosen_column, chosen), (self.s.rejected_column, rejected)):
            if not text.strip():
                raise self.fail(f"'{name}' is empty; give the response text, or drop the row.")
        if chosen.strip() == rejected.strip():
            raise self.fail(f"'{self.s.chosen_column}' and '{self.s.rejected_column}' are the same "
                            "text, so there is no preference to learn; fix or drop the row.")

    def margin(self, value: Any) -> float:
        if _is_missing(value):
            raise self.fail(f"'{self.s.margin_column}' has no value; fill it in every row, or unset "
                            "margin_column.")
        try:
            number = float(value)
            if isinstance(value, bool) or not math.isfinite(number):
                raise ValueError
        except (TypeError, ValueError):
            raise self.fail(f"'{self.s.margin_column}' is {_short(value)}, not a number; give how "
                            "much better chosen is as a number, or unset margin_column.") from None
        return number

    # unpaired

    def unpaired(self, row: dict[str, Any]) -> tuple[Prompt, str]:
        s, fmt = self.s, self.fmt
        if fmt == "unpaired_standard":
            prompt = self.text(row[s.prompt_column], s.prompt_column, is_prompt=True)
            completion = self.text(row[s.completion_column], s.completion_column)
        elif fmt == "unpaired_messages":
            column = self.conversation(row)
            prompt, completion = self.split(self.messages(row[column], column, whole=True), column)
        else:
            turns = (self.messages(row[s.prompt_column], s.prompt_column)
                     + self.messages(row[s.completion_column], s.completion_column, response=True))
            prompt, completion = self.split(turns, s.completion_column)
        if not completion.strip():
            where = (f"the last message of '{self.conversation(row)}'" if fmt == "unpaired_messages"
                     else f"'{s.completion_column}'")
            raise self.fail(f"{where} is empty; give the response text, or drop the row.")
        return prompt, completion

    def label(self, value: Any) -> bool:
        if isinstance(value, bool) or type(value).__name__ == "bool_":
            return bool(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1):
            return bool(value)
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy integer
            return self.label(value.item())
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
            return value.strip().lower() in ("true", "1")
        what = "has no value" if _is_missing(value) else f"is {_short(value)}"
        raise self.fail(f"'{self.s.label_column}' {what}, not true / false; mark each completion "
                        "desirable with true / false (or 1 / 0).")

    # shared

    def conversation(self, row: dict[str, Any]) -> str:
        column = _messages_column(self.s, set(row))
        assert column is not None  # _prepare checked it
        return column

    def text(self, value: Any, column: str, is_prompt: bool = False) -> str:
        fmt = self.fmt
        if isinstance(value, str):
            return value
        if _is_missing(value):
            if is_prompt:
                raise self.fail(f"'{column}' has no value; give it text (an empty string for no "
                                "prompt), or drop the row.")
            raise self.fail(f"'{column}' has no value; give the response text, or drop the row.")
        if _is_list(value) or isinstance(value, dict):
            raise self.fail(f"'{column}' holds messages, but format {fmt} reads text; give every "
                            "column in the same shape (all text, or all messages — format "
                            f"{'unpaired_' if fmt.startswith('unpaired') else ''}conversational).")
        raise self.fail(f"'{column}' is {_short(value)}; expected text.")

    def messages(self, value: Any, column: str, whole: bool = False,
                 response: bool = False) -> list[Message]:
        """A cell of messages, normalised. A response cell may also be one message or, after a
        prompt of messages, plain text (the assistant's)."""
        if response and isinstance(value, str):
            return [{"role": "assistant", "content": value}]
        if response and isinstance(value, dict):
            value = [value]
        if _is_missing(value):
            raise self.fail(f"'{column}' has no value; give it a list of messages, or drop the row.")
        if not _is_list(value):
            if isinstance(value, str) and self.fmt == "implicit_prompt":
                raise self.fail(f"'{column}' is text, and there is no '{self.s.prompt_column}' "
                                "column to give the prompt; set prompt_column to the column "
                                "holding it (text pairs need one), or give whole conversations.")
            shape = "text" if isinstance(value, str) else _short(value)
            hint = "; with text prompts use format standard" if isinstance(value, str) else ""
            raise self.fail(f"'{column}' is {shape}, but format {self.fmt} reads a list of "
                            f"{{role, content}} messages there{hint}.")
        if len(value) == 0 and not response:
            raise self.fail(f"'{column}' is an empty conversation; give it messages, or drop the row.")
        return [self.message(m, column, i) for i, m in enumerate(value, start=1)]

    def message(self, message: Any, column: str, index: int) -> Message:
        where = f"message {index} of '{column}'"
        if not isinstance(message, dict):
            raise self.fail(f"{where} is {_short(message)}; each message is an object like "
                            '{"role": "user", "content": "…"}.')
        s = self.s
        keys = ((s.role_key, s.content_key) if s.role_key is not None
                else next((k for k in MESSAGE_KEYS if k[0] in message), None))
        if keys is None or keys[0] not in message or keys[1] not in message:
            wanted = (f"{s.role_key}/{s.content_key}" if s.role_key is not None
                      else " or ".join("/".join(k) for k in MESSAGE_KEYS))
            raise self.fail(f"{where} has keys {sorted(map(str, message))}, not {wanted}; set "
                            "role_key and content_key to the keys your messages use.")
        role, content = message[keys[0]], message[keys[1]]
        if not isinstance(role, str) or role not in s.roles:
            raise self.fail(f"{where} has role {_short(role)}, which is not mapped; set "
                            f"roles.{role}=<{'|'.join(ROLES)}> (mapped now: "
                            f"{', '.join(sorted(s.roles))}).")
        if not isinstance(content, str):
            what = "no content" if _is_missing(content) else f"content {_short(content)}"
            raise self.fail(f"{where} has {what}; message content must be text.")
        return {"role": s.roles[role], "content": content}

    def split(self, turns: list[Message], column: str) -> tuple[list[Message], str]:
        """A conversation → (everything before its final assistant turn, that turn's text)."""
        if not turns or turns[-1]["role"] != "assistant":
            last = turns[-1]["role"] if turns else "nothing"
            raise self.fail(f"the conversation through '{column}' ends with {last}, not an "
                            "assistant turn; the response must be the last message, from the "
                            "assistant (map its role with roles.<name>=assistant if it is named "
                            "otherwise).")
        if len(turns) == 1:
            raise self.fail(f"the conversation through '{column}' is only the assistant's answer; "
                            "give the user message it answers before it.")
        return turns[:-1], turns[-1]["content"]


# -- helpers ----------------------------------------------------------------------------------------

def _is_list(value: Any) -> bool:
    # Parquet hands list cells back as numpy arrays.
    return isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray"


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _short(value: Any, limit: int = 40) -> str:
    """A value as a message can quote it: its repr (one line), cut at `limit` characters."""
    if isinstance(value, (dict, list)):
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    else:
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _listing(frame: pd.DataFrame) -> str:
    return ", ".join(map(str, frame.columns)) or "none"


def _extra(row: dict[str, Any], used: list[str]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in used}
