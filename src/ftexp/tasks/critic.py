"""The separate critic of task=ppo (`task.critic=separate`): a value model of its own, started
from a finished task=reward run — its transformer (adapter merged) and its score head — as TRL's
PPOTrainer starts its value model from the reward model. It reads the policy's token ids, so the
reward run must share the policy's tokenizer, and it reads a value at every position, so the
reward run must pool at the last token (decoders' default). The whole critic is trained, in
float32 (TRL's value model is trained in full too; bf16 weights would round away its small
updates); `task.critic=shared` is the memory-lean choice, a value head on the policy's backbone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftexp.runs.errors import ConfigError
from ftexp.tasks.policy import check_same_vocabulary, disable_dropout


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


def load_critic(source: str, policy_tokenizer: Any, no_dropout: bool) -> ValueModel:
    """A trainable float32 ValueModel from a task=reward run's best checkpoint."""
    from ftexp.builders.backbone import is_decoder_only, load_configured_tokenizer
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
    pooling = hparams["task"].get("pooling", "auto")
    check_same_vocabulary(policy_tokenizer, load_configured_tokenizer(hparams["model"]),
                          f"task.critic_from={source}", "policy", "the critic reads the policy's token "
                          "ids, so train the reward model on the policy's family.")
    backbone = merged_network(hparams, saved["state_dict"], "float32", causal_lm=False)
    if pooling not in ("auto", "last") or not is_decoder_only(backbone.config):
        raise ConfigError(f"task.critic_from={source} scores a pooled sequence (task.pooling={pooling}, "
                          "or an encoder); a critic needs a value at every token, so start it from a "
                          "decoder reward run pooled at its last token.")
    weight = saved["state_dict"]["network.head.weight"]
    head = nn.Linear(weight.shape[1], 1, bias=False)
    with torch.no_grad():
        head.weight.copy_(weight)
    critic = ValueModel(backbone, head).train().requires_grad_(True)
    if no_dropout:  # as the policy's: the rollout's values and the trained ones must agree
        disable_dropout(critic)
    return critic
