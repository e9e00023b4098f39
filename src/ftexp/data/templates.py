"""Rows → prompt and response text (column templates) or token ids with an assistant mask (chat).

Column templates are Python format strings whose `{placeholders}` name columns. What happens to
an empty placeholder is declared, never implicit (data.empty_fields):
  keep            render it as an empty string;
  drop_paragraph  drop the blank-line-separated paragraph that holds it (Alpaca's optional
                  "### Input:" section);
  error           stop with the row number.
"""

from __future__ import annotations

import math
import string
from typing import Any

from ftexp.runs.errors import DataError


def placeholders(template: str) -> list[str]:
    """Column names a template refers to, in order."""
    names = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    bad = [n for n in names if not n.isidentifier()]
    if bad:
        raise DataError(f"template placeholder {{{bad[0]}}} is not a column name; use {{column}} "
                        "(double the braces, {{ }}, for literal ones).")
    return list(dict.fromkeys(names))


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def render(template: str, row: dict[str, Any], empty_fields: str, row_number: int = 0) -> str:
    """Fill `template` from `row` (column → value) under the empty-field policy."""
    fields = placeholders(template)
    empty = {name for name in fields if _is_empty(row.get(name))}
    if empty and empty_fields == "error":
        raise DataError(f"row {row_number}: column(s) {sorted(empty)} are empty but the template "
                        "uses them; fill them or set data.empty_fields=keep / drop_paragraph.")
    if empty and empty_fields == "drop_paragraph":
        paragraphs = template.split("\n\n")
        template = "\n\n".join(p for p in paragraphs if not (set(placeholders(p)) & empty))
    values = {name: "" if name in empty else str(row[name]) for name in fields}
    return template.format(**values)



def chat_ids_and_mask(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
    """Token ids of a conversation through the tokenizer's chat template, and which of them the
    assistant wrote (the only ones trained on).

    Assistant spans are found by rendering growing prefixes of the conversation: the tokens
    between "everything before, with the generation prompt" and "everything up to this message"
    are the assistant's. That needs a template whose rendering of a prefix is a prefix of the
    full rendering; the check below refuses one that is not.
    """
    def ids(upto: int, generation_prompt: bool) -> list[int]:
        out = tokenizer.apply_chat_template(messages[:upto], tokenize=True,
                                            add_generation_prompt=generation_prompt)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    full = ids(len(messages), False)
    mask = [False] * len(full)
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before, upto = ids(i, True), ids(i + 1, False)
        if full[:len(upto)] != upto or upto[:len(before)] != before:
            raise DataError("the chat template does not render a conversation prefix as a prefix "
                            "of the whole; its assistant turns cannot be located.")
        mask[len(before):len(upto)] = [True] * (len(upto) - len(before))
    return full, mask
