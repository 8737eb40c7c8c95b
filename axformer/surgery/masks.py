"""Soft masks: switch components off and on without touching the weights.

Gates (tensors of ones and zeros) multiply each head's slice of the attention
output projection's input, each FFN neuron's activation, each block's output,
and blend each layer's output with its input. Changing a candidate in a search
is a matter of filling a few small tensors, so hundreds of candidates cost no
copying. With ``requires_grad`` the gates also give gradient importance
(|dLoss/dgate|, Michel et al.; FastFormers). A masked model computes exactly
what the physically pruned model computes (tested to 1e-5).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import PreTrainedModel

from axformer.surgery.adapters import Adapter, get_adapter
from axformer.surgery.components import Component
from axformer.surgery.prune import current_structure
from axformer.surgery.structure import ModelStructure


class SoftMask:
    """Gates installed as hooks on a model; use as a context manager or call :meth:`remove`."""

    def __init__(self, model: PreTrainedModel, adapter: Adapter | None = None, requires_grad: bool = False) -> None:
        self.model = model
        self.adapter = a = adapter or get_adapter(model)
        self.structure: ModelStructure = current_structure(model, a)
        self.requires_grad = requires_grad
        self.removed: tuple[Component | str, ...] = ()
        p = next(model.parameters())
        opts = {"device": p.device, "dtype": p.dtype}
        self.layer_gates: dict[int, torch.Tensor] = {}
        self.head_gates: dict[int, torch.Tensor] = {}
        self.attn_gates: dict[int, torch.Tensor] = {}
        self.neuron_gates: dict[int, torch.Tensor] = {}
        self.ffn_gates: dict[int, torch.Tensor] = {}
        self._handles = []
        self._active: set[int] = set()  # layers with a gate below one (hooks skip the rest)
        for module, orig in zip(a.layers(model), self.structure.present_layers):
            ls = self.structure.layers[orig]
            self.layer_gates[orig] = torch.ones((), **opts)
            self._handles.append(module.register_forward_hook(self._layer_hook(orig), with_kwargs=True))
            att = a.attention(module)
            if att is not None:
                self.head_gates[orig] = torch.ones(len(ls.heads), **opts)
                self.attn_gates[orig] = torch.ones((), **opts)
                self._handles.append(
                    att.o.register_forward_pre_hook(self._input_gate(orig, self.head_gates, self.structure.head_dim))
                )
                self._handles.append(att.o.register_forward_hook(self._output_gate(orig, self.attn_gates)))
            ffn = a.ffn(module)
            if ffn is not None:
                self.neuron_gates[orig] = torch.ones(len(ls.neurons), **opts)
                self.ffn_gates[orig] = torch.ones((), **opts)
                self._handles.append(ffn.down.register_forward_pre_hook(self._input_gate(orig, self.neuron_gates, 1)))
                self._handles.append(ffn.down.register_forward_hook(self._output_gate(orig, self.ffn_gates)))
        if requires_grad:
            for g in self.gates():
                g.requires_grad_(True)
            self._active = set(self.layer_gates)

    # ---------------------------------------------------------------- hooks

    def _layer_hook(self, orig: int):
        def hook(module, args, kwargs, output):
            if orig not in self._active:
                return None
            x = args[0] if args else kwargs["hidden_states"]
            g = self.layer_gates[orig]
            y = self.adapter.layer_output(output)
            return self.adapter.replace_layer_output(output, g * y + (1 - g) * x)

        return hook

    def _input_gate(self, orig: int, gates: dict[int, torch.Tensor], width: int):
        def pre(module, args):
            if orig not in self._active:
                return None
            g = gates[orig]
            if width > 1:
                g = g.repeat_interleave(width)
            return (args[0] * g,)

        return pre

    def _output_gate(self, orig: int, gates: dict[int, torch.Tensor]):
        def hook(module, args, output):
            if orig not in self._active:
                return None
            return output * gates[orig]

        return hook

    # ---------------------------------------------------------------- control

    def gates(self) -> list[torch.Tensor]:
        return [
            *self.layer_gates.values(),
            *self.head_gates.values(),
            *self.attn_gates.values(),
            *self.neuron_gates.values(),
            *self.ffn_gates.values(),
        ]

    @torch.no_grad()
    def reset(self) -> None:
        for g in self.gates():
            g.fill_(1.0)
        self.removed = ()
        if not self.requires_grad:
            self._active = set()

    @torch.no_grad()
    def set(self, removed: Iterable[str | Component]) -> ModelStructure:
        """Switch exactly ``removed`` off (everything else on); returns the structure it emulates."""
        removed = tuple(removed)
        self.reset()
        self.removed = removed
        target = self.structure.removed(removed)
        for orig, cur in enumerate(self.structure.layers):
            if cur is None:
                continue
            tgt = target.layers[orig]
            changed = False
            if tgt is None:
                self.layer_gates[orig].zero_()
                changed = True
            else:
                changed |= self._close(orig, cur.heads, tgt.heads, self.head_gates, self.attn_gates)
                changed |= self._close(orig, cur.neurons, tgt.neurons, self.neuron_gates, self.ffn_gates)
            if changed:
                self._active.add(orig)
        return target

    @staticmethod
    def _close(orig: int, current: list[int], kept: list[int], unit_gates: dict, block_gates: dict) -> bool:
        """Zero the gates of the units of ``current`` not in ``kept`` (and the block's if none is kept)."""
        if orig not in unit_gates or kept == current:
            return False
        keep = torch.isin(torch.tensor(current), torch.tensor(kept, dtype=torch.long))
        unit_gates[orig].copy_(keep.to(unit_gates[orig]))
        if not kept:
            block_gates[orig].zero_()
        return True

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> SoftMask:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
