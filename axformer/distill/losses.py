"""Distillation losses on tensors: each a plain function, testable against a direct computation.

All take a padding mask where tokens are involved, so that padded positions
(which differ with the batch's longest member) never contribute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of the student's tempered distribution against the teacher's, times T^2 (Hinton et al.).

    The T^2 factor keeps the gradient's scale independent of the temperature, so
    the weights of the other terms need not change with it. For a regression
    head (one output) it is the squared error to the teacher's prediction. Span
    logits (batch, tokens, 2) are two distributions over the window's tokens, the
    answer's start and its end: each is matched over the real tokens (``mask``)
    and the two cross-entropies averaged.
    """
    if student_logits.dim() == 3:
        return _span_soft_cross_entropy(student_logits, teacher_logits, temperature, mask)
    if student_logits.shape[-1] == 1:
        return ((student_logits.float() - teacher_logits.float()) ** 2).mean()
    t = temperature
    target = F.softmax(teacher_logits.float() / t, dim=-1)
    return -(target * F.log_softmax(student_logits.float() / t, dim=-1)).sum(-1).mean() * t * t


def _span_soft_cross_entropy(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, mask: torch.Tensor | None
) -> torch.Tensor:
    t = temperature
    width = student.shape[1]
    teacher = teacher[:, :width]  # a cached teacher row is as wide as the longest window; this batch may be narrower
    real = (torch.ones(student.shape[:2], dtype=torch.bool, device=student.device) if mask is None
            else mask.bool()).unsqueeze(-1)  # fmt: skip
    far = -1e9  # no probability on padding, and no 0 * inf
    target = F.softmax(teacher.float().masked_fill(~real, far) / t, dim=1)
    log_p = F.log_softmax(student.float().masked_fill(~real, far) / t, dim=1)
    return -(target * log_p).sum(1).mean() * t * t


def hidden_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error between hidden states (batch, tokens, width) over the real tokens only.

    Widths must agree: project the student's states first when they do not.
    """
    m = mask.unsqueeze(-1).to(student_hidden.dtype)
    diff = (student_hidden.float() - teacher_hidden.float()) ** 2 * m
    return diff.sum() / (m.sum() * student_hidden.shape[-1]).clamp_min(1)


def attention_mse(student_probs: torch.Tensor, teacher_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error between attention maps (batch, heads, queries, keys) over real query-key pairs.

    With equal head counts heads are compared one to one; otherwise (a pruned
    student) the head-averaged maps are compared, since the student's heads are
    no longer the teacher's.
    """
    if student_probs.shape[1] != teacher_probs.shape[1]:
        student_probs, teacher_probs = student_probs.mean(1, keepdim=True), teacher_probs.mean(1, keepdim=True)
    pair = (mask[:, None, :, None] * mask[:, None, None, :]).to(student_probs.dtype)
    diff = (student_probs.float() - teacher_probs.float()) ** 2 * pair
    return diff.sum() / (pair.sum() * student_probs.shape[1]).clamp_min(1)
