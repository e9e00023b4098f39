"""A backbone with a pooled linear head: the model classification and regression tasks train."""

from __future__ import annotations

import torch
from torch import nn

from ftexp.config.task import HeadTaskConfig

POOLINGS = tuple(p for p in HeadTaskConfig.CHOICES["pooling"] if p != "auto")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """(batch, seq, dim) hidden states → (batch, dim), ignoring padding.

    `last` takes the last non-padding token, so it works for right and left padding alike.
    """
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if how == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    if how == "last":
        positions = torch.arange(hidden.size(1), device=hidden.device)
        last = (attention_mask * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    raise ValueError(f"unknown pooling {how!r}; expected one of {POOLINGS}")


class PooledHeadModel(nn.Module):
    """backbone → pool → dropout → linear. The head is fp32 whatever the backbone's dtype."""

    def __init__(self, backbone: nn.Module, num_outputs: int, pooling: str, dropout: float,
                 freeze_backbone: bool = False, bias: bool = True):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.freeze_backbone = freeze_backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.config.hidden_size, num_outputs, bias=bias)
        # Backbone forward passes so far: a run on cached embeddings shows 0 here.
        self.encoder_forward_passes = 0

    def train(self, mode: bool = True) -> "PooledHeadModel":
        super().train(mode)
        if self.freeze_backbone:  # a frozen encoder is a fixed feature extractor: no dropout
            self.backbone.eval()
        return self

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        self.encoder_forward_passes += 1
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               **extra).last_hidden_state
        virtual = hidden.size(1) - attention_mask.size(1)
        if virtual > 0:  # prompt tuning prepends trained tokens: they count as real positions
            attention_mask = torch.cat([attention_mask.new_ones(attention_mask.size(0), virtual),
                                        attention_mask], dim=1)
        return pool(hidden, attention_mask, self.pooling).float()

    def head_outputs(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The head alone, on pooled embeddings (computed now or read from the cache)."""
        return self.head(self.dropout(embeddings))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.head_outputs(self.embed(input_ids, attention_mask, token_type_ids))
