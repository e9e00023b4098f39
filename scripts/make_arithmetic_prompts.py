"""Build data/grpo/arithmetic_prompts.jsonl: small arithmetic questions with their answers, for
the GRPO tests and the smoke recipe (generated here, so there is no source or license to track).

    python scripts/make_arithmetic_prompts.py [output path]

Each row: `prompt` ("What is 17 + 25? Answer with the number only."), `answer` (the exact result
as a string, "42") and `split` (train / validation / test). Operands are drawn with a fixed seed
from small ranges — sums and differences of two-digit numbers, products of one-digit by
two-digit numbers — so every answer is a non-negative integer of at most three digits. No
question appears twice, so the validation and test prompts are never seen in training. Running
the script again writes the same bytes.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SEED = 16
SPLITS = {"train": 160, "validation": 20, "test": 20}
INSTRUCTION = "Answer with the number only."
DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "data" / "grpo" / "arithmetic_prompts.jsonl"


def question(rng: random.Random) -> tuple[str, int]:
    """One question and its answer: a + b, a - b with a >= b, or a * b with a one-digit factor."""
    op = rng.choice("+-*")
    if op == "+":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return f"{a} + {b}", a + b
    if op == "-":
        a, b = sorted((rng.randint(10, 99), rng.randint(10, 99)), reverse=True)
        return f"{a} - {b}", a - b
    a, b = rng.randint(2, 9), rng.randint(10, 99)
    return f"{a} * {b}", a * b


def make_rows(seed: int = SEED) -> list[dict[str, str]]:
    """SPLITS' row counts of distinct questions, in split order (train first)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rows = []
    for split, count in SPLITS.items():
        made = 0
        while made < count:
            expression, answer = question(rng)
            if expression in seen:
                continue
            seen.add(expression)
            rows.append({"prompt": f"What is {expression}? {INSTRUCTION}", "answer": str(answer),
                         "split": split})
            made += 1
    return rows


def encoded(rows: list[dict[str, str]]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def main(output: Path = DEFAULT_OUTPUT) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    data = encoded(make_rows())
    output.write_bytes(data)
    print(f"wrote {output} ({sum(SPLITS.values())} rows, {len(data):,} bytes)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT)
