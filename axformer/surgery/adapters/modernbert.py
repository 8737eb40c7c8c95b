"""ModernBERT: pre-LN layers, fused QKV projection, gated (GLU) FFN, global and sliding-window layers.

A pre-LN layer computes ``h = x + attn(LN1(x)); y = h + mlp(LN2(h))``, so a
removed block contributes zero and its LayerNorm goes with it (AxFormer's
"keep the residual path"), and a removed layer is exactly the identity.
Heads own three row slices of ``Wqkv`` (one in each of the Q, K and V
sections); FFN neuron ``n`` owns rows ``n`` and ``width + n`` of ``Wi`` (input
and gate) and column ``n`` of ``Wo``.

Two details tie a layer to its position: each layer's attention type (global
or sliding window) comes from ``config.layer_types``, which is sliced along
with the layers; and the first layer has no attention LayerNorm. When layer 0
is dropped, the new first layer keeps its LayerNorm, which a stock config
cannot express, so such a model is saved as ``axformer-pruned``.
"""

from __future__ import annotations

import torch
from torch import nn

from axformer.surgery.adapters.base import Adapter, AttentionParts, FFNParts, ZeroAttention, ZeroFFN, slice_linear


class ModernBertAdapter(Adapter):
    model_types = ("modernbert",)
    family = "modernbert"
    ffn_matrices = 3

    def set_config_dims(self, config, kept_layers, ffn_dim):
        types = getattr(config, "layer_types", None)
        if types is not None and len(types) >= len(kept_layers):
            config.layer_types = [types[i] for i in kept_layers]
        super().set_config_dims(config, kept_layers, ffn_dim)

    def encoder(self, model):
        return model.model

    def layers(self, model):
        return model.model.layers

    def set_layers(self, model, layers):
        model.model.layers = nn.ModuleList(layers)

    def attention(self, layer):
        if isinstance(layer.attn, ZeroAttention):
            return None
        return AttentionParts(layer.attn.Wqkv, layer.attn.Wqkv, layer.attn.Wqkv, layer.attn.Wo)

    def ffn(self, layer):
        if isinstance(layer.mlp, ZeroFFN):
            return None
        return FFNParts(layer.mlp.Wi, layer.mlp.Wo)

    def attention_kernel(self, layer):
        return None if self.attention(layer) is None else layer.attn

    def between_blocks(self, layer):
        return layer.mlp_norm

    def slice_heads(self, layer, rows):
        section = layer.attn.Wo.in_features  # current heads x head_dim
        slice_linear(layer.attn.Wqkv, torch.cat([rows, rows + section, rows + 2 * section]), 0)
        slice_linear(layer.attn.Wo, rows, 1)

    def slice_neurons(self, layer, keep):
        width = layer.mlp.Wo.in_features
        slice_linear(layer.mlp.Wi, torch.cat([keep, keep + width]), 0)
        slice_linear(layer.mlp.Wo, keep, 1)

    def set_head_count(self, layer, count):
        pass  # the attention reshapes by head_dim, which does not change

    def remove_attention(self, layer):
        layer.attn = ZeroAttention()
        layer.attn_norm = nn.Identity()

    def remove_ffn(self, layer):
        layer.mlp = ZeroFFN()
        layer.mlp_norm = nn.Identity()

    def is_stock(self, structure):
        return structure.is_stock() and structure.layers[0] is not None

    def prepare_rebuilt(self, model, structure):
        present = structure.present_layers
        if present and present[0] != 0 and structure.layers[present[0]].heads:
            cfg = model.config
            self.layers(model)[0].attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.norm_bias)
