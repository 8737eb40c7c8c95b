"""BERT and the families that share its layer code: RoBERTa, XLM-R, ELECTRA, CamemBERT, MiniLM (BERT)."""

from __future__ import annotations

import torch
from torch import nn

from axformer.surgery.adapters.base import Adapter, AttentionParts, FFNParts, ResidualLayerNorm


class RemovedSelfAttentionBlock(nn.Module):
    """Stands in for ``BertAttention`` once the block is removed: returns ``(LN1(x), None)``."""

    def __init__(self, layer_norm: nn.LayerNorm) -> None:
        super().__init__()
        self.LayerNorm = layer_norm

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return self.LayerNorm(hidden_states), None


class BertLikeAdapter(Adapter):
    model_types = ("bert", "roberta", "xlm-roberta", "electra", "camembert")
    family = "bert"

    def encoder(self, model):
        return getattr(model, model.base_model_prefix).encoder

    def attention(self, layer):
        att = layer.attention
        if isinstance(att, RemovedSelfAttentionBlock):
            return None
        return AttentionParts(att.self.query, att.self.key, att.self.value, att.output.dense)

    def ffn(self, layer):
        if isinstance(layer.output, ResidualLayerNorm):
            return None
        return FFNParts(layer.intermediate.dense, layer.output.dense)

    def attention_kernel(self, layer):
        return None if self.attention(layer) is None else self.self_attention(layer)

    def between_blocks(self, layer):
        return layer.intermediate

    def self_attention(self, layer):
        """The module that holds the head-count bookkeeping."""
        return layer.attention.self

    def set_head_count(self, layer, count):
        sa = self.self_attention(layer)
        sa.num_attention_heads = count
        sa.all_head_size = count * sa.attention_head_size

    def remove_attention(self, layer):
        layer.attention = RemovedSelfAttentionBlock(layer.attention.output.LayerNorm)

    def remove_ffn(self, layer):
        layer.intermediate = nn.Identity()
        layer.output = ResidualLayerNorm(layer.output.LayerNorm)
