"""Task schemas of online RL: GRPO (and its relatives, as keys)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from omegaconf import DictConfig

from ftexp.config.base import is_number
from ftexp.config.task import TaskConfig
from ftexp.runs.errors import ConfigError

# GRPO's `task.loss_type` and `task.scale_rewards` values (ftexp.tasks.grpo_losses).
GRPO_LOSS_TYPES = ("grpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")
# `task.advantage`: the baseline a completion's reward is compared with — its group's mean (GRPO),
# the mean of the other completions of its prompt (RLOO), or the batch's mean (REINFORCE++) — and
# the scaling each uses when task.scale_rewards is null.
ADVANTAGES = ("group", "rloo", "reinforce_pp")
DEFAULT_SCALE = {"group": "group", "rloo": "none", "reinforce_pp": "batch"}
# `task.importance_sampling`: the policy ratio per token (GRPO) or per completion (GSPO).
IMPORTANCE_SAMPLING = ("token", "sequence")


@dataclass
class GRPOTaskConfig(TaskConfig):
    """grpo: online RL — the policy samples `num_generations` completions per prompt, reward
    functions score them, and the clipped policy-ratio objective (tasks/grpo_losses.py) pushes it
    toward the better ones of each group."""
    monitor: str = "val/reward"  # mean reward of greedy completions on the validation prompts
    num_generations: int = 4  # G: completions sampled per prompt (a group)
    # Optimizer steps per batch of samples (PPO epochs, TRL's num_iterations): 1 is on-policy;
    # more reuse each batch's samples, and the clipping (epsilon) bounds how far the policy moves.
    num_iterations: int = 1
    epsilon: float = 0.2  # the ratio is clipped to [1 - epsilon, 1 + epsilon_high]
    epsilon_high: Optional[float] = None  # null: epsilon (DAPO's clip-higher: e.g. 0.28)
    # Weight of the k3 KL to the reference policy; 0: no reference and no reference pass at all.
    beta: float = 0.0
    # With beta > 0: auto (the adapter-disabled network with a PEFT adapter, else copy) | adapter |
    # copy (a frozen copy of the starting weights).
    reference: str = "auto"
    loss_type: str = "grpo"  # grpo (per-sequence mean) | dr_grpo (/ G L) | dapo (token mean)
    # The advantage's baseline: group (GRPO: the group's mean) | rloo (RLOO: the mean of the
    # prompt's other completions) | reinforce_pp (REINFORCE++: the batch's mean).
    advantage: str = "group"
    # Centred rewards / the group's std | / the batch's std | none (Dr. GRPO); null: the
    # advantage's own (group: group, rloo: none, reinforce_pp: batch).
    scale_rewards: Optional[str] = None
    # The policy ratio per token (GRPO) | per completion, exp of the mean token log-ratio (GSPO;
    # its paper clips at epsilon=3e-4, epsilon_high=4e-4, with loss_type=grpo).
    importance_sampling: str = "token"
    # Tokens sampled per completion (null: generation.max_new_tokens); dr_grpo divides by it.
    max_completion_length: Optional[int] = None
    # name → {_target_, weight, its own keys}: ftexp.tasks.rewards.build_reward builds each; a completion's
    # reward is the weighted sum. The default (`correct`: exact match of the last number against
    # the `answer` column) is in conf/task/grpo.yaml, not here: a schema's dict default would come
    # back in every merge, so ~task.rewards.correct could not drop it.
    rewards: dict[str, Any] = field(default_factory=dict)
    # Generate from this many fixed validation prompts at each evaluation.
    sample_generations: int = 2
    # Who samples the completions: transformers' generate (everywhere) | vllm (one CUDA GPU, the
    # `vllm` extra; a colocated engine that gets the policy's weights after each optimizer step).
    generation_backend: str = "transformers"
    vllm_gpu_memory_utilization: float = 0.3  # the share of GPU memory vLLM may take (its KV cache)
    # Dropout off in the policy (as for the preference tasks): the ratio and KL compare log-probs
    # of the same network, which random dropout masks would make differ.
    disable_dropout: bool = True

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        **TaskConfig.CHOICES, "loss_type": GRPO_LOSS_TYPES, "scale_rewards": SCALE_REWARDS,
        "advantage": ADVANTAGES, "importance_sampling": IMPORTANCE_SAMPLING,
        "reference": ("auto", "adapter", "copy"), "generation_backend": ("transformers", "vllm")}

    @staticmethod
    def check(task: DictConfig) -> None:
        if task.num_generations < 2 and task.advantage != "reinforce_pp":
            raise ConfigError(f"task.num_generations={task.num_generations} must be at least 2 with "
                              f"task.advantage={task.advantage}: its advantages compare the completions "
                              "of one prompt with each other (task.advantage=reinforce_pp compares "
                              "with the batch and takes 1).")
        if task.num_generations < 1:
            raise ConfigError(f"task.num_generations={task.num_generations} must be at least 1.")
        if task.advantage == "reinforce_pp" and task.scale_rewards == "group":
            raise ConfigError("task.scale_rewards=group does not apply to task.advantage=reinforce_pp, "
                              "which centres and scales by the whole batch; use batch (its default, "
                              "null) or none.")
        if task.num_iterations < 1:
            raise ConfigError(f"task.num_iterations={task.num_iterations} must be at least 1 "
                              "(optimizer steps per batch of samples).")
        if not 0.0 < task.epsilon < 1.0:
            raise ConfigError(f"task.epsilon={task.epsilon} must lie in (0, 1): the policy ratio is "
                              "clipped to [1 - epsilon, 1 + epsilon_high].")
        if task.epsilon_high is not None and not task.epsilon_high > 0:
            raise ConfigError(f"task.epsilon_high={task.epsilon_high} must be > 0 (or null: epsilon).")
        if not task.beta >= 0:
            raise ConfigError(f"task.beta={task.beta} must be >= 0 (the KL weight; 0: no reference).")
        if task.max_completion_length is not None and task.max_completion_length < 1:
            raise ConfigError(f"task.max_completion_length={task.max_completion_length} must be at least "
                              "1 (or null: generation.max_new_tokens).")
        if task.sample_generations < 0:
            raise ConfigError(f"task.sample_generations={task.sample_generations} must be 0 or more.")
        if not 0.0 < task.vllm_gpu_memory_utilization < 1.0:
            raise ConfigError(f"task.vllm_gpu_memory_utilization={task.vllm_gpu_memory_utilization} must "
                              "lie in (0, 1): the share of GPU memory the vLLM engine may take.")
        if not task.rewards:
            raise ConfigError("task.rewards is empty: give at least one reward function, e.g. "
                              "+task.rewards.correct._target_=ftexp.tasks.rewards.exact_match.")
        for name, node in task.rewards.items():
            if not isinstance(node, DictConfig) or "_target_" not in node:
                raise ConfigError(f"task.rewards.{name} needs a _target_: "
                                  f"+task.rewards.{name}._target_=my.module.my_reward.")
            weight = node.get("weight", 1.0)
            if not is_number(weight) or weight != weight or abs(weight) == float("inf"):
                raise ConfigError(f"task.rewards.{name}.weight={weight} must be a finite number.")
