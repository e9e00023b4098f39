"""Content-addressed caches shared by runs (tokenized splits, encoder embeddings).

An entry is stored under a key hashed from everything that determines it: data file contents,
the tokenizer's files, the settings that shape the encoding, model weights. Change any of them
and the key changes, so a stale entry is never read; change none and every run and sweep trial
reuses it. Entries are written to a temporary name and renamed, so a killed run never leaves a
half-written entry behind, and read with `weights_only` (plain containers and tensors only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from ftexp.runs import atomic

log = logging.getLogger(__name__)

T = TypeVar("T")
# Bump when what an entry holds changes shape, so old entries are not misread.
FORMAT_VERSION = 1
# Files larger than this have their digest remembered by (size, mtime) (see file_digest).
_MEMO_BYTES = 64 * 2**20
# A file modified less than this long ago may be rewritten again within the clock's resolution
# without its mtime changing ("racy git"); its digest is not remembered.
_RACY_SECONDS = 2.0


def digest(*parts: Any) -> str:
    """A stable hex key for JSON-able parts (dict order does not matter)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(2**22), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path: str | Path, memo_dir: str | Path | None = None) -> str:
    """sha256 of a file's contents. Hashing gigabytes of weights on every run would cost seconds,
    so for large files the digest is remembered under `memo_dir`, keyed by path, size and mtime
    in nanoseconds — any rewrite changes those (files modified in the last seconds are never
    remembered, as their mtime may not have ticked yet)."""
    path = Path(path).resolve()
    stat = path.stat()
    if memo_dir is None or stat.st_size < _MEMO_BYTES:
        return _hash_file(path)
    memo = Path(memo_dir) / "file_digests" / f"{digest(str(path), stat.st_size, stat.st_mtime_ns)}.txt"
    if memo.is_file():
        return memo.read_text().strip()
    value = _hash_file(path)
    if time.time() - stat.st_mtime > _RACY_SECONDS:
        atomic.write_text(memo, value)
    return value


def directory_digest(directory: str | Path, memo_dir: str | Path | None = None) -> str:
    """Digest of every file under a directory (names and contents)."""
    root = Path(directory)
    files = sorted(p for p in root.rglob("*") if p.is_file() and ".cache" not in p.parts)
    return digest([(str(p.relative_to(root)), file_digest(p, memo_dir)) for p in files])


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Digest of the files the tokenizer saves: vocabulary, merges, normalisation, special tokens,
    added tokens, chat template. Two tokenizers that encode alike save alike.

    A fast tokenizer's JSON also records the truncation / padding of its last call, which says
    nothing about how it encodes (our calls pass them explicitly); those are left out."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        state = Path(tmp) / "tokenizer.json"
        if state.is_file():
            backend = json.loads(state.read_text(encoding="utf-8"))
            backend.pop("truncation", None)
            backend.pop("padding", None)
            state.write_text(json.dumps(backend, sort_keys=True), encoding="utf-8")
        return directory_digest(tmp)


class ContentCache:
    """Entries of one kind (`tokenized`, `embeddings`) under `<root>/<kind>/<key>.pt`.

    `events` records what each lookup did (hit / miss) for the run's metrics."""

    def __init__(self, root: str | Path, kind: str):
        self.root = Path(root)
        self.kind = kind
        self.events: list[str] = []

    def path(self, key: str) -> Path:
        return self.root / self.kind / f"{key}.pt"

    def get_or_compute(self, key: str, compute: Callable[[], T], what: str) -> T:
        """The stored entry for `key`, or `compute()`'s result, stored for next time."""
        path = self.path(key)
        if path.is_file():
            try:
                value = torch.load(path, weights_only=True)
            except Exception as err:  # unreadable: recompute and overwrite, never fail the run
                log.warning("cache entry %s is unreadable (%s); recomputing.", path, err)
            else:
                self.events.append("hit")
                log.info("cache hit: %s (%s, %.1f MiB)", what, key[:12], path.stat().st_size / 2**20)
                return value
        self.events.append("miss")
        log.info("cache miss: %s (%s); computing.", what, key[:12])
        value = compute()
        with atomic.atomic_open(path, "wb") as f:
            torch.save(value, f)
        log.info("cached %s: %.1f MiB in %s", what, path.stat().st_size / 2**20, path.parent)
        return value
