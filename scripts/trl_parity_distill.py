"""ftexp's distillation divergence against TRL's on the same tensors: GKD's
`GKDTrainer.generalized_jsd_loss` (TRL 1.16, trl.experimental.gkd) in the TRL venv the
benchmarks use (benchmarks/peers.py), and `ftexp.tasks.distill_losses.generalized_jsd` averaged
over the same trained tokens, for forward KL, reverse KL and the JSD between them at several
temperatures. Prints a table; exits 1 when any value differs by more than 1e-6 relative.

    .venv/bin/python scripts/trl_parity_distill.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "src")]
TOLERANCE = 1e-6


def child() -> int:
    import torch
    from trl.experimental.gkd.gkd_trainer import GKDTrainer

    from ftexp.tasks.distill_losses import generalized_jsd

    torch.manual_seed(0)
    student, teacher = torch.randn(3, 7, 50, dtype=torch.float64), torch.randn(3, 7, 50, dtype=torch.float64)
    labels = torch.randint(0, 50, (3, 7))
    labels[0, :3] = -100  # a prompt: not trained
    trained = labels != -100
    worst = 0.0
    print("| beta | temperature | TRL | ftexp | relative difference |\n|---:|---:|---:|---:|---:|")
    for beta in (0.0, 0.1, 0.5, 0.9, 1.0):
        for temperature in (1.0, 0.7, 2.0):
            theirs = float(GKDTrainer.generalized_jsd_loss(student, teacher, labels=labels, beta=beta,
                                                           temperature=temperature, reduction="batchmean"))
            ours = float(generalized_jsd(student, teacher, beta, temperature)[trained].sum() / trained.sum())
            difference = abs(theirs - ours) / max(abs(theirs), 1e-12)
            worst = max(worst, difference)
            print(f"| {beta} | {temperature} | {theirs:.10f} | {ours:.10f} | {difference:.1e} |")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    from peers import parity_main

    sys.exit(parity_main(__file__, child))
