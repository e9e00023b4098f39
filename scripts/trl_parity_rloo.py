"""ftexp's RLOO advantages against TRL's on the same rewards: TRL 1.16's own
`RLOOTrainer._generate_and_score_completions` (the venv the benchmarks use, benchmarks/peers.py)
samples and scores a batch of 3 prompts x 4 completions with a reward function that returns set
rewards — unscored ones (None) among them, and a group whose rewards are all equal — and
`ftexp.tasks.grpo_losses.compute_advantages(estimator="rloo")` computes advantages from the same
rewards. Prints a table; exits 1 when they differ by more than 1e-6 relative.

TRL's `normalize_advantages=True` (its advantages standardised over the batch) has no ftexp twin —
`task.scale_rewards=batch` divides by the std of the batch's rewards and does not re-centre — so it
is printed for reference, not compared. Both use TRL's defaults otherwise (beta 0: no KL term,
which TRL's RLOO puts into the reward and ftexp keeps in the loss, as for GRPO).

    .venv/bin/python scripts/trl_parity_rloo.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "src")]

GROUP = 4
# Per prompt: spread rewards; one unscored (None) among them; all equal (no signal).
REWARDS = [1.0, 0.0, 0.5, 2.0, 3.0, None, 1.0, 0.0, 0.7, 0.7, 0.7, 0.7]
TOLERANCE = 1e-6


def trl_advantages(normalize: bool) -> list[float]:
    import torch
    from datasets import Dataset
    from peers import tokenizer_dir, trl_tokenizer_and_model
    from trl import RLOOConfig, RLOOTrainer

    torch.manual_seed(0)
    tokenizer, model = trl_tokenizer_and_model(tokenizer_dir())
    prompts = [f"what is {a} plus 2?" for a in range(len(REWARDS) // GROUP)]

    def set_rewards(prompts, completions, **_):
        return list(REWARDS)  # in the batch's order: each prompt's GROUP completions together

    args = RLOOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=len(REWARDS),
                      num_generations=GROUP, max_completion_length=4, beta=0.0,
                      normalize_advantages=normalize, use_cpu=True, report_to="none", bf16=False)
    trainer = RLOOTrainer(model=model, args=args, processing_class=tokenizer, reward_funcs=set_rewards,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]))
    inputs = [{"prompt": p} for p in prompts for _ in range(GROUP)]
    return trainer._generate_and_score_completions(inputs)["advantages"].tolist()


def child() -> int:
    import torch

    from ftexp.tasks.grpo_losses import compute_advantages

    rewards = torch.tensor([float("nan") if r is None else r for r in REWARDS], dtype=torch.float64)
    ours = compute_advantages(rewards, GROUP, estimator="rloo").advantages.tolist()
    theirs = trl_advantages(normalize=False)
    normalized = trl_advantages(normalize=True)
    batch_scaled = compute_advantages(rewards, GROUP, estimator="rloo", scale="batch").advantages.tolist()
    print("| reward | TRL | ftexp | difference | TRL normalize_advantages | ftexp scale_rewards=batch |\n"
          "|---:|---:|---:|---:|---:|---:|")
    worst = 0.0
    for reward, a, b, n, s in zip(REWARDS, theirs, ours, normalized, batch_scaled, strict=True):
        difference = abs(a - b) / max(abs(a), 1e-12) if a else abs(b)
        worst = max(worst, difference)
        print(f"| {reward} | {a:+.7f} | {b:+.7f} | {difference:.1e} | {n:+.5f} | {s:+.5f} |")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    from peers import parity_main

    sys.exit(parity_main(__file__, child))
