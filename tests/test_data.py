"""Reading, splitting and encoding data: every format, both split modes, and each bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import sentiment_rows
from ftexp.config.data import DataConfig
from ftexp.data.labeled_text import LabeledTextDataModule
from ftexp.data.readers import read_table
from ftexp.data.splits import split_at_random, split_by_column, split_frame
from ftexp.data.targets import SingleLabel
from ftexp.runs.errors import DataError

FRAME = pd.DataFrame({"text": ["a b", "c d", "e f", "g h"], "label": [0, 1, 0, 1]})


def _write(frame: pd.DataFrame, path: Path) -> Path:
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif suffix == ".json":
        path.write_text(json.dumps(frame.to_dict(orient="records")))
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_every_format_reads_back_the_same_rows(suffix: str, tmp_path: Path):
    frame = read_table(_write(FRAME, tmp_path / f"d{suffix}"))
    assert frame["text"].tolist() == FRAME["text"].tolist()
    assert frame["label"].tolist() == FRAME["label"].tolist()


def test_split_column_accepts_common_names():
    frame = FRAME.assign(split=["train", "dev", "TEST", "training"])
    splits = split_by_column(frame, "split")
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [2, 1, 1]


def test_random_split_is_seeded_disjoint_and_proportional():
    frame = pd.DataFrame({"text": [str(i) for i in range(1000)], "label": [i % 2 for i in range(1000)]})
    first = split_at_random(frame, [0.8, 0.1, 0.1], seed=7)
    again = split_at_random(frame, [0.8, 0.1, 0.1], seed=7)
    other = split_at_random(frame, [0.8, 0.1, 0.1], seed=8)
    assert [len(first[s]) for s in ("train", "validation", "test")] == [800, 100, 100]
    assert first["train"]["text"].tolist() == again["train"]["text"].tolist()
    assert first["train"]["text"].tolist() != other["train"]["text"].tolist()
    seen = [set(first[s]["text"]) for s in ("train", "validation", "test")]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


BAD_FILES = [
    ("missing", None, "does not exist; check data.path."),
    ("data.xlsx", b"whatever", "cannot tell the format of"),
    ("ragged.csv", b"text,label\na,0\nb,1,extra,more\n", "cannot parse"),
    ("latin1.csv", "text,label\ncaf\xe9,0\n".encode("latin-1"), "is not valid UTF-8"),
    ("empty.csv", b"text,label\n", "has no rows"),
    ("broken.json", b"{not json", "cannot parse"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_files_raise_one_clear_line(name: str, content: bytes | None, message: str, tmp_path: Path):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        read_table(path)
    assert "\n" not in str(info.value)


def test_empty_split_is_reported():
    with pytest.raises(DataError, match="the validation split is empty"):
        split_frame(FRAME.assign(split=["train"] * 4), "split", [0.9, 0.05, 0.05], 0)


def test_single_class_and_unseen_labels_are_reported():
    with pytest.raises(DataError, match="single class"):
        SingleLabel.fit(pd.Series([1, 1]), {}, "label")
    with pytest.raises(DataError, match=r"labels \[7\] in the test split never occur in train"):
        SingleLabel.fit(pd.Series([0, 1]), {"test": pd.Series([0, 7])}, "label")


def _module(path: Path, tokenizer, **overrides) -> LabeledTextDataModule:
    config = DataConfig(path=str(path), **overrides)
    return LabeledTextDataModule(config, tokenizer)


def test_missing_columns_are_named_with_the_columns_that_exist(toy_csv: Path, minilm_tokenizer):
    missing_text = r"text column\(s\) \['review'\] not found .* columns are: text, label"
    with pytest.raises(DataError, match=missing_text):
        _module(toy_csv, minilm_tokenizer, text_columns=["review"]).setup()
    with pytest.raises(DataError, match="label column 'stars' not found .* columns are: text, label"):
        _module(toy_csv, minilm_tokenizer, text_columns=["text"], label_column="stars").setup()


def test_string_labels_map_to_sorted_ids_and_long_texts_are_truncated(tmp_path: Path, minilm_tokenizer,
                                                                      caplog):
    frame = sentiment_rows(60).assign(label=lambda f: f["label"].map({0: "neg", 1: "pos"}))
    frame.loc[0, "text"] = "word " * 100
    module = _module(_write(frame, tmp_path / "d.csv"), minilm_tokenizer, text_columns=["text"],
                     max_length=16, split_probabilities=[0.5, 0.25, 0.25])
    with caplog.at_level("WARNING"):
        module.setup()
    assert module.targets.labels == ["neg", "pos"]
    lengths = [len(r["input_ids"]) for s in module.datasets.values() for r in s.rows]
    assert max(lengths) == 16
    assert "longer than data.max_length=16 tokens and are truncated" in caplog.text


def test_two_text_columns_are_encoded_as_a_pair(tmp_path: Path, minilm_tokenizer):
    frame = pd.DataFrame({"premise": ["a cat sat"] * 8, "hypothesis": ["a dog ran"] * 8,
                          "label": [0, 1] * 4, "split": ["train"] * 4 + ["validation"] * 4})
    module = _module(_write(frame, tmp_path / "p.csv"), minilm_tokenizer,
                     text_columns=["premise", "hypothesis"], split_column="split")
    module.setup()
    row = module.datasets["train"].rows[0]
    assert row["input_ids"].count(minilm_tokenizer.sep_token_id) == 2
    assert set(row["token_type_ids"]) == {0, 1}
