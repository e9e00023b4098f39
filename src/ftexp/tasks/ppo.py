"""task=ppo: online RL with a learned value (LLaMA-Factory's PPO stage, TRL's PPOTrainer). Each
training batch is a rollout: the policy samples completions of the batch's prompts (GRPO's
sampling and reward functions; a trained reward model is `ftexp.tasks.rewards.reward_model`), the
first epoch's forward pass gives the policy's log-probs and the value head's values (detached:
the rollout's "old" ones, no extra pass), the reference's log-probs
give a per-token KL penalty folded into the reward (score at the last token), and GAE turns
rewards and values into advantages (whitened) and returns — tasks/ppo_losses.py. Then
task.num_iterations optimizer steps on the rollout (PPO epochs) minimise the clipped policy loss
plus vf_coef times the clipped value loss.

The critic is a linear value head on the policy's final hidden states (task.critic=shared: the
backbone and its adapter are shared, as TRL's `AutoModelForCausalLMWithValueHead`); it starts at
zero, so the first advantages are the Monte-Carlo returns. Or a value model of its own
(task.critic=separate, tasks/critic.py), started from a task=reward run as TRL's PPOTrainer starts
it. Either is trained and saved with the run (checkpoints, resume) and left out of exports, which
hold the policy. Rollouts kept for the next PPO epochs are saved in
full-state checkpoints, so a resumed run trains on the same samples.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import nn

from ftexp.tasks import lm_loss
from ftexp.tasks.critic import ValueModel, load_critic
from ftexp.tasks.grpo import GRPOTask, Samples
from ftexp.tasks.grpo_losses import GroupAdvantages
from ftexp.tasks.ppo_losses import (
    explained_variance,
    gae,
    kl_penalised_rewards,
    masked_mean,
    ppo_loss,
    whiten,
)


class Rollout(NamedTuple):
    """A rollout and what the policy that drew it computed: log-probs, values, the reference's
    log-probs (None without a KL penalty), and the advantages and returns GAE made of them."""
    samples: Samples
    old_logps: torch.Tensor
    old_values: torch.Tensor
    reference_logps: torch.Tensor | None
    advantages: torch.Tensor
    returns: torch.Tensor
    kl: torch.Tensor

    def to_state(self) -> dict[str, Any]:
        return {**self._asdict(), "samples": self.samples.to_state()}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> Rollout:
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        moved["samples"] = Samples.from_state(state["samples"], device)
        return cls(**moved)


class PPOTask(GRPOTask):
    replay_type = Rollout
    replay_key = "ppo_rollouts"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.value_head: nn.Linear | None = None  # task.critic=shared: built with the network
        self.critic: ValueModel | None = None  # task.critic=separate: built under a Trainer

    def configure_model(self) -> None:
        super().configure_model()
        t = self.hparams.task
        if t["critic"] == "shared" and self.value_head is None:
            self.value_head = nn.Linear(lm_loss.output_head(self.network).in_features, 1)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
        elif t["critic"] == "separate" and self.critic is None and self.fitting:
            # Fitting only (fresh or resumed, before the checkpoint loads: so a resumed run needs
            # the reward run too): testing, generating with and exporting this run need the policy
            # alone, and not the reward run either.
            self.critic = self.load_critic()

    @property
    def fitting(self) -> bool:
        from lightning.pytorch.trainer.states import TrainerFn

        return self._trainer is not None and self._trainer.state.fn == TrainerFn.FITTING

    def load_critic(self) -> ValueModel:
        t = self.hparams.task
        return load_critic(t["critic_from"], self.tokenizer, t["disable_dropout"])

    def load_trained_state(self, state_dict: dict[str, torch.Tensor]) -> None:
        if self.critic is None:  # a finished run loaded to generate or export: the policy alone
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("critic.")}
        super().load_trained_state(state_dict)

    def optimized_module(self) -> nn.Module:
        shared = self.hparams.task["critic"] == "shared"
        critic = {"value_head": self.value_head} if shared else {"critic": self.critic}
        return nn.ModuleDict({"network": self.network, **critic})

    def outcome_advantages(self, rewards: torch.Tensor, group_size: int) -> GroupAdvantages:
        """None of GRPO's group statistics: PPO's advantages come from GAE (`rollout`)."""
        nothing = torch.zeros(0, dtype=torch.bool, device=rewards.device)
        return GroupAdvantages(torch.zeros_like(rewards), nothing, rewards.isnan(), nothing.float())

    # -- forward --------------------------------------------------------------------------------

    def logps_and_values(self, samples: Samples,
                         entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The policy's per-token log-probs and the value head's per-token values (N, L), from one
        forward pass (a second one, of the critic, with task.critic=separate); the value of position
        t is that of the state before the t-th token."""
        shared = self.hparams.task["critic"] == "shared"
        logps, ent, hidden = self.completion_forward(self.network, samples, entropy, hidden_states=shared)
        if shared:
            return logps, self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float(), ent
        return logps, self.critic_values(samples), ent

    def critic_values(self, samples: Samples) -> torch.Tensor:
        """The separate critic's values (N, L) at the positions that predict the completion's tokens,
        numbered as completion_forward numbers them."""
        mask, length = samples.attention_mask, samples.completion_mask.shape[1]
        values = self.critic(samples.input_ids, mask, (mask.cumsum(-1) - 1).clamp(min=0))
        return values[:, -(length + 1):-1]

    @torch.no_grad()
    def rollout(self, samples: Samples, logps: torch.Tensor, values: torch.Tensor) -> Rollout:
        """The rollout of samples whose log-probs and values the current policy computed: the
        reference's log-probs, the KL-penalised rewards, GAE's advantages (whitened) and returns."""
        t = self.hparams.task
        logps, values = logps.detach(), values.detach()
        reference = self.reference_logps(samples) if self.reference_mode is not None else None
        mask = samples.completion_mask
        scores = torch.nan_to_num(samples.rewards.float(), nan=0.0).to(logps.device)  # unscored: 0
        rewards, kl = kl_penalised_rewards(scores, logps, reference, mask, t["kl_coef"])
        if t["whiten_rewards"]:
            rewards = whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae(rewards, values, mask, t["gamma"], t["lam"])
        return Rollout(samples, logps, values, reference, whiten(advantages, mask), returns, kl)

    # -- steps ----------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """At a rollout's first PPO epoch, one forward pass gives the "old" log-probs and values
        (detached; dropout is off, so they are what a separate no-grad pass would give) and the
        loss; the later epochs train on the kept rollout."""
        t = self.hparams.task
        if batch.get("repeat_index", 0) == 0:
            samples = self.sample(batch, t["num_generations"])
            logps, values, entropy = self.logps_and_values(samples, entropy=True)
            rollout = self.rollout(samples, logps, values)
        else:
            rollout = self.kept(batch)
            logps, values, entropy = self.logps_and_values(rollout.samples, entropy=True)
        self.remember(batch, rollout)
        samples, mask = rollout.samples, rollout.samples.completion_mask
        result = ppo_loss(logps, rollout.old_logps, values, rollout.old_values, rollout.advantages,
                          rollout.returns, mask, t["cliprange"], t["cliprange_value"], t["vf_coef"])
        count = torch.tensor(len(samples.rewards), device=result.loss.device)
        self.log_train_loss(result.loss, count, batch_idx)
        if (batch_idx + 1) % self.trainer.log_every_n_steps == 0:
            metrics = self.ppo_metrics(rollout, result, values.detach(), entropy)
            self.log_dict({f"train/{k}": v for k, v in metrics.items() if not math.isnan(v)},
                          on_step=True, on_epoch=False)
        return result.loss + self.adapter_penalty()

    def ppo_metrics(self, rollout: Rollout, result: Any, values: torch.Tensor,
                    entropy: torch.Tensor | None) -> dict[str, float]:
        """TRL's PPO metrics by their names (its `val/*` value statistics as `value/*`: val/ is the
        validation stage here), the rewards and the completion lengths."""
        samples, mask = rollout.samples, rollout.samples.completion_mask
        scored = samples.rewards[~samples.rewards.isnan()]
        kl_sum = rollout.kl.sum(1)
        out = {
            "objective/kl": kl_sum.mean().item(),
            "objective/scores": scored.float().mean().item() if scored.numel() else float("nan"),
            "objective/non_score_reward": (-self.hparams.task["kl_coef"] * kl_sum).mean().item(),
            "loss/policy_avg": result.policy_loss.item(), "loss/value_avg": result.value_loss.item(),
            "policy/clipfrac_avg": result.policy_clipfrac.item(),
            "policy/approxkl_avg": result.approx_kl.item(),
            "value/clipfrac_avg": result.value_clipfrac.item(), "value/ratio": result.ratio.item(),
            "value/mean": masked_mean(values, mask).item(),
            "value/explained_variance": explained_variance(values, rollout.returns, mask).item(),
            "unscored": samples.rewards.isnan().float().mean().item(),
            "completions/mean_length": mask.sum(1).float().mean().item(),
        }
        for name, per in samples.per_function.items():
            kept = per[~per.isnan()]
            out[f"rewards/{name}/mean"] = kept.float().mean().item() if kept.numel() else float("nan")
        if entropy is not None:
            out["policy/entropy_avg"] = entropy.item()
        return out
