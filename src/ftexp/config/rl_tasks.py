"""Task schemas of online RL: GRPO (and its relatives, as keys) and PPO, on shared keys."""

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
class OnlineRLTaskConfig(TaskConfig):
    """Keys of the tasks that learn from rewards on their own samples (grpo, ppo): the sampling,
    the reward functions, the reference and the validation by greedy completions."""
    monitor: str = "val/reward"  # mean reward of greedy completions on the validation prompts
    num_generations: int = 4  # G: completions sampled per prompt (a group)
    # Optimizer steps per batch of samples (PPO epochs: TRL's num_iterations / num_ppo_epochs): 1 is
    # on-policy; more reuse each batch's samples, and the clipping bounds how far the policy moves.
    num_iterations: int = 1
    # With a KL weight > 0: auto (the adapter-disabled network with a PEFT adapter, else copy) |
    # adapter | copy (a frozen copy of the starting weights).
    reference: str = "auto"
    # Tokens sampled per completion (null: generation.max_new_tokens); dr_grpo divides by it.
    max_completion_length: Optional[int] = None
    # name → {_target_, weight, its own keys}: ftexp.tasks.rewards.build_reward builds each; a completion's
    # reward is the weighted sum (ftexp.tasks.rewards.reward_model(run=…) scores with a task=reward
    # run). The default is in the task's conf/task/ file, not here: a schema's dict default would come
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
        **TaskConfig.CHOICES, "reference": ("auto", "adapter", "copy"),
        "generation_backend": ("transformers", "vllm")}

    @staticmethod
    def check(task: DictConfig) -> None:
        if task.num_generations < 1:
            raise ConfigError(f"task.num_generations={task.num_generations} must be at least 1.")
        if task.num_iterations < 1:
            raise ConfigError(f"task.num_iterations={task.num_iterations} must be at least 1 "
                              "(optimizer steps per batch of samples).")
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


@dataclass
class GRPOTaskConfig(OnlineRLTaskConfig):
    """grpo: online RL — the policy samples `num_generations` completions per prompt, reward
    functions score them, and the clipped policy-ratio objective (tasks/grpo_losses.py) pushes it
    toward the better ones of each group."""
    epsilon: float = 0.2  # the ratio is clipped to [1 - epsilon, 1 + epsilon_high]
    epsilon_high: Optional[float] = None  # null: epsilon (DAPO's clip-higher: e.g. 0.28)
    # Weight of the k3 KL to the reference policy; 0: no reference and no reference pass at all.
    beta: float = 0.0
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

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        **OnlineRLTaskConfig.CHOICES, "loss_type": GRPO_LOSS_TYPES, "scale_rewards": SCALE_REWARDS,
        "advantage": ADVANTAGES, "importance_sampling": IMPORTANCE_SAMPLING}

    @staticmethod
    def check(task: DictConfig) -> None:
        if task.num_generations < 2 and task.advantage != "reinforce_pp":
            raise ConfigError(f"task.num_generations={task.num_generations} must be at least 2 with "
                              f"task.advantage={task.advantage}: its advantages compare the completions "
                              "of one prompt with each other (task.advantage=reinforce_pp compares "
                              "with the batch and takes 1).")
        OnlineRLTaskConfig.check(task)
        if task.advantage == "reinforce_pp" and task.scale_rewards == "group":
            raise ConfigError("task.scale_rewards=group does not apply to task.advantage=reinforce_pp, "
                              "which centres and scales by the whole batch; use batch (its default, "
                              "null) or none.")
        if not 0.0 < task.epsilon < 1.0:
            raise ConfigError(f"task.epsilon={task.epsilon} must lie in (0, 1): the policy ratio is "
                              "clipped to [1 - epsilon, 1 + epsilon_high].")
        if task.epsilon_high is not None and not task.epsilon_high > 0:
            raise ConfigError(f"task.epsilon_high={task.epsilon_high} must be > 0 (or null: epsilon).")
        if not task.beta >= 0:
            raise ConfigError(f"task.beta={task.beta} must be >= 0 (the KL weight; 0: no reference).")


@dataclass
class PPOTaskConfig(OnlineRLTaskConfig):
    """ppo: online RL with a learned value — the policy samples completions, reward functions (a
    trained reward model among them) score them, a per-token KL penalty to the reference is folded
    into the reward, a value head on the policy's backbone estimates the returns, and GAE
    advantages drive the clipped policy and value losses (tasks/ppo_losses.py, TRL's PPOTrainer)."""
    num_generations: int = 1  # completions per prompt: PPO's baseline is the value head, not a group
    kl_coef: float = 0.05  # weight of the per-token KL penalty in the reward; 0: no reference pass
    gamma: float = 1.0  # discount of later tokens' rewards
    lam: float = 0.95  # GAE's lambda: 1 is the Monte-Carlo return, 0 one-step TD
    cliprange: float = 0.2  # the policy ratio is clipped to [1 - cliprange, 1 + cliprange]
    cliprange_value: float = 0.2  # the value may move this far from the rollout's value
    vf_coef: float = 0.1  # weight of the value loss
    whiten_rewards: bool = False  # standardise the per-token rewards before GAE (advantages always are)
    # The value model: shared (a value head on the policy's backbone and adapter, zero-initialised) |
    # separate (a model of its own, started from the task=reward run at critic_from: tasks/critic.py).
    critic: str = "shared"
    critic_from: Optional[str] = None  # with critic=separate: a finished task=reward run directory

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        **OnlineRLTaskConfig.CHOICES, "critic": ("shared", "separate")}

    @staticmethod
    def check(task: DictConfig) -> None:
        OnlineRLTaskConfig.check(task)
        if task.critic == "separate" and not task.critic_from:
            raise ConfigError("task.critic=separate needs task.critic_from=<a task=reward run dir> to start "
                              "the critic from (or task.critic=shared: a value head on the policy).")
        if task.critic == "shared" and task.critic_from:
            raise ConfigError(f"task.critic_from={task.critic_from} is read with task.critic=separate only; "
                              "add task.critic=separate, or drop task.critic_from.")
        if not task.kl_coef >= 0:
            raise ConfigError(f"task.kl_coef={task.kl_coef} must be >= 0 (0: no reference pass).")
        for key in ("gamma", "lam"):
            if not 0.0 <= task[key] <= 1.0:
                raise ConfigError(f"task.{key}={task[key]} must lie in [0, 1].")
        for key in ("cliprange", "cliprange_value"):
            if not task[key] > 0:
                raise ConfigError(f"task.{key}={task[key]} must be > 0.")
        if not task.vf_coef >= 0:
            raise ConfigError(f"task.vf_coef={task.vf_coef} must be >= 0 (the value loss's weight).")
