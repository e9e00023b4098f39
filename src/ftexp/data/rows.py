"""Encoded rows as a Dataset, the DataLoader built from them, and the DataModule base that
serves the train / validation / test splits and caches their encoding."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Any, Callable, TypeVar

import lightning as L
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from ftexp.data.cache import FORMAT_VERSION, ContentCache, digest, file_digest, tokenizer_fingerprint
from ftexp.data.readers import read_table
from ftexp.runs.errors import ConfigError

T = TypeVar("T")
# Data settings that change how rows are served, not what they encode to.
_SERVING_KEYS = ("path", "batch_size", "max_batch_size", "eval_batch_size", "num_workers",
                 "cache_tokenized", "cache_encoder_embeddings", "group_by_length")


class Rows(Dataset):
    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


class LoaderPosition:
    """Where the training loader stands, shared by the loader and its DataModule, so that a run
    resumed mid-epoch draws the same shuffle and continues after the batches already trained.

    `epoch_start_state` is the shuffle generator's state when the current epoch began; `resume`
    holds (generator state, batches to skip) from a checkpoint until the next epoch starts."""

    def __init__(self) -> None:
        self.generator: torch.Generator | None = None
        self.epoch_start_state: torch.Tensor | None = None
        self.resume: tuple[torch.Tensor | None, int] | None = None


class WindowedLoader(DataLoader):
    """A DataLoader whose batches also carry `window_items`: the number of loss items (trained
    tokens, labelled rows) in the gradient-accumulation window the batch belongs to.

    Averaging the loss per micro-batch and then over micro-batches weighs a token of a short
    batch more than one of a long batch, so 4 accumulated batches of 8 would not train like one
    batch of 32. Dividing each micro-batch's loss sum by the window's item count makes them
    equal; that count needs the whole window, hence the read-ahead of `accumulate` batches.

    `repeat` > 1 serves each window that many times in a row, each copy one optimizer step, its
    batches marked with `repeat_index` (0 for the first) and `window_index` (their place in the
    window): GRPO's `num_iterations` updates on one batch of samples. An epoch's last, shorter
    window is then left out — repeated, its copies would fall into one accumulation window.
    """

    def __init__(self, *args: Any, accumulate: int = 1,
                 count_items: Callable[[dict[str, Any]], int] | None = None,
                 position: LoaderPosition | None = None, repeat: int = 1, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.accumulate = accumulate
        self.count_items = count_items
        self.position = position
        self.repeat = repeat

    def __len__(self) -> int:
        batches = super().__len__()
        if self.repeat == 1:
            return batches
        return batches // self.accumulate * self.accumulate * self.repeat

    def __iter__(self):  # noqa: ANN204 - a generator of batches
        skip = self._start_epoch()
        window: list[dict[str, Any]] = []
        for batch in super().__iter__():
            window.append(batch)
            if len(window) == self.accumulate:
                for served in self._repeated(window):
                    yield from self._annotated(served, skip)
                    skip = max(0, skip - len(served))
                window = []
        if self.repeat == 1:
            yield from self._annotated(window, skip)  # the epoch's last, shorter window

    def _repeated(self, window: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        if self.repeat == 1:
            return [window]
        return [[{**batch, "repeat_index": r, "window_index": j} for j, batch in enumerate(window)]
                for r in range(self.repeat)]

    def _start_epoch(self) -> int:
        """Record (or, when resuming, restore) the shuffle state; return the batches to skip.
        Skipped batches are still read: their window's item count needs them."""
        if self.position is None:
            return 0
        skip = 0
        if self.position.resume is not None:
            state, skip = self.position.resume
            self.position.resume = None
            if state is not None and self.generator is not None:
                self.generator.set_state(state)
        self.position.generator = self.generator
        self.position.epoch_start_state = self.generator.get_state() if self.generator is not None else None
        return skip

    def _annotated(self, window: list[dict[str, Any]], skip: int = 0):  # noqa: ANN202
        if self.count_items is not None and window:
            total = torch.tensor(sum(int(self.count_items(b)) for b in window))
            for batch in window:
                batch["window_items"] = total
        return window[skip:]


def rows_loader(rows: Dataset, batch_size: int, shuffle: bool, collate: Callable, num_workers: int,
                seed: int, accumulate: int = 1,
                count_items: Callable[[dict[str, Any]], int] | None = None,
                position: LoaderPosition | None = None, repeat: int = 1,
                lengths: list[int] | None = None) -> DataLoader:
    # A seeded generator makes the shuffle order a function of the run's seed alone.
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    # `lengths` (data.group_by_length): transformers' length-grouped sampler, as its Trainer's
    # group_by_length; it draws from the same generator, so the order is the seed's and a resumed
    # epoch, which restores the generator (WindowedLoader), draws the same batches again.
    sampler = None
    if shuffle and lengths is not None:
        from transformers.trainer_pt_utils import LengthGroupedSampler

        sampler = LengthGroupedSampler(batch_size, lengths=lengths, generator=generator)
    return WindowedLoader(rows, batch_size=batch_size, shuffle=shuffle and sampler is None,
                          sampler=sampler, collate_fn=collate,
                          num_workers=num_workers, generator=generator,
                          persistent_workers=num_workers > 0, accumulate=accumulate,
                          count_items=count_items, position=position, repeat=repeat)


