"""Build the benchmark tasks shipped with ftexp and the training data of their demo (generated here,
so there is no source or license to track; running the script again writes the same bytes):

    python scripts/make_eval_demo.py

- src/ftexp/evaluation/tasks/data/colours.jsonl — `ftexp_colours_mc`, multiple choice scored by
  log-likelihood: "the colour of sky is" → one of four colours (the true one and three others
  drawn from the palette, in a shuffled order). Its `test` items are combinations of a phrasing
  and a thing that the demo's training data never contain; `train` items (the few-shot pool) are
  combinations it does contain.
- src/ftexp/evaluation/tasks/data/sums.jsonl — `ftexp_sums_gen`, generative, scored by exact
  match: "3 + 4 =" → "7".
- data/eval_demo/colour_sft.jsonl — SFT data of the demo (`+experiment=tiny_eval_demo_sft`):
  each training prompt answered once with every colour of the palette, so SFT teaches the
  answer's form (one colour word, then EOS) and not which colour is true.
- data/eval_demo/colour_prefs.jsonl — DPO data of the demo (`+experiment=tiny_eval_demo`): the
  true colour preferred to each of the palette's nine wrong ones, per prompt, with a `split`
  column (train / validation).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASK_DATA = ROOT / "src" / "ftexp" / "evaluation" / "tasks" / "data"
DEMO_DATA = ROOT / "data" / "eval_demo"
SEED = 7
COLOURS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "blood": "red",
           "sun": "yellow", "orange": "orange", "violet": "purple", "chocolate": "brown",
           "rose": "pink", "ocean": "blue", "leaf": "green", "milk": "white", "night": "black",
           "cherry": "red", "lemon": "yellow"}
TEMPLATES = ["the colour of {o} is", "what colour is {o}?", "{o} has the colour",
             "tell me the colour of {o}.", "name the colour of {o}:", "which colour does {o} have?",
             "the {o} looks", "colour of {o}:", "i think {o} is coloured",
             "describe the colour of {o}:", "{o} is usually", "q: colour of {o}? a:"]
HELD_OUT, VALIDATION = 3, 1  # things per phrasing kept for the benchmark / the demo's validation
N_CHOICES = 4
PAIRS_PER_PROMPT = 9  # every wrong colour of the palette, paired with the true one, per prompt
N_COLOUR_SHOTS = 10  # the few-shot pool (train split) of the colour task
N_SUMS, N_SUM_SHOTS = 40, 5


def _lines(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def colour_splits(rng: random.Random) -> dict[str, list[tuple[str, str, str]]]:
    """(prompt, thing, true colour) per split: benchmark / validation / train."""
    splits: dict[str, list[tuple[str, str, str]]] = {"benchmark": [], "validation": [], "train": []}
    for template in TEMPLATES:
        things = list(COLOURS)
        rng.shuffle(things)
        for index, thing in enumerate(things):
            split = ("benchmark" if index < HELD_OUT else
                     "validation" if index < HELD_OUT + VALIDATION else "train")
            splits[split].append((template.format(o=thing), thing, COLOURS[thing]))
    return splits


def multiple_choice(rng: random.Random, items: list[tuple[str, str, str]], palette: list[str]) -> list[dict]:
    rows = []
    for prompt, _, colour in items:
        choices = [colour, *rng.sample([c for c in palette if c != colour], N_CHOICES - 1)]
        rng.shuffle(choices)
        rows.append({"question": prompt, "choices": choices, "gold": choices.index(colour)})
    return rows


def sums(rng: random.Random, n: int) -> list[dict]:
    seen, rows = set(), []
    while len(rows) < n:
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        if (a, b) not in seen:
            seen.add((a, b))
            rows.append({"question": f"{a} + {b} =", "answer": str(a + b)})
    return rows


def main() -> None:
    rng = random.Random(SEED)
    palette = sorted(set(COLOURS.values()))
    splits = colour_splits(rng)
    benchmark = [{**row, "split": "test"} for row in multiple_choice(rng, splits["benchmark"], palette)]
    shot_items = multiple_choice(rng, splits["train"][:N_COLOUR_SHOTS], palette)
    shots = [{**row, "split": "train"} for row in shot_items]
    _lines(TASK_DATA / "colours.jsonl", benchmark + shots)
    sum_rows = sums(rng, N_SUMS + N_SUM_SHOTS)
    _lines(TASK_DATA / "sums.jsonl", [{**row, "split": "test"} for row in sum_rows[:N_SUMS]]
           + [{**row, "split": "train"} for row in sum_rows[N_SUMS:]])

    trained = splits["train"] + splits["validation"]
    _lines(DEMO_DATA / "colour_sft.jsonl",
           [{"prompt": prompt, "response": colour, "split": split}
            for split in ("train", "validation") for prompt, _, _ in splits[split] for colour in palette])
    pairs = []
    for split in ("train", "validation"):
        for prompt, _, colour in splits[split]:
            for wrong in rng.sample([c for c in palette if c != colour], PAIRS_PER_PROMPT):
                pairs.append({"prompt": prompt, "chosen": colour, "rejected": wrong, "split": split})
    _lines(DEMO_DATA / "colour_prefs.jsonl", pairs)
    print(f"benchmark items: {len(benchmark)} colours, {N_SUMS} sums; demo: {len(splits['train'])} SFT "
          f"prompts, {len(pairs)} preference pairs over {len(trained)} prompts")


if __name__ == "__main__":
    main()
