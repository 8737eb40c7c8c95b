"""DistilBERT: its block computes ``LN(attention(x) + x)`` itself, so removed sub-layers just output zeros."""

from __future__ import annotations

from axformer.surgery.adapters.base import Adapter, AttentionParts, FFNParts, ZeroAttention, ZeroFFN


class DistilBertAdapter(Adapter):
    model_types = ("distilbert",)
    family = "distilbert"

    def num_heads(self, config):
        return config.n_heads

    def hidden_size(self, config):
        return config.dim

    def ffn_dim(self, config):
        return config.hidden_dim

    def set_config_dims(self, config, kept_layers, ffn_dim):
        config.n_layers = len(kept_layers)
        if ffn_dim is not None:
            config.hidden_dim = ffn_dim

    def encoder(self, model):
        return model.distilbert.transformer

    def attention(self, layer):
        a = layer.attention
        if isinstance(a, ZeroAttention):
            return None
        return AttentionParts(a.q_lin, a.k_lin, a.v_lin, a.out_lin)

    def ffn(self, layer):
        if isinstance(layer.ffn, ZeroFFN):
            return None
        return FFNParts(layer.ffn.lin1, layer.ffn.lin2)

    def attention_kernel(self, layer):
        return None if self.attention(layer) is None else layer.attention

    def between_blocks(self, layer):
        return layer.ffn

    def set_head_count(self, layer, count):
        layer.attention.n_heads = count

    def remove_attention(self, layer):
        layer.attention = ZeroAttention()

    def remove_ffn(self, layer):
        layer.ffn = ZeroFFN()
