"""The per-layer structure of a (possibly pruned) encoder.

A structure lists, for every layer of the *original* model, whether the layer is
still there and which original heads and FFN neurons it keeps. An attention
block with no heads left is removed (its output bias goes too: ``a = LN1(x)``),
and likewise an FFN block with no neurons (``y = LN2(a)``). The structure is
saved in the model's config so that the model reloads with one call.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from axformer.errors import AxformerError
from axformer.surgery.components import Component, group_name, head_name, neuron_group_range, parse


@dataclass
class LayerStructure:
    heads: list[int]
    neurons: list[int]

    @property
    def has_attention(self) -> bool:
        return bool(self.heads)

    @property
    def has_ffn(self) -> bool:
        return bool(self.neurons)


def _compress(indices: list[int]) -> list[list[int]]:
    """[0,1,2,5,6] -> [[0,3],[5,7]]: half-open runs, compact in JSON."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return runs


def _expand(runs: list[list[int]]) -> list[int]:
    return [i for a, b in runs for i in range(a, b)]


@dataclass
class ModelStructure:
    num_heads: int  # per layer in the original model
    head_dim: int
    ffn_dim: int  # original FFN width
    hidden: int
    layers: list[LayerStructure | None] = field(default_factory=list)  # None: layer removed
    ffn_matrices: int = 2  # weight matrices per FFN neuron: 2, or 3 for gated (GLU) FFNs

    @classmethod
    def full(
        cls, num_layers: int, num_heads: int, head_dim: int, ffn_dim: int, hidden: int, ffn_matrices: int = 2
    ) -> ModelStructure:
        return cls(
            num_heads,
            head_dim,
            ffn_dim,
            hidden,
            [LayerStructure(list(range(num_heads)), list(range(ffn_dim))) for _ in range(num_layers)],
            ffn_matrices,
        )

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def present_layers(self) -> list[int]:
        return [i for i, l in enumerate(self.layers) if l is not None]

    def head_names(self, layer: int) -> list[str]:
        """The heads of ``layer`` still present, by name."""
        ls = self.layers[layer]
        return [] if ls is None else [head_name(layer, h) for h in ls.heads]

    def group_names(self, layer: int, groups: int) -> list[str]:
        """The FFN neuron groups of ``layer`` (of ``groups`` per layer) that still hold at least one neuron."""
        ls = self.layers[layer]
        if ls is None:
            return []
        present = set(ls.neurons)
        return [
            group_name(layer, g, groups)
            for g in range(groups)
            if present & set(neuron_group_range(g, groups, self.ffn_dim))
        ]

    def copy(self) -> ModelStructure:
        return ModelStructure(
            self.num_heads,
            self.head_dim,
            self.ffn_dim,
            self.hidden,
            [None if l is None else LayerStructure(list(l.heads), list(l.neurons)) for l in self.layers],
            self.ffn_matrices,
        )

    # ------------------------------------------------------------ removal

    def removed(self, components: Iterable[str | Component]) -> ModelStructure:
        """A new structure with ``components`` removed (already-removed parts are ignored)."""
        new = self.copy()
        for c in map(parse, components):
            if not 0 <= c.layer < self.num_layers:
                raise AxformerError(f"component {c.name}: the model has layers 0..{self.num_layers - 1}")
            layer = new.layers[c.layer]
            if layer is None:
                continue
            if c.kind == "layer":
                new.layers[c.layer] = None
            elif c.kind == "attn":
                layer.heads = []
            elif c.kind == "ffn":
                layer.neurons = []
            elif c.kind == "head":
                if not 0 <= c.index < self.num_heads:
                    raise AxformerError(f"component {c.name}: layers have heads 0..{self.num_heads - 1}")
                layer.heads = [h for h in layer.heads if h != c.index]
            elif c.kind == "group":
                if not 0 <= c.index < c.groups or c.groups > self.ffn_dim:
                    raise AxformerError(f"component {c.name}: group index out of range")
                drop = set(neuron_group_range(c.index, c.groups, self.ffn_dim))
                layer.neurons = [n for n in layer.neurons if n not in drop]
            elif c.kind == "neuron":
                if not 0 <= c.index < self.ffn_dim:
                    raise AxformerError(f"component {c.name}: FFN neurons are 0..{self.ffn_dim - 1}")
                layer.neurons = [n for n in layer.neurons if n != c.index]
        return new

    def is_subset_of(self, other: ModelStructure) -> bool:
        for mine, theirs in zip(self.layers, other.layers):
            if mine is None:
                continue
            if (
                theirs is None
                or not set(mine.heads) <= set(theirs.heads)
                or not set(mine.neurons) <= set(theirs.neurons)
            ):
                return False
        return len(self.layers) == len(other.layers)

    # ------------------------------------------------------------ queries

    def is_stock(self) -> bool:
        """True when a stock transformers config can express it: whole layers dropped and/or the same FFN width
        everywhere.
        """
        present = [l for l in self.layers if l is not None]
        if not present:
            return False
        widths = {len(l.neurons) for l in present}
        return all(len(l.heads) == self.num_heads for l in present) and len(widths) == 1 and 0 not in widths

    def is_full(self) -> bool:
        return all(
            l is not None and len(l.heads) == self.num_heads and len(l.neurons) == self.ffn_dim for l in self.layers
        )

    def encoder_macs_per_token(self, seq_len: int = 128) -> int:
        """Multiply-accumulates per token of the encoder layers at sequence length ``seq_len``.

        Projections: 4 x hidden x (heads x head_dim) for Q, K, V, O, plus 2 (3
        when gated) x hidden x width for the FFN; attention itself: 2 x seq_len x
        heads x head_dim (scores and context; sliding-window layers are counted
        as global). Embeddings and the task head are not counted.
        """
        total = 0
        for l in self.layers:
            if l is None:
                continue
            hd = len(l.heads) * self.head_dim
            total += 4 * self.hidden * hd + 2 * seq_len * hd + self.ffn_matrices * self.hidden * len(l.neurons)
        return total

    def flops_per_token(self, seq_len: int = 128) -> int:
        return 2 * self.encoder_macs_per_token(seq_len)

    def summary(self) -> list[dict]:
        return [
            {"layer": i, "removed": True} if l is None else {"layer": i, "heads": len(l.heads), "ffn": len(l.neurons)}
            for i, l in enumerate(self.layers)
        ]

    # ------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict:
        return {
            "num_heads": self.num_heads,
            "head_dim": self.head_dim,
            "ffn_dim": self.ffn_dim,
            "hidden": self.hidden,
            "layers": [None if l is None else {"heads": l.heads, "neurons": _compress(l.neurons)} for l in self.layers],
            **({"ffn_matrices": self.ffn_matrices} if self.ffn_matrices != 2 else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ModelStructure:
        try:
            return cls(
                d["num_heads"],
                d["head_dim"],
                d["ffn_dim"],
                d["hidden"],
                [None if l is None else LayerStructure(list(l["heads"]), _expand(l["neurons"])) for l in d["layers"]],
                d.get("ffn_matrices", 2),
            )
        except (KeyError, TypeError) as exc:
            raise AxformerError(f"saved model structure is malformed ({exc})") from None
