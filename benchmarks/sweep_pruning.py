"""The same 16-trial sweep with and without pruning (tiny BERT, CPU): what pruning saves.

Both sweeps draw the same 16 configurations (random sampler, same seed) from one search space —
learning rate log-uniform in [1e-6, 1e-1] × batch size {8, 16, 32} — and train each for up to
6 epochs on a toy sentiment task; the pruned sweep stops a trial after an epoch whose validation
accuracy is below the median of earlier trials at that epoch (median pruner, after 4 complete
trials). Each sweep is one `python -m ftexp -m hydra/sweeper=ftexp_optuna …` process with one
torch thread. Prints wall and CPU seconds (CPU time does not depend on what else the machine
runs), their ratios, the best validation accuracy each sweep found, and the trials pruned.

    python benchmarks/sweep_pruning.py
    python benchmarks/sweep_pruning.py --pruner hyperband --trials 16 --epochs 6
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

POSITIVE = ["good", "great", "wonderful", "superb", "delightful", "excellent", "fine", "lovely"]
NEGATIVE = ["bad", "awful", "terrible", "dull", "boring", "dreadful", "poor", "weak"]
FILLER = ["the", "movie", "film", "plot", "was", "really", "quite", "acting", "story", "and",
          "a", "bit", "very", "not", "so", "its", "cast", "ending"]


def toy_data(path: Path, seed: int = 0) -> Path:
    """Sentiment by which word list one adjective comes from, with 10% label noise: learnable,
    but not in one step, so a bad learning rate shows after an epoch or two."""
    rng = random.Random(seed)
    rows = []
    for i in range(520):
        label = rng.randint(0, 1)
        words = rng.sample(FILLER, 6) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        noisy = label if rng.random() > 0.1 else 1 - label
        rows.append({"text": " ".join(words), "label": noisy,
                     "split": "train" if i < 400 else "validation"})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def sweep(data: Path, sweep_dir: Path, args: argparse.Namespace, pruner: str) -> dict:
    command = [sys.executable, "-m", "ftexp", "-m", "hydra/sweeper=ftexp_optuna", "model=tiny_bert",
               "data=custom", f"data.path={data}", "data.split_column=split", "data.max_length=24",
               "scheduler=constant", "trainer.precision=32", f"trainer.max_epochs={args.epochs}",
               "trainer.enable_progress_bar=false", "logger=none",
               "optimizer.learning_rate=tag(log, interval(1e-6, 1e-1))", "data.batch_size=choice(8,16,32)",
               f"hydra.sweep.dir={sweep_dir}", f"hydra.sweeper.n_trials={args.trials}",
               "hydra.sweeper.sampler=random", f"hydra.sweeper.seed={args.seed}",
               f"hydra.sweeper.pruner={pruner}"]
    if pruner == "median":
        command.append("+hydra.sweeper.pruner_kwargs={n_startup_trials: 4}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"sweep failed ({pruner}):\n{result.stderr[-3000:]}")

    import optuna

    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    metrics = [Path(t.user_attrs["output_dir"]) / "metrics.json" for t in study.trials]
    steps = sum(json.loads(m.read_text())["global_steps"] for m in metrics if m.exists())
    return {"wall": wall, "cpu": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
            "best": study.best_value, "best_trial": study.best_trial.number,
            "pruned": sum(t.state.name == "PRUNED" for t in study.trials),
            "complete": sum(t.state.name == "COMPLETE" for t in study.trials),
            "failed": sum(t.state.name == "FAIL" for t in study.trials), "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pruner", default="median",
                        choices=["median", "percentile", "successive_halving", "hyperband"])
    parser.add_argument("--out", type=Path, default=None, help="keep the sweep dirs here")
    args = parser.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="ftexp-sweep-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FTEXP_CACHE_DIR", str(out / "cache"))
    data = toy_data(out / "toy.csv")
    runs = {"none": sweep(data, out / "no_pruning", args, "none"),
            args.pruner: sweep(data, out / f"{args.pruner}_pruning", args, args.pruner)}
    plain, pruned = runs["none"], runs[args.pruner]

    print(f"\n{args.trials} trials × up to {args.epochs} epochs, tiny BERT on CPU (1 thread), random "
          f"sampler seed {args.seed}; sweep dirs in {out}\n")
    print("| pruner | wall s | CPU s | optimizer steps | complete / pruned / failed | best val/acc (trial) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in runs.items():
        print(f"| {name} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['steps']} | "
              f"{r['complete']} / {r['pruned']} / {r['failed']} | {r['best']:.4f} ({r['best_trial']}) |")
    print(f"\nwithout / with pruning: wall {plain['wall'] / pruned['wall']:.2f}×, "
          f"CPU {plain['cpu'] / pruned['cpu']:.2f}×, steps {plain['steps'] / pruned['steps']:.2f}×; "
          f"best val/acc {plain['best']:.4f} vs {pruned['best']:.4f}")


if __name__ == "__main__":
    main()
