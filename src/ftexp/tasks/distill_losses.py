"""Knowledge distillation as pure functions of logits: the generalised Jensen–Shannon divergence
between a student's and a teacher's next-token distributions (GKD, Agarwal et al. 2024,
arXiv:2306.13649, eq. 1; TRL's `generalized_jsd_loss`), and its sum over the trained tokens of a
batch computed from final hidden states a chunk of tokens at a time, so the (tokens, vocab)
logits of both models never exist whole.

With p_S, p_T the student's and teacher's distributions at temperature tau and the mixture
M = (1 - beta) p_S + beta p_T (TRL's convention):

    JSD_beta = beta KL(p_T || M) + (1 - beta) KL(p_S || M)     for 0 < beta < 1
    beta = 0:  KL(p_T || p_S)   (forward KL: the student covers the teacher's modes)
    beta = 1:  KL(p_S || p_T)   (reverse KL: mode seeking)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ftexp.config.task import check_divergence


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5,
                    temperature: float = 1.0) -> torch.Tensor:
    """The divergence at each position, summed over the vocabulary: (..., V) logits → (...).
    In float32 at least; the teacher's side carries no gradient."""
    check_divergence(beta, temperature)
    wide = torch.promote_types(student_logits.dtype, torch.float32)
    student = F.log_softmax(student_logits.to(wide) / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.detach().to(wide) / temperature, dim=-1)

    def kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:  # KL(p || q), both log-probs
        return (p_log.exp() * (p_log - q_log)).sum(-1)

    if beta == 0:
        return kl(teacher, student)
    if beta == 1:
        return kl(student, teacher)
    mixture = torch.logsumexp(torch.stack([student + math.log(1 - beta), teacher + math.log(beta)]), dim=0)
    return beta * kl(teacher, mixture) + (1 - beta) * kl(student, mixture)


Logits = Callable[[torch.Tensor], torch.Tensor]


def distillation_sum(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, labels: torch.Tensor,
                     student_logits: Logits, teacher_logits: Logits, *, beta: float, temperature: float,
                     chunk_tokens: int = 1024, ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the divergence over the trained tokens, their count). Position t's distributions
    predict labels[t + 1]; only positions whose next label is not `ignore_index` count. Each
    chunk's logits are recomputed in the backward pass (activation checkpointing) rather than
    kept, so memory holds one chunk of (tokens, vocab) at a time."""
    trained = labels[:, 1:] != ignore_index
    student = student_hidden[:, :-1][trained]
    teacher = teacher_hidden[:, :-1][trained].detach()

    def chunk_sum(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return generalized_jsd(student_logits(s), teacher_logits(t), beta, temperature).sum()

    total = student_hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, student.shape[0], chunk_tokens):
        s, t = student[start:start + chunk_tokens], teacher[start:start + chunk_tokens]
        total = total + (checkpoint(chunk_sum, s, t, use_reentrant=False) if s.requires_grad
                         else chunk_sum(s, t))
    return total, trained.sum()