class RowsDataModule(L.LightningDataModule):
    """Loaders over the encoded splits in `self.datasets`; subclasses fill them (and the rows of
    each split as read, `self.frames`, for per-example outputs) in `setup_splits` from the data
    file's table, encoding through `encode_cached` so runs with the same inputs share the work.

    `batch_size` is an attribute so Lightning's batch-size finder can change it."""

    def __init__(self, config: Any, seed: int, collate: Callable, tokenizer: Any,
                 cache_dir: str | None = None, evaluate_training_set: bool = False):
        super().__init__()
        self.config = config
        self.seed = seed
        self.collate = collate
        self.tokenizer = tokenizer
        self.batch_size = config.batch_size
        self.datasets: dict[str, Dataset] = {}
        self.frames: dict[str, pd.DataFrame] = {}
        # Samples per split where a row may hold several (packing); see num_samples.
        self.sample_counts: dict[str, int] = {}
        self.cache_dir = cache_dir
        self.tokenized_cache = (ContentCache(cache_dir, "tokenized")
                                if cache_dir is not None and config.cache_tokenized else None)
        self.encoding_key: str | None = None
        # trainer.evaluate_training_set: serve the training set as a second validation loader.
        self.evaluate_training_set = evaluate_training_set
        self.train_position = LoaderPosition()
        # Times each accumulation window of training batches is served in a row (WindowedLoader).
        self.train_repeats = 1

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:  # idempotent: Lightning calls setup for fit and again for test
            return
        self.setup_splits(read_table(self.config.path, self.config.format))

    def setup_splits(self, table: pd.DataFrame) -> None:
        """Fill `self.datasets` (and `self.frames`) from the data file's table."""
        raise NotImplementedError

    def encoding_settings(self) -> dict[str, Any]:
        settings = asdict(self.config) if is_dataclass(self.config) else dict(self.config)
        return {k: v for k, v in settings.items() if k not in _SERVING_KEYS}

    def encode_cached(self, compute: Callable[[], T], *key_parts: Any) -> T:
        """`compute()` — the encoded splits — or its stored result for the same data file
        contents, tokenizer, encoding settings and `key_parts`. Sets `self.encoding_key`."""
        self.encoding_key = digest("tokenized", FORMAT_VERSION, file_digest(self.config.path, self.cache_dir),
                                   tokenizer_fingerprint(self.tokenizer), self.encoding_settings(),
                                   key_parts)
        if self.tokenized_cache is None:
            return compute()
        return self.tokenized_cache.get_or_compute(self.encoding_key, compute,
                                                   f"tokenized {self.config.path}")

    def num_samples(self, split: str = "train") -> int:
        """Samples in a split: its rows, or the samples packed into them (data.packing=true)."""
        return self.sample_counts.get(split, len(self.datasets[split]))

    @property
    def num_train_samples(self) -> int:
        return self.num_samples("train")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        batch = self.batch_size if split == "train" else self.config.eval_batch_size
        return rows_loader(self.datasets[split], batch, shuffle, self.collate,
                           self.config.num_workers, self.seed)

    def train_dataloader(self) -> DataLoader:
        # Window settings go through the constructor (not set afterwards) so that Lightning, which
        # re-creates loaders from their init arguments for distributed sampling, keeps them.
        accumulate = self.trainer.accumulate_grad_batches if self.trainer is not None else 1
        lengths = self.train_lengths() if getattr(self.config, "group_by_length", False) else None
        return rows_loader(self.datasets["train"], self.batch_size, True, self.collate,
                           self.config.num_workers, self.seed, accumulate, self.loss_items,
                           self.train_position, self.train_repeats, lengths)

    def train_lengths(self) -> list[int]:
        """Tokens per training row, for data.group_by_length."""
        rows = getattr(self.datasets["train"], "rows", None)
        if not rows or "input_ids" not in rows[0]:
            raise ConfigError("data.group_by_length=true: this task's training rows (pairs, prompts, "
                              "embeddings) have no single token length to group by; set "
                              "data.group_by_length=false.")
        return [len(row["input_ids"]) for row in rows]

    def loss_items(self, batch: dict[str, Any]) -> int:
        """How many items of a collated training batch the loss averages over (trained tokens,
        labelled rows), so training batches carry their accumulation window's count (see
        WindowedLoader) and the loss is normalised by the whole window."""
        raise NotImplementedError

    # Saved in every checkpoint by Lightning, restored before the training loader is made.
    def state_dict(self) -> dict[str, Any]:
        """The shuffle state the current epoch began with and the batches it has trained, so a
        resumed run continues the epoch exactly (Lightning restores its own loop counters but
        would restart a plain DataLoader from its first batch)."""
        if self.trainer is None or self.train_position.epoch_start_state is None:
            return {}
        position = self.train_position
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= self.trainer.num_training_batches:  # epoch finished: the next one starts here
            generator_state = position.generator.get_state() if position.generator is not None else None
            done = 0
        else:
            generator_state = position.epoch_start_state
        return {"train_generator_state": generator_state, "train_batches_done": done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.train_position.resume = (state["train_generator_state"], state["train_batches_done"])

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        validation = self._loader("validation", shuffle=False)
        if self.evaluate_training_set:
            return [validation, self._loader("train", shuffle=False)]
        return validation

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
