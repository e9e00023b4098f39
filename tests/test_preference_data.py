"""Preference data: every shape people have it in reads to the same normalised records, the shipped
samples (and, where present, their full sources) read whole, and each malformed row gets one line
naming its row number and the fix."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ftexp.data.preference import (
    PreferenceColumns,
    PreferenceExample,
    PreferencePair,
    detect_format,
    read_pairs,
    read_unpaired,
    unpair,
)
from ftexp.data.readers import read_table
from ftexp.runs.errors import ConfigError, DataError
from ftexp.runs.paths import data_dir

SAMPLES = data_dir() / "preference"
FULL = Path(__file__).resolve().parents[2] / "shared/datasets/preference"


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "Be brief."}
PROMPT = [SYSTEM, user("2+2?")]


def frame(*records: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame.from_records(list(records))


# -- the formats ------------------------------------------------------------------------------------

PAIR_FORMATS = {
    "standard": (
        frame({"prompt": "2+2?", "chosen": "4", "rejected": "5", "id": 7}),
        PreferencePair("2+2?", "4", "5", extra={"id": 7})),
    "conversational": (
        frame({"prompt": PROMPT, "chosen": [assistant("4")], "rejected": [assistant("5")], "id": 7}),
        PreferencePair(PROMPT, "4", "5", extra={"id": 7})),
    "implicit_prompt": (
        frame({"chosen": PROMPT + [assistant("4")], "rejected": PROMPT + [assistant("5")], "id": 7}),
        PreferencePair(PROMPT, "4", "5", extra={"id": 7})),
    "sharegpt": (
        frame({"conversations": [{"from": "system", "value": "Be brief."},
                                 {"from": "human", "value": "2+2?"}],
               "chosen": {"from": "gpt", "value": "4"}, "rejected": {"from": "gpt", "value": "5"},
               "id": 7}),
        PreferencePair(PROMPT, "4", "5", extra={"id": 7})),
}

UNPAIRED_FORMATS = {
    "unpaired_standard": (
        frame({"prompt": "2+2?", "completion": "4", "label": True},
              {"prompt": "2+2?", "completion": "5", "label": False}),
        [PreferenceExample("2+2?", "4", True), PreferenceExample("2+2?", "5", False)]),
    "unpaired_conversational": (
        frame({"prompt": PROMPT, "completion": [assistant("4")], "label": True},
              {"prompt": PROMPT, "completion": [assistant("5")], "label": False}),
        [PreferenceExample(PROMPT, "4", True), PreferenceExample(PROMPT, "5", False)]),
    "unpaired_messages": (
        frame({"messages": PROMPT + [assistant("4")], "label": True},
              {"messages": PROMPT + [assistant("5")], "label": False}),
        [PreferenceExample(PROMPT, "4", True), PreferenceExample(PROMPT, "5", False)]),
}


@pytest.mark.parametrize("fmt", PAIR_FORMATS)
def test_each_paired_format_reads_to_the_same_pair(fmt, caplog):
    table, expected = PAIR_FORMATS[fmt]
    with caplog.at_level(logging.INFO, logger="ftexp.data.preference"):
        assert read_pairs(table) == [expected]
    assert f"format '{fmt}' detected" in caplog.text
    assert detect_format(table) == fmt
    # Naming the format gives the same records and no detection line.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ftexp.data.preference"):
        assert read_pairs(table, {"format": fmt}) == [expected]
    assert "detected" not in caplog.text


@pytest.mark.parametrize("fmt", UNPAIRED_FORMATS)
def test_each_unpaired_format_reads_to_the_same_examples(fmt, caplog):
    table, expected = UNPAIRED_FORMATS[fmt]
    with caplog.at_level(logging.INFO, logger="ftexp.data.preference"):
        assert read_unpaired(table) == expected
    assert f"format '{fmt}' detected" in caplog.text
    assert read_unpaired(table, PreferenceColumns(format=fmt)) == expected


def test_multi_turn_history_belongs_to_the_prompt():
    history = [user("hi"), assistant("hello"), user("2+2?")]
    implicit = frame({"chosen": history + [assistant("4")], "rejected": history + [assistant("5")]})
    assert read_pairs(implicit) == [PreferencePair(history, "4", "5")]
    # TRL conversational with several response messages: what they share moves into the prompt.
    shared_turns = frame({"prompt": [user("hi")], "chosen": [assistant("hello"), user("2+2?"),
                                                             assistant("4")],
                          "rejected": [assistant("hello"), user("2+2?"), assistant("5")]})
    assert read_pairs(shared_turns) == [PreferencePair(history, "4", "5")]


def test_column_names_message_keys_and_roles_are_settings():
    table = frame({"question": [{"speaker": "bot_user", "text": "2+2?"}],
                   "good": {"speaker": "bot", "text": "4"}, "bad": "5", "score": "1.5"})
    settings = {"messages_column": "question", "chosen_column": "good", "rejected_column": "bad",
                "margin_column": "score", "role_key": "speaker", "content_key": "text",
                "roles": {"bot_user": "user", "bot": "assistant"}}
    assert detect_format(table, settings) == "sharegpt"
    # A text response after a prompt of messages is the assistant's.
    assert read_pairs(table, settings) == [PreferencePair([user("2+2?")], "4", "5", margin=1.5)]


def test_margin_and_other_columns():
    table = frame({"prompt": "q", "chosen": "a", "rejected": "b", "margin": 2, "split": "train"})
    [pair] = read_pairs(table, {"margin_column": "margin"})
    assert pair.margin == 2.0 and pair.extra == {"split": "train"}
    [pair] = read_pairs(table)
    assert pair.margin is None and pair.extra == {"margin": 2, "split": "train"}


def test_parquet_list_cells_read_like_lists():
    # pandas.read_parquet hands list cells back as numpy arrays.
    table = frame({"messages": np.array(PROMPT + [assistant("4")], dtype=object), "label": np.int64(1)})
    assert read_unpaired(table) == [PreferenceExample(PROMPT, "4", True)]


@pytest.mark.parametrize("label, desirable", [
    (True, True), (False, False), (np.bool_(True), True), (1, True), (0, False), (1.0, True),
    (np.int64(0), False), ("true", True), ("False", False), (" TRUE ", True), ("1", True), ("0", False)])
def test_kto_labels_accepted(label, desirable):
    table = frame({"prompt": "q", "completion": "a", "label": label})
    assert read_unpaired(table)[0].desirable is desirable


def test_unpair_splits_each_pair_into_a_desirable_and_an_undesirable_completion():
    pairs = read_pairs(PAIR_FORMATS["conversational"][0])
    assert unpair(pairs) == [PreferenceExample(PROMPT, "4", True, {"id": 7}),
                             PreferenceExample(PROMPT, "5", False, {"id": 7})]


def test_the_module_does_not_import_torch():
    code = "import sys, ftexp.data.preference; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the shipped samples and their sources ----------------------------------------------------------

def test_shipped_samples_read_as_sharegpt_and_unpaired_messages():
    dpo = read_table(SAMPLES / "dpo_en_demo_sample.json")
    kto = read_table(SAMPLES / "kto_en_demo_sample.json")
    assert detect_format(dpo) == "sharegpt" and detect_format(kto) == "unpaired_messages"
    pairs, examples = read_pairs(dpo), read_unpaired(kto)
    assert len(pairs) == 60 and len(examples) == 60
    assert sum(e.desirable for e in examples) == 38
    assert sum(p.prompt[0]["role"] == "system" for p in pairs) == 20
    assert all(p.prompt[-1]["role"] == "user" for p in pairs)
    for path in SAMPLES.glob("*.json"):
        assert path.stat().st_size < 150_000, path


@pytest.mark.skipif(not FULL.is_dir(), reason="the full LLaMA-Factory files are not here (../shared)")
def test_full_source_files_read_whole():
    assert len(read_pairs(read_table(FULL / "dpo_en_demo.json"))) == 300
    examples = read_unpaired(read_table(FULL / "kto_en_demo.json"))
    assert len(examples) == 300 and sum(e.desirable for e in examples) == 150


# -- malformed rows ---------------------------------------------------------------------------------

GOOD = {"prompt": "q", "chosen": "a", "rejected": "b"}
GOOD_KTO = {"messages": [user("q"), assistant("a")], "label": True}

# (case id, rows (the bad one last), settings, paired reader?, row number or None, expected fragment)
BAD = [
    ("missing column", [GOOD], {"format": "standard", "prompt_column": "question"}, True, None,
     "column 'question' not found (format standard); columns are: prompt, chosen, rejected. "
     "Set prompt_column"),
    ("missing margin column", [GOOD], {"margin_column": "score"}, True, None,
     "column 'score' not found"),
    ("missing completion column", [{"prompt": "q", "answer": "a", "label": True}],
     {"format": "unpaired_standard"}, False, None, "columns are: prompt, answer, label"),
    ("no format fits", [{"question": "q", "answer": "a"}], {}, True, None,
     "cannot tell the preference format from the columns (question, answer)"),
    ("unpaired data for a paired reader", [GOOD_KTO], {}, True, None, "the data is unpaired"),
    ("paired data for an unpaired reader", [GOOD], {}, False, None, "data.preference.unpair=true"),
    ("empty chosen", [GOOD, {**GOOD, "chosen": "  "}], {}, True, 2,
     "'chosen' is empty; give the response text"),
    ("empty rejected message", [{"prompt": [user("q")], "chosen": [assistant("a")],
                                 "rejected": [assistant("")]}],
     {"format": "conversational"}, True, 1, "'rejected' is empty"),
    ("missing chosen", [GOOD, {**GOOD, "chosen": None}], {}, True, 2, "'chosen' has no value"),
    ("chosen equals rejected", [GOOD, GOOD, {**GOOD, "rejected": "a "}], {}, True, 3,
     "'chosen' and 'rejected' are the same text"),
    ("chosen holds messages in standard", [GOOD, {**GOOD, "chosen": [assistant("a")]}], {}, True, 2,
     "'chosen' holds messages, but format standard reads text"),
    ("text prompt in conversational", [{"prompt": [user("q")], "chosen": [assistant("a")],
                                        "rejected": [assistant("b")]},
                                       {"prompt": "q", "chosen": [assistant("a")],
                                        "rejected": [assistant("b")]}],
     {}, True, 2, "'prompt' is text, but format conversational reads a list"),
    ("text pairs without a prompt column", [{"chosen": "q a", "rejected": "q b"}], {}, True, 1,
     "there is no 'prompt' column to give the prompt; set prompt_column"),
    ("implicit prompts differ", [{"chosen": [user("q"), assistant("a")],
                                  "rejected": [user("q"), assistant("b")]},
                                 {"chosen": [user("q"), assistant("a")],
                                  "rejected": [user("other q"), assistant("b")]}],
     {}, True, 2, "the prompts of the two conversations differ ('chosen' and 'rejected' part at "
                  "message 1)"),
    ("implicit lengths differ", [{"chosen": [user("q"), assistant("a"), user("more"), assistant("c")],
                                  "rejected": [user("q"), assistant("b")]}],
     {}, True, 1, "part at message 2"),
    ("conversation ends with the user", [GOOD_KTO, {"messages": [user("q"), assistant("a"), user("?")],
                                                    "label": False}],
     {}, False, 2, "ends with user, not an assistant turn"),
    ("sharegpt response from the human", [{"conversations": [{"from": "human", "value": "q"}],
                                           "chosen": {"from": "human", "value": "a"},
                                           "rejected": {"from": "gpt", "value": "b"}}],
     {}, True, 1, "the conversation through 'chosen' ends with user, not an assistant turn"),
    ("only an assistant turn", [{"messages": [assistant("a")], "label": True}], {}, False, 1,
     "is only the assistant's answer"),
    ("unknown role", [GOOD_KTO, {"messages": [{"from": "human", "value": "q"},
                                              {"from": "bot", "value": "a"}], "label": True}],
     {}, False, 2, "message 2 of 'messages' has role 'bot', which is not mapped; set "
                   "roles.bot=<system|user|assistant|tool> (mapped now: assistant, gpt, human, "
                   "system, user)"),
    ("message keys", [{"messages": [{"speaker": "user", "text": "q"}, assistant("a")], "label": 1}],
     {}, False, 1, "message 1 of 'messages' has keys ['speaker', 'text'], not role/content or "
                   "from/value; set role_key and content_key"),
    ("message content not text", [{"messages": [user("q"), {"role": "assistant", "content": None}],
                                   "label": 1}], {}, False, 1, "has no content"),
    ("message not an object", [{"messages": ["q", assistant("a")], "label": 1}], {}, False, 1,
     "message 1 of 'messages' is 'q'"),
    ("empty conversation", [{"messages": [], "label": 1}], {}, False, 1, "is an empty conversation"),
    ("label yes", [GOOD_KTO, GOOD_KTO, {**GOOD_KTO, "label": "yes"}], {}, False, 3,
     "'label' is 'yes', not true / false; mark each completion desirable with true / false "
     "(or 1 / 0)"),
    ("label 2", [{**GOOD_KTO, "label": 2}], {}, False, 1, "'label' is 2, not true / false"),
    ("label missing", [GOOD_KTO, {"messages": GOOD_KTO["messages"]}], {}, False, 2,
     "'label' has no value, not true / false"),
    ("empty completion", [{"prompt": "q", "completion": "", "label": True}], {}, False, 1,
     "'completion' is empty; give the response text"),
    ("empty last message", [{"messages": [user("q"), assistant(" ")], "label": True}], {}, False, 1,
     "the last message of 'messages' is empty"),
    ("margin not a number", [{**GOOD, "score": "high"}], {"margin_column": "score"}, True, 1,
     "'score' is 'high', not a number"),
    ("margin missing", [{**GOOD, "score": 1.0}, {**GOOD, "score": None}], {"margin_column": "score"},
     True, 2, "'score' has no value"),
]


@pytest.mark.parametrize("rows, settings, paired, row, fragment",
                         [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_malformed_rows_get_one_line(rows, settings, paired, row, fragment):
    with pytest.raises(DataError) as caught:
        (read_pairs if paired else read_unpaired)(frame(*rows), settings)
    message = str(caught.value)
    assert "\n" not in message
    assert fragment in message, f"\nexpected: {fragment}\ngot:      {message}"
    if row is not None:
        assert message.startswith(f"row {row}: "), message
    else:
        assert not message.startswith("row "), message


@pytest.mark.parametrize("settings, fragment", [
    ({"format": "dpo"}, "preference format 'dpo' is unknown"),
    ({"chosen": "good"}, "preference setting 'chosen' is unknown; the settings are"),
    ({"roles": {"bot": "robot"}}, "roles.bot='robot' is not a role chat templates know"),
    ({"role_key": "speaker"}, "set role_key and content_key together"),
])
def test_bad_settings_get_one_line(settings, fragment):
    with pytest.raises(ConfigError, match=None) as caught:
        read_pairs(frame(GOOD), settings)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)
