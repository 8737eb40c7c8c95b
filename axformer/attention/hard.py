"""Top-K hard attention, per layer, through transformers' attention interface.

AxFormer's selective hard attention: after the softmax, each query keeps only
its K largest attention probabilities, the rest become zero, and (in the
paper-exact variant) the kept ones are *not* renormalised. K >= the number of
keys is exactly dense attention.

A layer is switched by giving its attention module a private copy of the
config whose ``_attn_implementation`` names the function registered here, and
an ``axformer_attention`` attribute with its settings; every other layer keeps
the stock kernels. The settings of all layers are recorded in the model config
under ``axformer_attention`` and re-installed by ``axformer.load_model``.
This is the reference implementation (it computes the full score matrix);
families whose attention does not go through the interface (MPNet,
DeBERTa-v2) do not support it yet and are refused clearly.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn
from transformers import AttentionInterface, PreTrainedModel

from axformer.attention import kernels
from axformer.errors import AxformerError
from axformer.surgery.adapters import Adapter, get_adapter
from axformer.surgery.components import layer_name, part_name
from axformer.surgery.prune import current_structure
from axformer.surgery.recorded import ATTENTION_KEY, STRUCTURE_KEY, attention_settings

IMPLEMENTATION = "axformer_approximate"


def _approximate_attention(
    module: nn.Module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kwargs
):
    spec = module.axformer_attention
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    k, mode, kernel = int(spec["k"]), spec.get("mode", "topk"), spec.get("kernel", "reference")
    p = dropout if module.training else 0.0
    if p > 0:
        kernel = "reference"  # attention dropout needs the probability matrix
    probs = None
    if mode == "topk" and kernel == "reference":
        out, probs = kernels.topk_reference(
            query, key, value, attention_mask, scaling, k, bool(spec.get("renormalize")), p
        )
    elif mode == "topk":
        out = kernels.topk_gather(query, key, value, attention_mask, scaling, k, bool(spec.get("renormalize")))
    elif kernel == "reference":
        out, probs = kernels.sign_match_reference(query, key, value, attention_mask, scaling, k, p)
    else:
        out = kernels.sign_match_gather(query, key, value, attention_mask, scaling, k)
    return out.transpose(1, 2).contiguous(), probs


AttentionInterface.register(IMPLEMENTATION, _approximate_attention)


MODES = ("topk", "sign")
KERNELS = ("reference", "gather")


@dataclass(frozen=True)
class HardAttention:
    """An engine ``Change`` (and a saved setting): approximate attention in one layer.

    ``mode`` "topk" is AxFormer's hard attention (the K largest probabilities,
    renormalised or not), "sign" is sign-matching attention (K keys chosen by
    sign agreement, exact softmax over them). ``kernel`` "reference" computes
    the dense matrices and masks them; "gather" computes only the K kept keys.
    """

    layer: int
    k: int = 30
    renormalize: bool = False
    mode: str = "topk"
    kernel: str = "reference"

    def __post_init__(self):
        if self.mode not in MODES or self.kernel not in KERNELS:
            raise AxformerError(
                f"approximate attention {self.mode}/{self.kernel}; expected a mode in {MODES} and a kernel in {KERNELS}"
            )
        if self.k < 1:
            raise AxformerError(f"approximate attention with k={self.k}; expected a positive number of keys")

    @property
    def key(self) -> str:
        return part_name(self.layer, "attn", f"{'top' if self.mode == 'topk' else 'sign'}{self.k}") + (
            "r" if self.renormalize and self.mode == "topk" else ""
        )

    def spec(self) -> dict:
        spec = {"mode": self.mode, "k": self.k, "renormalize": self.renormalize}
        return spec | ({"kernel": self.kernel} if self.kernel != "reference" else {})

    @contextmanager
    def applied(self, model: PreTrainedModel, adapter: Adapter) -> Iterator[None]:
        module = _module(model, adapter, self.layer)
        previous = _current(module)
        _set(module, self.spec())
        try:
            yield
        finally:
            _set(module, previous)


def _module(model: PreTrainedModel, adapter: Adapter, layer: int) -> nn.Module:
    present = current_structure(model, adapter).present_layers
    if layer not in present:
        raise AxformerError(
            f"layer {layer_name(layer)} is not in the model (removed); cannot approximate its attention"
        )
    module = adapter.attention_kernel(adapter.layers(model)[present.index(layer)])
    if module is None:
        raise AxformerError(
            f"approximate attention is not supported for {adapter.family} models (their attention "
            "does not use transformers' attention interface)"
        )
    return module


def _current(module: nn.Module) -> dict | None:
    return getattr(module, "axformer_attention", None)


def _set(module: nn.Module, spec: dict | None) -> None:
    if spec is None:
        if hasattr(module, "axformer_stock_config"):
            module.config = module.axformer_stock_config
            del module.axformer_stock_config
        if hasattr(module, "axformer_attention"):
            del module.axformer_attention
        return
    if not hasattr(module, "axformer_stock_config"):
        module.axformer_stock_config = module.config
        cfg = copy.copy(module.config)
        cfg._attn_implementation = IMPLEMENTATION
        module.config = cfg
    module.axformer_attention = dict(spec)


def supports_approximate_attention(model: PreTrainedModel) -> bool:
    a = get_adapter(model)
    layers = a.layers(model)
    return len(layers) > 0 and a.attention_kernel(layers[0]) is not None


def set_attention(model: PreTrainedModel, settings: dict[int, dict]) -> None:
    """Install per-layer approximate attention (``{original layer: spec}``) and record it in the config."""
    a = get_adapter(model)
    for layer, spec in settings.items():
        _set(_module(model, a, int(layer)), spec)
    if settings:
        setattr(model.config, ATTENTION_KEY, {str(k): v for k, v in sorted(settings.items())})
        if getattr(model.config, STRUCTURE_KEY, None) is None:  # saved through the axformer path, so it reloads with it
            setattr(model.config, STRUCTURE_KEY, current_structure(model, a).to_dict())


def install_from_config(model: PreTrainedModel) -> None:
    """Re-install what the config records (after loading a saved model)."""
    settings = attention_settings(model.config)
    if settings:
        a = get_adapter(model)
        for layer, spec in settings.items():
            _set(_module(model, a, layer), spec)
