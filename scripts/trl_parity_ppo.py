"""ftexp's PPO arithmetic against TRL's on the same tensors: one update of TRL 1.12's own
`PPOTrainer.train()` (trl.experimental.ppo; its last release with one) on a tiny random-init
Llama (an EOS bias, so completions end at different lengths), a perturbed copy as the reference,
a random value and reward model, 2 PPO epochs at which the second one clips both the ratio and
the value. The script records what TRL's loop computed — the rollout's log-probs, the
reference's, the values, the scores, the advantages before and after whitening, each epoch's new
log-probs and values, and the metrics it logged — and recomputes them with
`ftexp.tasks.ppo_losses` (kl_penalised_rewards, gae, whiten, ppo_loss) from TRL's inputs.

TRL's bookkeeping is kept where it differs from ftexp's by convention, not by formula: TRL adds the
score one token past the last completion token and its value mask reaches that token too, so the
rewards, GAE and value loss here use that mask (`~padding_mask_p1`), the policy loss TRL's token
mask (`~padding_mask`). Prints a table; exits 1 when any quantity differs by more than 1e-6
relative to its largest magnitude.

    .venv/bin/python scripts/trl_parity_ppo.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "src")]

B, RESPONSE_LENGTH, EPOCHS = 8, 8, 2
# A small value clip range, so the second epoch's values reach it too.
KL_COEF, GAMMA, LAM, CLIPRANGE, CLIPRANGE_VALUE, VF_COEF = 0.05, 0.9, 0.8, 0.2, 0.01, 0.1
TOLERANCE = 1e-6
INVALID_LOGPROB = 1.0  # TRL's fill for log-probs past a completion's end


def end_some_completions_early(policy, tokenizer) -> None:
    """A random-init policy's next-token distribution is nearly uniform over 30,522 tokens, so it
    would never sample EOS and every completion would fill the response length. A bias of
    log(vocabulary / 4) on the EOS logit makes EOS about a fifth of the samples: the completions
    end at different lengths (what TRL's and ftexp's masks are about)."""
    import math

    import torch

    head = policy.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight = head.weight
        biased.bias.zero_()
        biased.bias[tokenizer.eos_token_id] = math.log(head.out_features / 4)
    policy.lm_head = biased


def record_trl_update() -> dict:
    """One update of TRL's PPOTrainer.train(), with what its loop computed."""
    import numpy as np
    import torch
    from datasets import Dataset
    from peers import ARCH, tokenizer_dir, trl_tokenizer_and_model
    from transformers import AutoConfig, AutoModelForSequenceClassification, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as loop

    torch.manual_seed(0)
    tokenizer, policy = trl_tokenizer_and_model(tokenizer_dir())
    tokenizer.padding_side = "left"
    config = AutoConfig.for_model("llama", **ARCH, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    value_model, reward_model = (AutoModelForSequenceClassification.from_config(config) for _ in range(2))
    reference = trl_tokenizer_and_model(tokenizer_dir())[1]
    with torch.no_grad():  # another reference than the policy, so that the KL penalty is not ~0
        for weight in reference.parameters():
            weight.add_(0.05 * torch.randn_like(weight))
    prompts = [f"what is {a} plus {b}?" for a, b in zip(range(B), range(3, 3 + B), strict=True)]
    dataset = Dataset.from_dict({"input_ids": [tokenizer(p)["input_ids"] for p in prompts]})
    end_some_completions_early(policy, tokenizer)

    seen: dict[str, list] = {"logps": [], "rewards_call": [], "permutation": [], "wrapper": [], "logged": []}

    def keep(name, fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            seen.setdefault(name, []).append(out)
            return out
        return wrapped

    def selective(logits, index):
        out = original_selective(logits, index)
        seen["logps"].append(out.detach().clone())
        return out

    def reward_call(model, query_responses, pad_token_id, context_length):
        out = original_get_reward(model, query_responses, pad_token_id, context_length)
        seen["rewards_call"].append((out[0].detach().clone(), out[1].detach().clone()))
        return out

    def whitened(values, mask, shift_mean=True):
        out = original_whiten(values, mask, shift_mean)
        seen["whiten"] = (values.detach().clone(), mask.clone(), out.detach().clone())
        return out

    def permutation(n):
        out = original_permutation(n)
        seen["permutation"].append(out.copy())
        return out

    def wrapper_forward(self, **kwargs):
        policy_out, values = original_forward(self, **kwargs)
        seen["wrapper"].append(values.detach().clone())
        return policy_out, values

    original_selective, original_get_reward = loop.selective_log_softmax, loop.get_reward
    original_whiten, original_permutation = loop.masked_whiten, np.random.permutation
    original_forward = loop.PolicyAndValueWrapper.forward
    loop.selective_log_softmax, loop.get_reward, loop.masked_whiten = selective, reward_call, whitened
    loop.batch_generation = keep("generation", loop.batch_generation)
    loop.truncate_response = keep("truncated", loop.truncate_response)
    np.random.permutation = permutation
    loop.PolicyAndValueWrapper.forward = wrapper_forward

    class Logged(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen["logged"].append(dict(logs or {}))

    args = PPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=B, gradient_accumulation_steps=1,
        num_mini_batches=1, num_ppo_epochs=EPOCHS, total_episodes=B, local_rollout_forward_batch_size=B,
        response_length=RESPONSE_LENGTH, stop_token="eos", temperature=1.0, kl_coef=KL_COEF,
        kl_estimator="k1", gamma=GAMMA, lam=LAM, cliprange=CLIPRANGE, cliprange_value=CLIPRANGE_VALUE,
        vf_coef=VF_COEF, whiten_rewards=False, num_sample_generations=0, learning_rate=5e-5,
        lr_scheduler_type="constant", bf16=False, use_cpu=True, report_to="none", save_strategy="no",
        disable_tqdm=True, logging_steps=1, seed=0)
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=reference,
                         reward_model=reward_model, value_model=value_model, train_dataset=dataset,
                         eval_dataset=dataset, callbacks=[Logged()])
    trainer.train()
    [(query_responses, _)] = seen["generation"]
    return {**seen, "query_responses": query_responses, "pad": tokenizer.pad_token_id,
            "context_length": query_responses.shape[1] - RESPONSE_LENGTH}


def child() -> int:
    import torch

    from ftexp.tasks.ppo_losses import gae, kl_penalised_rewards, ppo_loss, whiten

    seen = record_trl_update()
    pad, context = seen["pad"], seen["context_length"]
    [truncated] = seen["truncated"]
    logps, reference, *new_logps = seen["logps"]
    (full_values, _), (_, scores) = seen["rewards_call"]
    length = truncated.shape[1]
    # TRL's masks: tokens up to the last real one; values (and the score) one token further.
    is_pad = truncated == pad
    last = torch.where(is_pad.any(1), is_pad.float().argmax(1), torch.full_like(is_pad[:, 0], length,
                                                                             dtype=torch.long)) - 1
    positions = torch.arange(length).expand_as(truncated)
    mask, mask_p1 = positions <= last[:, None], positions <= (last + 1)[:, None]
    logps = logps.masked_fill(~mask, INVALID_LOGPROB)
    reference = reference.masked_fill(~mask, INVALID_LOGPROB)
    values = full_values[:, context - 1:-1].squeeze(-1).masked_fill(~mask_p1, 0)

    rewards, _ = kl_penalised_rewards(scores, logps, reference, mask_p1, KL_COEF)
    advantages, returns = gae(rewards, values, mask_p1, GAMMA, LAM)
    raw_theirs, whiten_mask, whitened_theirs = seen["whiten"]
    whitened = whiten(advantages, whiten_mask)
    rows: list[tuple[str, torch.Tensor, torch.Tensor]] = [
        ("GAE advantages (before whitening)", raw_theirs * mask_p1, advantages),
        ("whitened advantages", whitened_theirs * mask, whitened),
    ]
    losses = {"loss/policy_avg": [], "loss/value_avg": [], "policy/clipfrac_avg": [], "val/clipfrac_avg": []}
    for order, new, value_out in zip(seen["permutation"], new_logps, seen["wrapper"], strict=True):
        order = torch.as_tensor(order)
        new = new.masked_fill(~mask[order], INVALID_LOGPROB)
        predicted = value_out[:, context - 1:-1].squeeze(-1).masked_fill(~mask_p1[order], 0)
        common = (new, logps[order], predicted, values[order], whitened[order], returns[order])
        policy = ppo_loss(*common, mask[order], CLIPRANGE, CLIPRANGE_VALUE, VF_COEF)
        value = ppo_loss(*common, mask_p1[order], CLIPRANGE, CLIPRANGE_VALUE, VF_COEF)
        losses["loss/policy_avg"].append(policy.policy_loss)
        losses["policy/clipfrac_avg"].append(policy.policy_clipfrac)
        losses["loss/value_avg"].append(value.value_loss)
        losses["val/clipfrac_avg"].append(value.value_clipfrac)
    logged = next(entry for entry in seen["logged"] if "loss/policy_avg" in entry)
    for name, per_epoch in losses.items():
        rows.append((f"{name} (TRL's log, mean of {EPOCHS} epochs)", torch.tensor(logged[name]),
                     torch.stack(per_epoch).mean()))
    worst = 0.0
    print("| quantity | TRL | ftexp | difference / largest magnitude |\n|---|---:|---:|---:|")
    for name, theirs, ours in rows:
        scale = theirs.abs().max().clamp(min=1e-12)
        difference = float((theirs.double() - ours.double()).abs().max() / scale)
        worst = max(worst, difference)
        show = (lambda t: f"{t.item():+.8f}") if theirs.numel() == 1 else (lambda t: f"{t.numel()} values")
        print(f"| {name} | {show(theirs)} | {show(ours)} | {difference:.1e} |")
    lengths = (last + 1).tolist()
    print(f"\ncompletion lengths {lengths} of {length}; objective/kl {float(logged['objective/kl']):.4f}; "
          f"clip fractions: policy {float(logged['policy/clipfrac_avg']):.3f}, value "
          f"{float(logged['val/clipfrac_avg']):.3f} (the second epoch's ratios and values reach the "
          "clip ranges)")
    exercised = (len(set(lengths)) > 1 and float(logged["policy/clipfrac_avg"]) > 0
                 and float(logged["val/clipfrac_avg"]) > 0)
    if not exercised:
        print("the update did not exercise masks and clipping (equal lengths or no clipping): not a check")
    return 0 if worst <= TOLERANCE and exercised else 1


if __name__ == "__main__":
    from peers import TRL_PPO_VERSION, parity_main

    sys.exit(parity_main(__file__, child, TRL_PPO_VERSION))
