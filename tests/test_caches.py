"""Content-addressed caches: keys that change exactly when what they depend on changes, stale
entries never read, and cached encoder embeddings that train like the encoder and cost no
encoder pass on a second run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config, sentiment_rows, tiny_overrides
from ftexp.data.cache import ContentCache, file_digest, tokenizer_fingerprint
from ftexp.data.embeddings import embedding_key
from ftexp.data.labeled_text import LabeledTextDataModule
from ftexp.predict import predict_file
from ftexp.runs import run_dir
from ftexp.train import train


def _datamodule(data: Path, tokenizer, cache_dir: Path | None, *overrides: str) -> LabeledTextDataModule:
    cfg = compose_config(tiny_overrides(data, *overrides), resolve=False)
    module = LabeledTextDataModule(OmegaConf.to_object(cfg.data), tokenizer,
                                   cache_dir=str(cache_dir) if cache_dir else None)
    module.setup()
    return module


def _first_ids(module: LabeledTextDataModule) -> list[int]:
    return module.datasets["train"][0]["input_ids"]


def test_tokenized_key_changes_exactly_when_an_input_changes(tmp_path: Path, minilm_tokenizer):
    data = tmp_path / "toy.csv"
    sentiment_rows(60).to_csv(data, index=False)
    key = _datamodule(data, minilm_tokenizer, None).encoding_key
    assert _datamodule(data, minilm_tokenizer, None).encoding_key == key  # deterministic
    # Settings that only change how rows are served keep the key.
    for serving in ("data.batch_size=4", "data.eval_batch_size=7", "data.num_workers=1",
                    "data.cache_tokenized=false"):
        assert _datamodule(data, minilm_tokenizer, None, serving).encoding_key == key, serving
    # Everything the encoded rows depend on changes it.
    for changed in ("data.max_length=8", "data.text_columns=[label]", "data.split_seed=3",
                    "data.max_train_samples=10"):
        assert _datamodule(data, minilm_tokenizer, None, changed).encoding_key != key, changed
    other_tokenizer = type(minilm_tokenizer).from_pretrained(minilm_tokenizer.name_or_path)
    other_tokenizer.add_tokens(["brandnewword"])
    assert tokenizer_fingerprint(other_tokenizer) != tokenizer_fingerprint(minilm_tokenizer)
    assert _datamodule(data, other_tokenizer, None).encoding_key != key
    sentiment_rows(60, seed=5).to_csv(data, index=False)  # same path, new contents
    assert _datamodule(data, minilm_tokenizer, None).encoding_key != key


def test_stale_entries_are_never_read(tmp_path: Path, minilm_tokenizer):
    data, cache = tmp_path / "toy.csv", tmp_path / "cache"
    pd.DataFrame({"text": ["good film"] * 20, "label": [1, 0] * 10}).to_csv(data, index=False)
    first = _datamodule(data, minilm_tokenizer, cache)
    assert first.tokenized_cache.events == ["miss"]
    again = _datamodule(data, minilm_tokenizer, cache)
    assert again.tokenized_cache.events == ["hit"] and _first_ids(again) == _first_ids(first)

    # Same file path, new contents (same size too): recomputed, and the new rows are served.
    pd.DataFrame({"text": ["dull film"] * 20, "label": [1, 0] * 10}).to_csv(data, index=False)
    rewritten = _datamodule(data, minilm_tokenizer, cache)
    assert rewritten.tokenized_cache.events == ["miss"]
    assert _first_ids(rewritten) == minilm_tokenizer("dull film")["input_ids"] != _first_ids(first)

    # A new tokenizer that splits the text differently: recomputed with its ids.
    other = type(minilm_tokenizer).from_pretrained(minilm_tokenizer.name_or_path)
    other.add_tokens(["dull film"])
    retokenized = _datamodule(data, other, cache)
    assert retokenized.tokenized_cache.events == ["miss"]
    assert _first_ids(retokenized) == other("dull film")["input_ids"] != _first_ids(rewritten)


def test_unreadable_entry_is_recomputed_not_fatal(tmp_path: Path):
    cache = ContentCache(tmp_path, "tokenized")
    cache.path("k").parent.mkdir(parents=True)
    cache.path("k").write_bytes(b"truncated garbage")
    assert cache.get_or_compute("k", lambda: {"rows": [1, 2]}, "test") == {"rows": [1, 2]}
    assert cache.events == ["miss"]
    assert cache.get_or_compute("k", lambda: {"rows": []}, "test") == {"rows": [1, 2]}
    assert cache.events == ["miss", "hit"]
    assert not list(cache.path("k").parent.glob(".*.tmp"))  # no temporary files left behind


def test_large_file_digest_is_remembered_until_the_file_changes(tmp_path: Path, monkeypatch):
    import ftexp.data.cache as cache_module

    monkeypatch.setattr(cache_module, "_MEMO_BYTES", 10)
    monkeypatch.setattr(cache_module, "_RACY_SECONDS", -1.0)  # remember even fresh files here
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"a" * 100)
    first = file_digest(weights, tmp_path / "memo")
    assert len(list((tmp_path / "memo" / "file_digests").iterdir())) == 1
    assert file_digest(weights, tmp_path / "memo") == first
    weights.write_bytes(b"b" * 101)
    assert file_digest(weights, tmp_path / "memo") != first


def test_embedding_key_covers_weights_pooling_and_numerics(tmp_path: Path):
    model = OmegaConf.to_container(compose_config(["model=tiny_bert"], resolve=False).model)
    quant = {"method": "none"}

    def key(**changes):
        m = {**model, **changes.get("model", {})}
        return embedding_key("data-key", m, changes.get("quant", quant), changes.get("pooling", "auto"),
                             changes.get("precision", "32-true"), tmp_path)

    base = key()
    assert key() == base
    assert key(pooling="cls") != base
    assert key(precision="bf16-mixed") != base
    assert key(model={"dtype": "bfloat16"}) != base
    assert key(model={"random_init": {**model["random_init"], "num_hidden_layers": 1}}) != base
    assert key(quant={"method": "8bit"}) != base
    assert embedding_key("other-data-key", model, quant, "auto", "32-true", tmp_path) != base


def test_cached_embeddings_train_like_the_encoder_and_skip_it_when_warm(tmp_path: Path, margin):
    data = tmp_path / "toy.csv"
    sentiment_rows(240).to_csv(data, index=False)
    cache = tmp_path / "cache"
    common = ["adapter=frozen", "optimizer.learning_rate=3e-2", "trainer.max_epochs=12",
              "data.split_probabilities=[0.6,0.2,0.2]", f"paths.cache_dir={cache}"]

    def run(name: str, *extra: str) -> dict:
        return train(compose_config(tiny_overrides(data, *common, *extra), output_dir=tmp_path / name))

    plain = run("plain")
    cold = run("cold", "data.cache_encoder_embeddings=true")
    warm = run("warm", "data.cache_encoder_embeddings=true")
    assert cold["cache_embeddings"] == "miss" and cold["encoder_forward_passes"] > 0
    assert warm["cache_embeddings"] == "hit" and warm["encoder_forward_passes"] == 0
    assert plain["encoder_forward_passes"] > 0
    # The time spent on the embeddings before fit is reported (it is not in fit_seconds): the
    # encoder pass when cold, reading the stored vectors when warm; nothing without the cache.
    assert "embedding_seconds" not in plain
    assert cold["embedding_seconds"] > warm["embedding_seconds"] > 0
    # Same seed, same head init, same batches: the cached runs train like the encoder path.
    for key in ("val/acc", "test/acc", "val/loss"):
        assert cold[key] == warm[key]
        assert warm[key] == pytest.approx(plain[key], abs=1e-4)
    margin.metrics(warm, ("val/acc", ">", 0.8))  # and the head learned the task

    # The saved model works on raw text (the full encoder), matching the in-run predictions.
    in_run = pd.read_csv(tmp_path / "warm" / run_dir.PREDICTIONS_FILE)
    test_rows = tmp_path / "test_rows.csv"
    in_run[["text"]].to_csv(test_rows, index=False)
    raw = predict_file(tmp_path / "warm", test_rows, tmp_path / "raw_predictions.csv")
    assert list(raw["predicted_label"]) == list(in_run["predicted_label"])
    assert torch.allclose(torch.tensor(raw["prob_1"].values), torch.tensor(in_run["prob_1"].values),
                          atol=1e-4)
    assert json.loads((tmp_path / "warm" / run_dir.METRICS_FILE).read_text())["encoder_forward_passes"] == 0
