"""What surgery needs to know about a model family, in one small class per family.

An adapter locates the encoder layers and, in each layer, the attention
projections (Q, K, V, O) and the FFN projections (up, down), says how to keep a
layer's attributes consistent when heads are sliced away, and how to replace a
removed block so that only its residual path and LayerNorm remain. Nothing else
in axformer looks inside a model's modules, so adding a family is one file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


@dataclass
class AttentionParts:
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear


@dataclass
class FFNParts:
    up: nn.Linear  # hidden -> width (rows are neurons)
    down: nn.Linear  # width -> hidden (columns are neurons)


class ResidualLayerNorm(nn.Module):
    """Stands in for a removed sub-layer's output module: ``LN(residual)``.

    Used where the stock code calls ``output(hidden_states, input_tensor)`` and
    computes ``LN(dense(hidden_states) + input_tensor)``.
    """

    def __init__(self, layer_norm: nn.LayerNorm) -> None:
        super().__init__()
        self.LayerNorm = layer_norm

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(input_tensor)


class Adapter:
    """Base adapter; subclasses fill in the module paths of one model family."""

    model_types: ClassVar[tuple[str, ...]] = ()
    family: ClassVar[str] = ""

    # -------------------------------------------------------------- dimensions

    def num_heads(self, config: PretrainedConfig) -> int:
        return config.num_attention_heads

    def hidden_size(self, config: PretrainedConfig) -> int:
        return config.hidden_size

    def ffn_dim(self, config: PretrainedConfig) -> int:
        return config.intermediate_size

    def set_config_dims(self, config: PretrainedConfig, num_layers: int, ffn_dim: int | None) -> None:
        """Record stock-expressible dimensions in the config (layer count; FFN width when uniform)."""
        config.num_hidden_layers = num_layers
        if ffn_dim is not None:
            config.intermediate_size = ffn_dim

    # -------------------------------------------------------------- locating

    def encoder(self, model: PreTrainedModel) -> nn.Module:
        """The module holding the ``layer`` ModuleList."""
        raise NotImplementedError

    def layers(self, model: PreTrainedModel) -> nn.ModuleList:
        return self.encoder(model).layer

    def set_layers(self, model: PreTrainedModel, layers: list[nn.Module]) -> None:
        self.encoder(model).layer = nn.ModuleList(layers)

    def attention(self, layer: nn.Module) -> AttentionParts | None:
        """The projections of a layer's attention, or None if the block was removed."""
        raise NotImplementedError

    def ffn(self, layer: nn.Module) -> FFNParts | None:
        raise NotImplementedError

    # -------------------------------------------------------------- changing

    def set_head_count(self, layer: nn.Module, count: int) -> None:
        """Update the attention module's bookkeeping after its projections were sliced."""
        raise NotImplementedError

    def remove_attention(self, layer: nn.Module) -> None:
        """Replace the attention block by its residual path and LayerNorm (``a = LN1(x)``)."""
        raise NotImplementedError

    def remove_ffn(self, layer: nn.Module) -> None:
        """Replace the FFN block by its residual path and LayerNorm (``y = LN2(a)``)."""
        raise NotImplementedError

    def extra_head_projections(self, layer: nn.Module) -> list[nn.Linear]:
        """Further projections whose output rows are laid out per head (sliced like Q, K, V)."""
        return []

    def validate(self, model: PreTrainedModel, target) -> None:
        """Refuse structures this family cannot realise (called before any change)."""

    def on_heads_kept(self, layer: nn.Module, original_heads: list[int]) -> None:
        """Hook for families whose attention takes per-head inputs from outside the layer (MPNet)."""

    def layer_output(self, output):
        """The hidden states in a layer's return value (a tensor, or the first element of a tuple)."""
        return output[0] if isinstance(output, tuple) else output

    def replace_layer_output(self, output, hidden: torch.Tensor):
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
