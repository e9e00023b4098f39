"""Build data/code_alpaca/code_alpaca_sample.jsonl from CodeAlpaca-2k (run once; output committed).

    python scripts/make_code_alpaca_sample.py ../shared/datasets/code_alpaca

Draws rows with a fixed seed and marks each train / validation / test in a `split` column.
Rows keep CodeAlpaca's columns: instruction, input (often empty), output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

N_TRAIN, N_VALIDATION, N_TEST = 400, 50, 50
SEED = 0


def main(source: Path, target: Path) -> None:
    rows = pd.DataFrame(json.loads((source / "code_alpaca_2k.json").read_text()))
    drawn = rows.sample(n=N_TRAIN + N_VALIDATION + N_TEST, random_state=SEED).reset_index(drop=True)
    drawn["split"] = ["train"] * N_TRAIN + ["validation"] * N_VALIDATION + ["test"] * N_TEST
    target.parent.mkdir(parents=True, exist_ok=True)
    drawn[["instruction", "input", "output", "split"]].to_json(
        target, orient="records", lines=True, force_ascii=False)
    print(f"wrote {len(drawn)} rows to {target}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parents[1] / "data/code_alpaca/code_alpaca_sample.jsonl")
