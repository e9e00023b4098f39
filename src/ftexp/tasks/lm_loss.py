"""Token losses and log-probs of a causal LM from its final hidden states, one chunk of tokens at
a time, so the (batch, seq, vocab) logits never exist: only one chunk's logits are computed and
widened to float32, and under autograd each chunk is recomputed in the backward pass
(torch.utils.checkpoint) instead of kept. With a 128k vocabulary the full logits of 2 x 2048
tokens are 1 GiB in bf16, 2 GiB once widened, and the cross-entropy keeps more of that size for
its backward; a chunk of 1024 tokens is a quarter of one of them.

The hidden states come from the network's own forward (so hooks, PEFT wrappers, NEFTune and
torch.compile see the same call as before) asked for its hidden states and the logits of one
position only (`logits_to_keep=1`); the LM head (`get_output_embeddings()`) is then called as a
module on each chunk, so LoRA on the head, tied embeddings and ZeRO-3's gather hooks still work.

Which heads this reproduces is a list, not a guess (`HEADS`): the architectures whose causal-LM
forward is `lm_head(final hidden states)`, plus those whose extra step on the logits is known
(Gemma 2's soft-capping, Cohere's logit scale). Any other architecture, and prompt-learning
adapters (whose virtual tokens shift the positions), keep the full-logits path, with the reason
in the log and in metrics.json (`loss_path`). tests/test_lm_loss.py checks every listed
architecture against its own full forward.

`model.kernels` swaps the chunked arithmetic for a fused CUDA kernel (Liger's fused linear
cross-entropy, Apple's Cut Cross-Entropy) on the same hidden states.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ftexp.data.targets import IGNORE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogitTransform:
    """What a model's causal-LM forward does to `lm_head(h)` before returning logits, in its order:
    multiply by `scale`, then soft-cap to (-softcap, softcap) with tanh."""
    scale: float | None = None
    softcap: float | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def _plain(config: Any) -> LogitTransform:
    return LogitTransform()


# model_type -> the logit transform its causal-LM forward applies. Only architectures checked by
# tests/test_lm_loss.py (chunked == the model's own logits); the rest keep the full-logits path.
HEADS: dict[str, Callable[[Any], LogitTransform]] = {
    **{name: _plain for name in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gpt2", "bloom",
                                 "gemma", "gpt_neox", "phi3", "falcon", "olmo2", "starcoder2", "opt")},
    "gemma2": lambda c: LogitTransform(softcap=c.final_logit_softcapping),
    "cohere": lambda c: LogitTransform(scale=c.logit_scale),
}

KERNEL_PATHS = {"liger": "liger_flce", "cut_cross_entropy": "cce"}


@dataclass(frozen=True)
class LossPath:
    """How a task turns hidden states into token losses: `name` is what the run reports
    (chunked(N) | full_logits | liger_flce | cce); `reason` says why a faster path was not taken."""
    name: str
    chunk_tokens: int | None = None
    kernel: str = "none"
    transform: LogitTransform = LogitTransform()
    reason: str | None = None

    @property
    def full_logits(self) -> bool:
        return self.name == "full_logits"

    def describe(self) -> str:
        return self.name + (f" ({self.reason})" if self.reason else "")


def _unwrapped(network: nn.Module) -> nn.Module:
    return network.get_base_model() if hasattr(network, "get_base_model") else network


def choose_loss_path(network: nn.Module, chunk_tokens: int | None, kernels: str = "none") -> LossPath:
    """The loss path for this network and the model group's `loss_chunk_tokens` / `kernels`."""
    peft_config = getattr(network, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return LossPath("full_logits", reason="prompt-learning adapters prepend virtual tokens")
    model_type = getattr(getattr(_unwrapped(network), "config", None), "model_type", None)
    heads = HEADS.get(model_type)
    if kernels != "none" or chunk_tokens is not None:
        if heads is None:
            return LossPath("full_logits", reason=f"model_type={model_type} is not in lm_loss.HEADS")
        transform = heads(_unwrapped(network).config)
        reason = None
        if kernels != "none":
            # The kernels take the head's weight directly: an adapter on the head would be skipped.
            if type(output_head(network)) is not nn.Linear:
                reason = f"model.kernels={kernels} needs a plain linear LM head"
            elif transform.scale is not None:
                reason = f"model.kernels={kernels} has no logit scale ({model_type})"
            else:
                return LossPath(KERNEL_PATHS[kernels], chunk_tokens, kernels, transform)
        if chunk_tokens is None:
            return LossPath("full_logits", reason=reason)
        return LossPath(f"chunked({chunk_tokens})", chunk_tokens, transform=transform, reason=reason)
    return LossPath("full_logits")


def final_hidden_states(network: nn.Module, **inputs: Any) -> torch.Tensor:
    """(batch, seq, hidden) states the LM head reads (after the final norm), from the network's
    own forward with the logits of the last position only."""
    out = network(**inputs, use_cache=False, output_hidden_states=True, logits_to_keep=1)
    return out.hidden_states[-1]


def output_head(network: nn.Module) -> nn.Module:
    return _unwrapped(network).get_output_embeddings()


def _chunk_logps(head: nn.Module, transform: LogitTransform, temperature: float,
                 hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    logits = transform(head(hidden))
    if temperature != 1.0:
        logits = logits / temperature
    # The same kernel as the full path (F.cross_entropy on float32 logits), so the numbers match.
    return -F.cross_entropy(logits.float(), ids, reduction="none")


def chunked_token_logps(hidden: torch.Tensor, ids: torch.Tensor, head: nn.Module, chunk_tokens: int,
                        transform: LogitTransform = LogitTransform(), temperature: float = 1.0,
                        ignore_index: int | None = IGNORE) -> torch.Tensor:
    """log softmax(transform(head(hidden)) / temperature)[ids] at every position, in float32.

    hidden: (..., H), already aligned: hidden[..., t, :] scores ids[..., t] (shift before calling).
    Positions whose id is `ignore_index` are skipped (no logits computed) and get 0. Under autograd
    each chunk of `chunk_tokens` positions is recomputed in the backward pass, so no chunk's
    logits are kept; the gradients equal the full-logits computation's."""
    keep = ids != ignore_index if ignore_index is not None else torch.ones_like(ids, dtype=torch.bool)
    rows, targets = hidden[keep], ids[keep].long()
    pieces = []
    for start in range(0, len(rows), chunk_tokens):
        part = (rows[start:start + chunk_tokens], targets[start:start + chunk_tokens])
        if torch.is_grad_enabled():
            pieces.append(checkpoint(_chunk_logps, head, transform, temperature, *part, use_reentrant=False))
        else:
            pieces.append(_chunk_logps(head, transform, temperature, *part))
    if not pieces:  # nothing scored: zeros that still backpropagate (to zero), as full logits do
        return hidden.sum(-1).float() * 0
    out = torch.zeros(ids.shape, dtype=torch.float32, device=hidden.device)
    return out.masked_scatter(keep, torch.cat(pieces))


@torch.no_grad()
def chunked_token_entropy(hidden: torch.Tensor, head: nn.Module, chunk_tokens: int,
                          transform: LogitTransform = LogitTransform(),
                          temperature: float = 1.0) -> torch.Tensor:
    """Entropy (nats) of the next-token distribution at each position of hidden (..., H), as
    grpo_losses.token_entropy computes it from logits (a metric: no gradient), in float32."""
    rows = hidden.reshape(-1, hidden.shape[-1])
    out = []
    for start in range(0, len(rows), chunk_tokens):
        logits = transform(head(rows[start:start + chunk_tokens]))
        if temperature != 1.0:
            logits = logits / temperature
        z = logits.float()
        out.append(torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(-1))
    if not out:
        return hidden.new_zeros(hidden.shape[:-1], dtype=torch.float32)
    return torch.cat(out).view(hidden.shape[:-1])


def token_losses_from_hidden(hidden: torch.Tensor, labels: torch.Tensor, head: nn.Module,
                             path: LossPath) -> tuple[torch.Tensor, torch.Tensor]:
    """tasks.causal_lm.token_losses from hidden states: the loss of predicting labels[t + 1] from
    position t and the mask of trained tokens, both (batch, seq - 1); ignored tokens have loss 0."""
    targets = labels[:, 1:]
    logps = chunked_token_logps(hidden[:, :-1], targets, head, path.chunk_tokens, path.transform)
    return -logps, targets != IGNORE


class _SummedLinearCrossEntropy(torch.autograd.Function):
    """sum over rows of cross_entropy(transform(hidden @ weight.T + bias), targets), with the
    gradients computed chunk by chunk in the forward pass (as Liger's fused linear cross-entropy
    does): the loss is a sum, so its gradient is known up to the one scalar the backward pass
    brings, and no chunk's logits outlive its iteration. Three matmuls per chunk like the
    full-logits path (logits, input gradient, weight gradient; two when the head is frozen), where
    recomputing each chunk in the backward pass would add a fourth."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, chunk_tokens: int, transform: LogitTransform) -> torch.Tensor:
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if want_h else None
        # float32 accumulators, so a bf16 head's gradient is rounded once, as autograd's is.
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if want_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if want_b else None
        for start in range(0, len(hidden), chunk_tokens):
            h, t = hidden[start:start + chunk_tokens], targets[start:start + chunk_tokens]
            raw = F.linear(h, weight, bias)
            dtype = raw.dtype
            logits = transform(raw).float()
            del raw  # with no transform and a float32 head, `logits` is that same buffer
            rows = torch.arange(len(t), device=t.device)
            picked = logits[rows, t]
            capped = 1 - (logits / transform.softcap) ** 2 if transform.softcap is not None else None
            # The loss (log-sum-exp minus the target's logit) and its gradient, softmax - one_hot,
            # made in place in the logits' buffer: one (chunk, vocab) float32 array alive, where
            # cross_entropy's forward and backward hold three.
            peak = logits.amax(dim=-1, keepdim=True)
            grad = logits.sub_(peak).exp_()
            norm = grad.sum(dim=-1, keepdim=True)
            total += (peak + norm.log()).squeeze(-1).sub(picked).sum()
            grad.div_(norm)
            grad[rows, t] -= 1
            if capped is not None:  # back through the transform
                grad *= capped
            if transform.scale is not None:
                grad *= transform.scale
            grad = grad.to(dtype)
            if grad_h is not None:
                grad_h[start:start + chunk_tokens] = grad @ weight.to(dtype)
            if grad_w is not None:
                grad_w += (grad.T @ h.to(dtype)).float()
            if grad_b is not None:
                grad_b += grad.float().sum(0)
        ctx.save_for_backward(*(g for g in (grad_h, grad_w, grad_b) if g is not None))
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        ctx.present = (grad_h is not None, grad_w is not None, grad_b is not None)
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = iter(ctx.saved_tensors)
        out = [next(saved) * grad_total if present else None for present in ctx.present]
        if out[1] is not None:
            out[1] = out[1].to(ctx.dtypes[0])
        if out[2] is not None:
            out[2] = out[2].to(ctx.dtypes[1])
        return out[0], out[1], out[2], None, None, None


def fuses(head: nn.Module) -> bool:
    """Whether summed_token_loss may read the head's weight directly: a plain linear layer whose
    weight is whole here (a DeepSpeed ZeRO-3 shard is gathered only inside the module's call)."""
    return type(head) is nn.Linear and not hasattr(head.weight, "ds_id")


def summed_token_loss(hidden: torch.Tensor, labels: torch.Tensor, head: nn.Module,
                      path: LossPath) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss of predicting labels[t + 1] from position t, trained-token count) in chunks:
    what the causal-LM objectives need. Fused (gradients in the forward pass) for a plain linear
    head under autograd; otherwise token_losses_from_hidden's recompute-per-chunk."""
    targets = labels[:, 1:]
    keep = targets != IGNORE
    count = keep.sum()
    wants_grad = torch.is_grad_enabled() and (hidden.requires_grad or any(
        p.requires_grad for p in head.parameters()))
    if not (wants_grad and fuses(head)):
        losses, _ = token_losses_from_hidden(hidden, labels, head, path)
        return losses.sum(), count
    rows = hidden[:, :-1][keep]
    total = _SummedLinearCrossEntropy.apply(rows, head.weight, head.bias, targets[keep].long(),
                                            path.chunk_tokens, path.transform)
    return total, count


def sequence_logps_from_hidden(hidden: torch.Tensor, labels: torch.Tensor, head: nn.Module,
                               path: LossPath, average: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """preference_losses.sequence_logps from hidden states: per-sequence summed log-probs of the
    labels that are not IGNORE (shifted here), and their counts (batch,) int64."""
    targets = labels[:, 1:]
    mask = targets != IGNORE
    logps = chunked_token_logps(hidden[:, :-1], targets, head, path.chunk_tokens, path.transform).sum(-1)
    counts = mask.sum(-1)
    if average:
        logps = logps / counts.clamp(min=1)
    return logps, counts


def kernel_loss_sum(hidden: torch.Tensor, labels: torch.Tensor, head: nn.Module,
                    path: LossPath) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed token loss, trained-token count) by a fused CUDA kernel (model.kernels). Both take
    the head's weight directly, so the head must be a plain linear layer (no adapter on it)."""
    targets = labels[:, 1:]
    keep = targets != IGNORE
    rows, ids = hidden[:, :-1][keep], targets[keep]
    weight, bias = head.weight, getattr(head, "bias", None)
    if path.kernel == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        loss_fn = LigerFusedLinearCrossEntropyLoss(reduction="sum", softcap=path.transform.softcap)
        total = loss_fn(weight, rows, ids, bias)
    else:
        from cut_cross_entropy import linear_cross_entropy

        total = linear_cross_entropy(rows, weight, ids, bias=bias, reduction="sum",
                                     softcap=path.transform.softcap)
    return total.float(), keep.sum()


def apply_kernel_patches(network: nn.Module, kernels: str) -> None:
    """model.kernels=liger: Liger's fused RMSNorm / RoPE / SwiGLU patches on the built model, where
    Liger has them for its architecture (the loss itself is kernel_loss_sum)."""
    if kernels != "liger":
        return
    import liger_kernel.transformers as liger

    model = _unwrapped(network)
    patch = getattr(liger, f"apply_liger_kernel_to_{model.config.model_type}", None)
    if patch is None:
        log.info("model.kernels=liger: no Liger patches for %s; fused loss only", model.config.model_type)
        return
    patch(model=model, fused_linear_cross_entropy=False, cross_entropy=False)


def loss_path_for(network: nn.Module, model: dict[str, Any], kernels: bool = True) -> LossPath:
    """The path for a task's network and its model group (keys an older run's checkpoint lacks
    read as the full-logits path it used), logged once at start-up. `kernels=False`: the task
    needs per-token log-probs, which the fused kernels do not return."""
    chosen = model.get("kernels", "none")
    path = choose_loss_path(network, model.get("loss_chunk_tokens"), chosen if kernels else "none")
    if not kernels and chosen != "none" and path.reason is None:
        path = LossPath(path.name, path.chunk_tokens, transform=path.transform,
                        reason=f"model.kernels={chosen} serves the causal-LM loss only")
    log.info("loss_path: %s", path.describe())
    return path


def hidden_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The forward inputs of a batch: unpacked rows carry an attention mask, packed rows position
    ids (see data/packing.py), from which transformers builds the block-diagonal mask."""
    return {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
