"""Frozen encoder with and without cached embeddings (`data.cache_encoder_embeddings`), on SST-2.

Three runs of the same config (MiniLM frozen, linear head, Ludwig's suggested settings), in one
process: without the cache; with a cold cache (the encoder embeds every split once, then the head
trains on the stored vectors); with the warm cache (no encoder pass at all). Prints time per
training epoch (validation excluded), the ratio against the uncached run, validation accuracy and
encoder forward passes.

    python benchmarks/cached_embeddings.py --data ../shared/datasets/sst2        # full SST-2
    python benchmarks/cached_embeddings.py --data ../shared/datasets/sst2 --train-rows 8000

Data: SST-2 train.tsv (training) and dev.tsv (validation), as distributed with GLUE.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd


def sst2_table(data_dir: Path, train_rows: int | None, out: Path) -> Path:
    train = pd.read_csv(data_dir / "train.tsv", sep="\t", quoting=3)
    dev = pd.read_csv(data_dir / "dev.tsv", sep="\t", quoting=3)
    dev = dev.rename(columns={"content": "sentence"})  # the shared dev.tsv calls its text column so
    if train_rows is not None:
        train = train.sample(n=min(train_rows, len(train)), random_state=0)
    if "sentence" not in dev.columns or "sentence" not in train.columns:
        raise SystemExit(f"expected a 'sentence' (or 'content') column in {data_dir}/train.tsv "
                         "and dev.tsv")
    table = pd.concat([train.assign(split="train"), dev.assign(split="validation")], ignore_index=True)
    path = out / "sst2.tsv"
    table[["sentence", "label", "split"]].to_csv(path, sep="\t", index=False)
    return path


def run(overrides: list[str], output_dir: Path) -> tuple[dict, float]:
    from hydra import compose, initialize_config_dir

    import ftexp.cli  # noqa: F401  (registers the ${ftexp_root:} resolver)
    from ftexp.config.validation import validate
    from ftexp.runs.paths import config_dir
    from ftexp.train import train

    with initialize_config_dir(str(config_dir()), version_base="1.3", job_name="bench"):
        cfg = validate(compose("config", overrides=[*overrides, f"paths.output_dir={output_dir}"]))
    started = time.perf_counter()
    metrics = train(cfg)
    return metrics, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/sst2"),
                        help="folder with SST-2 train.tsv and dev.tsv")
    parser.add_argument("--train-rows", type=int, default=None, help="subsample the training set")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = sst2_table(args.data, args.train_rows, tmp)
        os.environ["FTEXP_CACHE_DIR"] = str(tmp / "cache")  # starts cold
        # Ludwig's suggested fine-tuning settings, in ftexp overrides.
        base = ["model=minilm", "adapter=frozen", "data=sst2", f"data.path={data}",
                f"data.max_length={args.max_length}", "optimizer.learning_rate=auto",
                "scheduler=linear", "scheduler.warmup_fraction=0.2", "trainer.precision=auto",
                f"trainer.max_epochs={args.epochs}", "trainer.enable_progress_bar=false",
                "callbacks.checkpoint=false"]
        runs = [("no cache", [*base, "data.cache_encoder_embeddings=false"]),
                ("cache, cold", [*base, "data.cache_encoder_embeddings=true"]),
                ("cache, warm", [*base, "data.cache_encoder_embeddings=true"])]
        results = []
        for i, (name, overrides) in enumerate(runs):
            metrics, wall = run(overrides, tmp / f"run{i}")
            results.append((name, metrics, wall))

    reference = results[0][1]["train_seconds_per_epoch"]
    rows = results[0][1]["train_samples"]
    print(f"\nSST-2: {rows} training rows, {args.epochs} epoch(s), max length {args.max_length}, "
          f"MiniLM frozen, batch {results[0][1]['batch_size']}\n")
    header = (f"{'run':<12} {'s/epoch':>9} {'speed-up':>9} {'val acc':>8} {'encoder passes':>15} "
              f"{'run wall s':>11}")
    print(header)
    print("-" * len(header))
    for name, m, wall in results:
        epoch = m["train_seconds_per_epoch"]
        print(f"{name:<12} {epoch:>9.2f} {reference / epoch:>8.1f}x {100 * m['val/acc']:>7.2f}% "
              f"{m['encoder_forward_passes']:>15} {wall:>11.1f}")
    warm = results[2][1]
    print(f"\nepoch-time ratio (no cache / warm cache): {reference / warm['train_seconds_per_epoch']:.1f}x "
          f"(target ≥ 50x); val acc difference: "
          f"{100 * abs(warm['val/acc'] - results[0][1]['val/acc']):.2f} points (target ≤ 0.5); "
          f"encoder passes in the warm run: {warm['encoder_forward_passes']}")


if __name__ == "__main__":
    main()
