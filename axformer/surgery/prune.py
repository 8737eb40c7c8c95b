"""Physical removal: turn a structure into a smaller model, different in every layer if need be.

Removed heads take their rows of Q, K and V and their columns of the output
projection with them; removed neurons their row of the FFN's first projection
and column of its second; removed blocks are replaced by their residual path
and LayerNorm; removed layers leave the layer list. The parameters are sliced
in place, so any adapter's modules keep working.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from transformers import PreTrainedModel

from axformer.errors import AxformerError
from axformer.surgery.adapters import Adapter, get_adapter
from axformer.surgery.components import Component
from axformer.surgery.recorded import STRUCTURE_KEY
from axformer.surgery.structure import ModelStructure


def current_structure(model: PreTrainedModel, adapter: Adapter | None = None) -> ModelStructure:
    """The model's structure: as recorded by an earlier prune, else the full stock structure."""
    saved = getattr(model.config, STRUCTURE_KEY, None)
    if saved:
        return ModelStructure.from_dict(saved)
    a = adapter or get_adapter(model)
    cfg = model.config
    heads, hidden = a.num_heads(cfg), a.hidden_size(cfg)
    head_dim = a.attention(a.layers(model)[0]).o.in_features // heads if len(a.layers(model)) else hidden // heads
    return ModelStructure.full(len(a.layers(model)), heads, head_dim, a.ffn_dim(cfg), hidden, a.ffn_matrices)


def _positions(current: list[int], target: list[int]) -> torch.Tensor:
    where = {v: i for i, v in enumerate(current)}
    return torch.tensor([where[v] for v in target], dtype=torch.long)


def apply_structure(
    model: PreTrainedModel,
    target: ModelStructure,
    adapter: Adapter | None = None,
    current: ModelStructure | None = None,
) -> PreTrainedModel:
    """Physically reduce ``model`` (in place) to ``target``, which must be a sub-structure of its current one."""
    a = adapter or get_adapter(model)
    current = current or current_structure(model, a)
    if target.num_layers != current.num_layers or not target.is_subset_of(current):
        raise AxformerError(
            "the requested structure keeps parts the model no longer has; prune from the model it was derived from"
        )
    a.validate(model, target)
    modules = list(a.layers(model))
    present = current.present_layers
    if len(modules) != len(present):
        raise AxformerError(f"model has {len(modules)} layers but its recorded structure has {len(present)}")
    kept = []
    for position, (module, orig) in enumerate(zip(modules, present)):
        cur, tgt = current.layers[orig], target.layers[orig]
        if tgt is None:
            continue
        if tgt.heads != cur.heads:
            if not tgt.heads:
                a.remove_attention(module)
            else:
                d = current.head_dim
                rows = torch.cat([torch.arange(p * d, (p + 1) * d) for p in _positions(cur.heads, tgt.heads).tolist()])
                a.slice_heads(module, rows)
                a.set_head_count(module, len(tgt.heads))
                a.on_heads_kept(module, tgt.heads)
        if tgt.neurons != cur.neurons:
            if not tgt.neurons:
                a.remove_ffn(module)
            else:
                a.slice_neurons(module, _positions(cur.neurons, tgt.neurons))
        kept.append(position)
    if len(kept) != len(modules):
        a.set_layers(model, [modules[p] for p in kept])
    setattr(model.config, STRUCTURE_KEY, target.to_dict())
    widths = {len(l.neurons) for l in target.layers if l is not None}
    a.set_config_dims(model.config, kept, widths.pop() if len(widths) == 1 and 0 not in widths else None)
    return model


def prune(
    model: PreTrainedModel, components: Iterable[str | Component], adapter: Adapter | None = None
) -> ModelStructure:
    """Remove ``components`` (names such as ``L3.attn.head5``) physically; returns the new structure."""
    a = adapter or get_adapter(model)
    target = current_structure(model, a).removed(components)
    apply_structure(model, target, a)
    return target


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
