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

from axformer.surgery.components import part_name


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


@torch.no_grad()
def slice_linear(linear: nn.Linear, keep: torch.Tensor, dim: int) -> None:
    """Keep ``keep`` rows (dim 0, output features) or columns (dim 1, input features) of ``linear``, in place."""
    keep = keep.to(linear.weight.device)
    w = linear.weight.index_select(dim, keep).clone()
    linear.weight = nn.Parameter(w, requires_grad=linear.weight.requires_grad)
    if dim == 0:
        if linear.bias is not None:
            linear.bias = nn.Parameter(
                linear.bias.index_select(0, keep).clone(), requires_grad=linear.bias.requires_grad
            )
        linear.out_features = w.shape[0]
    else:
        linear.in_features = w.shape[1]


class ZeroAttention(nn.Module):
    """A removed attention block in families whose layer adds the block's output itself: contributes zeros."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


class ZeroFFN(nn.Module):
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


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
    ffn_matrices: ClassVar[int] = 2  # weight matrices per FFN neuron (3 for gated linear units)

    # -------------------------------------------------------------- dimensions

    def num_heads(self, config: PretrainedConfig) -> int:
        return config.num_attention_heads

    def hidden_size(self, config: PretrainedConfig) -> int:
        return config.hidden_size

    def ffn_dim(self, config: PretrainedConfig) -> int:
        return config.intermediate_size

    def set_config_dims(self, config: PretrainedConfig, kept_layers: list[int], ffn_dim: int | None) -> None:
        """Record stock-expressible dimensions in the config: the layers kept (positions in the
        current layer list) and the FFN width when it is the same everywhere."""
        config.num_hidden_layers = len(kept_layers)
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

    def named_linears(self, model: PreTrainedModel, present_layers: list[int]) -> list[tuple[int, str, nn.Linear]]:
        """(original layer, matrix name, module) of every weight matrix of the encoder's layers, in order.

        A fused QKV projection (ModernBERT) is one matrix, ``L3.attn.qkv``: quantization sensitivity, mixed
        precision and ONNX node naming all see the same list.
        """
        out: list[tuple[int, str, nn.Linear]] = []
        for module, orig in zip(self.layers(model), present_layers):
            att, ffn = self.attention(module), self.ffn(module)
            if att is not None:
                if att.q is att.k:
                    out.append((orig, part_name(orig, "attn", "qkv"), att.q))
                else:
                    out += [(orig, part_name(orig, "attn", k), getattr(att, k)) for k in ("q", "k", "v")]
                out.append((orig, part_name(orig, "attn", "o"), att.o))
            if ffn is not None:
                out += [(orig, part_name(orig, "ffn", k), getattr(ffn, k)) for k in ("up", "down")]
        return out

    def attention_kernel(self, layer: nn.Module) -> nn.Module | None:
        """The module that calls transformers' attention interface (where approximate attention plugs in),
        or None when the family computes attention itself."""
        return None

    def between_blocks(self, layer: nn.Module) -> nn.Module:
        """A module whose first input is the residual stream between the attention and FFN blocks
        (it is called even when the FFN block was removed); used to score blocks by similarity."""
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

    def slice_heads(self, layer: nn.Module, rows: torch.Tensor) -> None:
        """Keep ``rows`` (the kept heads' rows of one per-head projection) in every projection of the attention."""
        parts = self.attention(layer)
        for lin in (parts.q, parts.k, parts.v, *self.extra_head_projections(layer)):
            slice_linear(lin, rows, 0)
        slice_linear(parts.o, rows, 1)

    def slice_neurons(self, layer: nn.Module, keep: torch.Tensor) -> None:
        parts = self.ffn(layer)
        slice_linear(parts.up, keep, 0)
        slice_linear(parts.down, keep, 1)

    def is_stock(self, structure) -> bool:
        """Whether a stock config of this family can express ``structure`` (so plain transformers loads it)."""
        return structure.is_stock()

    def prepare_rebuilt(self, model: PreTrainedModel, structure) -> None:
        """Adjust a freshly built stock model with one module per present layer before weights are loaded."""

    def validate(self, model: PreTrainedModel, target) -> None:
        """Refuse structures this family cannot realise (called before any change)."""

    def on_heads_kept(self, layer: nn.Module, original_heads: list[int]) -> None:
        """Hook for families whose attention takes per-head inputs from outside the layer (MPNet)."""

    def layer_output(self, output):
        """The hidden states in a layer's return value (a tensor, or the first element of a tuple)."""
        return output[0] if isinstance(output, tuple) else output

    def replace_layer_output(self, output, hidden: torch.Tensor):
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
