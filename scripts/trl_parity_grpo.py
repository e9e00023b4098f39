"""ftexp's GRPO loss against TRL's on the same tensors: `GRPOTrainer._compute_loss` of the TRL
venv the benchmarks use (benchmarks/peers.py) and `ftexp.tasks.grpo_losses.grpo_loss`, per-token
and per-sequence ratios (GSPO, TRL's importance_sampling_level) for each aggregation, with old
log-probs that differ from the policy's so that clipping engages. Prints a table; exits 1 when
any loss differs by more than 1e-6 relative.

    .venv/bin/python scripts/trl_parity_grpo.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "src")]

B, P, T = 8, 5, 6  # completions, prompt length, completion length
TOLERANCE = 1e-6


def child() -> int:
    import torch
    from datasets import Dataset
    from peers import tokenizer_dir, trl_tokenizer_and_model
    from trl import GRPOConfig, GRPOTrainer

    from ftexp.tasks.grpo_losses import GRPO_LOSS_TYPES, IMPORTANCE_SAMPLING, grpo_loss

    torch.manual_seed(0)
    tokenizer, model = trl_tokenizer_and_model(tokenizer_dir())
    prompt_ids, prompt_mask = torch.randint(2000, 8000, (B, P)), torch.ones(B, P, dtype=torch.long)
    completion_ids, completion_mask = torch.randint(2000, 8000, (B, T)), torch.ones(B, T, dtype=torch.long)
    for i in range(B):
        completion_mask[i, 2 + i % 4:] = 0  # lengths 2 to 5, then padding
    advantages = torch.randn(B)
    worst = 0.0
    print("| ratio | loss_type | TRL | ftexp | relative difference |\n|---|---|---:|---:|---:|")
    for level in IMPORTANCE_SAMPLING:
        for loss_type in GRPO_LOSS_TYPES:
            args = GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=B, num_generations=4,
                              max_completion_length=T, beta=0.0, loss_type=loss_type, epsilon=0.2,
                              importance_sampling_level=level, use_cpu=True, report_to="none", bf16=False)
            trainer = GRPOTrainer(model=model, args=args, processing_class=tokenizer,
                                  reward_funcs=lambda prompts, completions, **_: [0.0] * len(prompts),
                                  train_dataset=Dataset.from_list([{"prompt": "a"}] * B))
            trainer.current_gradient_accumulation_steps = 1  # set by its training loop, not run here
            network = trainer.model.train()
            ids = torch.cat([prompt_ids, completion_ids], 1)
            mask = torch.cat([prompt_mask, completion_mask], 1)
            with torch.no_grad():
                logps = trainer._get_per_token_logps_and_entropies(network, ids, mask, T)[0]
            old = logps + 0.3 * torch.randn(logps.shape, generator=torch.Generator().manual_seed(1))
            inputs = dict(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                          completion_mask=completion_mask, advantages=advantages, old_per_token_logps=old,
                          num_items_in_batch=completion_mask.sum())
            theirs = trainer._compute_loss(network, inputs).item()
            ours = grpo_loss(logps, old, None, advantages, completion_mask.bool(), epsilon=0.2, beta=0.0,
                             loss_type=loss_type, max_completion_length=T,
                             importance_sampling=level).loss.item()
            difference = abs(theirs - ours) / max(abs(theirs), 1e-12)
            worst = max(worst, difference)
            print(f"| {level} | {loss_type} | {theirs:+.8f} | {ours:+.8f} | {difference:.1e} |")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    from peers import parity_main

    sys.exit(parity_main(__file__, child))
