"""Build data/sst2/sst2_sample.tsv from the full SST-2 files (run once; the output is committed).

    python scripts/make_sst2_sample.py ../shared/datasets/sst2

SST-2's train file holds every parse-tree phrase ("the", "labored gags"); its dev file holds
whole sentences. The sample keeps train rows of at least MIN_WORDS words so a small training
set looks like what it is evaluated on, then draws rows with a fixed seed.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pandas as pd

MIN_WORDS = 8
N_TRAIN, N_VALIDATION = 2000, 400
SEED = 0


def main(source: Path, target: Path) -> None:
    train = pd.read_csv(source / "train.tsv", sep="\t", quoting=csv.QUOTE_NONE)
    train["sentence"] = train["sentence"].str.strip()
    dev = pd.read_csv(source / "dev.tsv", sep="\t", quoting=csv.QUOTE_NONE)
    dev = dev.rename(columns={"content": "sentence"})

    sentence_like = train[train["sentence"].str.split().str.len() >= MIN_WORDS]
    drawn = sentence_like.sample(n=N_TRAIN + N_VALIDATION, random_state=SEED)
    drawn["split"] = ["train"] * N_TRAIN + ["validation"] * N_VALIDATION
    dev["split"] = "test"  # the whole GLUE dev set: the default run's reported accuracy

    sample = pd.concat([drawn, dev], ignore_index=True)[["sentence", "label", "split"]]
    target.parent.mkdir(parents=True, exist_ok=True)
    sample.to_csv(target, sep="\t", index=False)
    print(f"wrote {len(sample)} rows to {target}: {sample['split'].value_counts().to_dict()}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parents[1] / "data/sst2/sst2_sample.tsv")
