"""MPNet: BERT-like, but its relative-position bias is computed once for all heads by the encoder.

A layer that keeps only some heads must take only their slices of that bias;
a forward pre-hook on the self-attention selects them by original head index.
"""

from __future__ import annotations

import torch
from torch import nn

from axformer.surgery.adapters.base import AttentionParts
from axformer.surgery.adapters.bert import BertLikeAdapter


class RemovedMPNetAttention(nn.Module):
    def __init__(self, layer_norm: nn.LayerNorm) -> None:
        super().__init__()
        self.LayerNorm = layer_norm

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return (self.LayerNorm(hidden_states),)


def _select_position_bias(module: nn.Module, args: tuple, kwargs: dict):
    heads = module.axformer_heads
    if len(args) >= 3 and args[2] is not None:
        args = (*args[:2], args[2].index_select(1, heads), *args[3:])
    elif kwargs.get("position_bias") is not None:
        kwargs = {**kwargs, "position_bias": kwargs["position_bias"].index_select(1, heads)}
    return args, kwargs


class MPNetAdapter(BertLikeAdapter):
    """Same FFN and bookkeeping as BERT; the attention lives in ``attention.attn`` with its own LayerNorm."""

    model_types = ("mpnet",)
    family = "mpnet"

    def encoder(self, model):
        return model.mpnet.encoder

    def attention(self, layer):
        if isinstance(layer.attention, RemovedMPNetAttention):
            return None
        a = layer.attention.attn
        return AttentionParts(a.q, a.k, a.v, a.o)

    def self_attention(self, layer):
        return layer.attention.attn

    def attention_kernel(self, layer):
        return None  # MPNet computes attention (with its position bias) itself

    def on_heads_kept(self, layer, original_heads):
        attn = layer.attention.attn
        if not hasattr(attn, "axformer_heads"):
            attn.register_forward_pre_hook(_select_position_bias, with_kwargs=True)
        attn.register_buffer("axformer_heads", torch.tensor(original_heads, dtype=torch.long), persistent=False)

    def remove_attention(self, layer):
        layer.attention = RemovedMPNetAttention(layer.attention.LayerNorm)
