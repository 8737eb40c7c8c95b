"""Addressable components of an encoder and their stable names.

Names always use the *original* model's numbering, so a name in a search log,
a significance report or a saved structure means the same weights before and
after other parts were pruned:

    L3                 whole layer 3 (the layer becomes the identity)
    L3.attn            attention block of layer 3 (a = LN1(x))
    L3.ffn             FFN block of layer 3 (y = LN2(a))
    L3.attn.head5      attention head 5 of layer 3
    L3.ffn.group7of12  FFN neuron group 7 of 12 (neurons [7F/12, 8F/12))
    L3.ffn.neuron123   single FFN neuron 123
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from axformer.errors import AxformerError

KINDS = ("layer", "attn", "ffn", "head", "group", "neuron")

_PATTERN = re.compile(r"^L(\d+)(?:\.(attn|ffn)(?:\.(head|group|neuron)(\d+)(?:of(\d+))?)?)?$")


@dataclass(frozen=True, order=True)
class Component:
    layer: int
    kind: str  # one of KINDS
    index: int = -1  # head, group or neuron index; -1 for layer/block
    groups: int = 0  # group count, for kind == "group"

    @property
    def name(self) -> str:
        if self.kind == "layer":
            return f"L{self.layer}"
        if self.kind in ("attn", "ffn"):
            return f"L{self.layer}.{self.kind}"
        if self.kind == "head":
            return f"L{self.layer}.attn.head{self.index}"
        if self.kind == "group":
            return f"L{self.layer}.ffn.group{self.index}of{self.groups}"
        return f"L{self.layer}.ffn.neuron{self.index}"

    def __str__(self) -> str:
        return self.name


def parse(name: str | Component) -> Component:
    if isinstance(name, Component):
        return name
    m = _PATTERN.match(name.strip())
    if not m:
        raise AxformerError(
            f"cannot parse component name {name!r}; expected e.g. L3, L3.attn, L3.ffn, L3.attn.head5, "
            "L3.ffn.group7of12, L3.ffn.neuron123"
        )
    layer, block, sub, idx, groups = m.groups()
    layer = int(layer)
    if block is None:
        return Component(layer, "layer")
    if sub is None:
        return Component(layer, block)
    if (block, sub) not in (("attn", "head"), ("ffn", "group"), ("ffn", "neuron")):
        raise AxformerError(f"component {name!r}: {sub} is not part of the {block} block")
    if sub == "group":
        if groups is None:
            raise AxformerError(f"component {name!r}: a neuron group needs its group count, e.g. group7of12")
        return Component(layer, "group", int(idx), int(groups))
    if groups is not None:
        raise AxformerError(f"component {name!r}: only neuron groups take 'ofN'")
    return Component(layer, sub, int(idx))


def layer_name(layer: int) -> str:
    return Component(layer, "layer").name


def block_name(layer: int, block: str) -> str:
    """``block``: "attn" or "ffn"."""
    return Component(layer, block).name


def head_name(layer: int, index: int) -> str:
    return Component(layer, "head", index).name


def group_name(layer: int, index: int, groups: int) -> str:
    return Component(layer, "group", index, groups).name


def neuron_name(layer: int, index: int) -> str:
    return Component(layer, "neuron", index).name


def part_name(layer: int, block: str, part: str) -> str:
    """A named part of a block that is not a removable component: a weight matrix (``L3.attn.q``, ``L3.attn.qkv``
    when fused, ``L3.ffn.up``) or a setting (``L3.attn.top30``: approximate attention)."""
    return f"{block_name(layer, block)}.{part}"


def head(layer: int, index: int) -> Component:
    return Component(layer, "head", index)


def group(layer: int, index: int, groups: int) -> Component:
    return Component(layer, "group", index, groups)


def neuron_group_range(index: int, groups: int, ffn_dim: int) -> range:
    """Original neuron indices of group ``index`` of ``groups`` (AxFormer: F/groups neurons each)."""
    if ffn_dim % groups:
        # Uneven split: spread the remainder over the first groups.
        bounds = [round(i * ffn_dim / groups) for i in range(groups + 1)]
        return range(bounds[index], bounds[index + 1])
    size = ffn_dim // groups
    return range(index * size, (index + 1) * size)
