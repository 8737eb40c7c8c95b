"""Approximate attention kernels on (batch, heads, tokens, head_dim) tensors.

Two ways to let each query attend to only K keys:

* **top-K hard attention** (AxFormer): the K keys with the largest attention
  scores (the same keys as the largest probabilities: softmax is monotonic).
  Paper-exact: the kept probabilities are those of the full softmax (not
  renormalised); or renormalised over the K kept keys.
* **sign-matching attention** (in the spirit of the approximate-computing
  paper): keys are ranked for each query by how many coordinates of the query
  and key agree in sign (``sign(q) . sign(k)`` = head_dim - 2 x Hamming
  distance of the sign bits, i.e. an XNOR-popcount), the K best are kept, and
  the exact softmax attention is computed over those K keys only.

``*_reference`` kernels compute the full score matrix and mask it (what
AxFormer's public code does: no compute saved); the gather kernels pick the K
keys and values with TopK/Gather, so the softmax and the value product cost
O(n K d) instead of O(n^2 d). All are plain tensor code that exports to ONNX
(TopK, GatherElements). The masks are transformers' additive (or boolean)
attention masks, broadcastable to (batch, heads, queries, keys).
"""

from __future__ import annotations

import torch


def _additive(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(
            ~mask, torch.finfo(like.dtype).min
        )
    return mask.to(like.dtype)


def scores(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float) -> torch.Tensor:
    """Scaled scores plus the mask, in float32 at least: the selection and the softmax must not depend on
    rounding ties of half-precision inputs (fp16/bf16 models select the same keys as float32 ones)."""
    s = torch.matmul(query, key.transpose(-1, -2)).float() * scaling
    m = _additive(mask, s)
    return s if m is None else s + m


def _gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (b, h, n_k, d), idx (b, h, n_q, K) -> (b, h, n_q, K, d): for each query its K selected rows of x."""
    b, h, nq, k = idx.shape
    flat = idx.reshape(b, h, nq * k, 1).expand(b, h, nq * k, x.shape[-1])
    return torch.gather(x, 2, flat).reshape(b, h, nq, k, x.shape[-1])


def _dropped(probs: torch.Tensor, p: float) -> torch.Tensor:
    return torch.nn.functional.dropout(probs, p=p, training=True) if p > 0 else probs


def _weighted_sum(probs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return torch.matmul(probs.to(rows.dtype).unsqueeze(-2), rows).squeeze(-2)


def topk_reference(query, key, value, mask, scaling: float, k: int, renormalize: bool = False, dropout: float = 0.0):
    """Full softmax, then zero all but each query's K largest probabilities; returns (output, probabilities).

    ``dropout`` (training only) drops attention probabilities before the value product, as transformers' eager kernel
    does."""
    probs = torch.softmax(scores(query, key, mask, scaling), dim=-1)
    if k < probs.shape[-1]:
        top, idx = probs.topk(k, dim=-1)
        if renormalize:
            top = top / top.sum(-1, keepdim=True)
        probs = torch.zeros_like(probs).scatter(-1, idx, top)
    return torch.matmul(_dropped(probs, dropout).to(value.dtype), value), probs


def topk_gather(query, key, value, mask, scaling: float, k: int, renormalize: bool = False) -> torch.Tensor:
    """Top-K hard attention with the value product (and, renormalised, the softmax) over the K kept keys only."""
    s = scores(query, key, mask, scaling)
    k = min(k, s.shape[-1])
    top, idx = s.topk(k, dim=-1)
    # renormalised over the kept keys, or the full softmax's values at the kept keys
    probs = torch.softmax(top, dim=-1) if renormalize else torch.exp(top - torch.logsumexp(s, dim=-1, keepdim=True))
    return _weighted_sum(probs, _gather_rows(value, idx))


def sign_agreement(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """sign(q) . sign(k) for every query-key pair (padding keys pushed to the bottom).

    Agreements are integers, so ties are common; a fraction below one that
    grows with the key's position breaks them towards earlier keys, the same
    way in PyTorch and in ONNX Runtime (whose TopK need not order ties alike).
    """
    agree = torch.matmul(torch.sign(query), torch.sign(key).transpose(-1, -2)).float()
    n = key.shape[-2]
    agree = agree - torch.arange(n, device=agree.device, dtype=agree.dtype) / (2 * n)
    m = _additive(mask, agree)
    return agree if m is None else agree + m


def sign_match_reference(query, key, value, mask, scaling: float, k: int, dropout: float = 0.0):
    """Exact softmax over the K best sign-matching keys, computed densely (others masked); returns (output,
    probabilities).
    """
    s = scores(query, key, mask, scaling)
    if k < s.shape[-1]:
        idx = sign_agreement(query, key, mask).topk(k, dim=-1).indices
        keep = torch.zeros_like(s, dtype=torch.bool).scatter(-1, idx, True)
        s = s.masked_fill(~keep, torch.finfo(s.dtype).min)
    probs = torch.softmax(s, dim=-1)
    return torch.matmul(_dropped(probs, dropout).to(value.dtype), value), probs


def sign_match_gather(query, key, value, mask, scaling: float, k: int) -> torch.Tensor:
    """Sign-matching attention: select K keys by sign agreement, exact scores and softmax over those K only."""
    agree = sign_agreement(query, key, mask)
    k = min(k, agree.shape[-1])
    idx = agree.topk(k, dim=-1).indices
    s = torch.matmul(query.unsqueeze(-2), _gather_rows(key, idx).transpose(-1, -2)).squeeze(-2).float() * scaling
    m = _additive(mask, s)
    if m is not None:
        s = s + torch.gather(m.expand(*agree.shape), -1, idx)
    return _weighted_sum(torch.softmax(s, dim=-1), _gather_rows(value, idx))
