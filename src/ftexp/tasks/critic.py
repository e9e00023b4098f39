"""The separate critic of task=ppo (`task.critic=separate`): a value model of its own, started
from a finished task=reward run — its transformer (adapter merged) and its score head — as TRL's
PPOTrainer starts its value model from the reward model. It reads the policy's token ids, so the
reward run must share the policy's tokenizer. The whole critic is trained (TRL's value model is
too); `task.critic=shared` is the memory-lean choice, a value head on the policy's own backbone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftexp.runs.errors import ConfigError


class ValueModel(nn.Module):
    """A transformer (no LM head) and a linear head: one value per position."""

    def __init__(self, backbone: nn.Module, head: nn.Linear):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids).last_hidden_state
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).float()


def load_critic(source: str, policy_tokenizer: Any, dtype: torch.dtype, disable_dropout: bool) -> ValueModel:
    """A trainable ValueModel from a task=reward run's best checkpoint, in `dtype`."""
    from ftexp.builders.backbone import load_tokenizer
    from ftexp.builders.init_from import merged_network
    from ftexp.predict import load_checkpoint
    from ftexp.runs import run_dir

    path = Path(source).expanduser()
    ckpt = path / run_dir.BEST_CHECKPOINT
    if not (path / run_dir.CONFIG_FILE).is_file() or not ckpt.is_file():
        raise ConfigError(f"task.critic_from={source} is not a finished ftexp run ({ckpt.name} or "
                          f"{run_dir.CONFIG_FILE} is missing); give a task=reward run directory.")
    saved = load_checkpoint(ckpt)
    hparams = saved["hyper_parameters"]
    if hparams["task"]["name"] != "reward":
        raise ConfigError(f"task.critic_from={source} is a task={hparams['task']['name']} run; the critic "
                          "starts from a task=reward run's model and score head.")
    m = hparams["model"]
    tokenizer = load_tokenizer(m.get("tokenizer") or m["name_or_path"],
                               trust_remote_code=m["trust_remote_code"], revision=m.get("revision"),
                               added_tokens=list(m.get("add_special_tokens") or []))
    if tokenizer.get_vocab() != policy_tokenizer.get_vocab():
        raise ConfigError(f"task.critic_from={source} has another tokenizer than the policy "
                          f"({len(tokenizer)} vs {len(policy_tokenizer)} tokens, or the same ids for "
                          "other tokens); the critic reads the policy's token ids, so train the reward "
                          "model on the policy's family.")
    dtype_name = str(dtype).removeprefix("torch.")
    backbone = merged_network(hparams, saved["state_dict"], dtype_name, causal_lm=False)
    weight = saved["state_dict"]["network.head.weight"]
    head = nn.Linear(weight.shape[1], 1, bias=False)
    with torch.no_grad():
        head.weight.copy_(weight)
    critic = ValueModel(backbone, head).train().requires_grad_(True)
    if disable_dropout:  # as the policy's: the rollout's values and the trained ones must agree
        for module in critic.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
    return critic
