"""Students derived from a teacher: a subset of its layers, fewer heads, narrower FFNs.

A derived student starts as the teacher's own weights (the layers it keeps are
the teacher's layers, unchanged), so distillation begins from a good point and
the student's layers map one to one onto the teacher's. Heads and neurons are
chosen by FastFormers' gradient importance: the same count kept in every layer
(``uniform``), or the same total with each layer's share following the scores
(``global``; scores normalised per layer so that layers are comparable).
"""

from __future__ import annotations

import numpy as np
from transformers import PreTrainedModel

from axformer.errors import AxformerError
from axformer.surgery.prune import apply_structure, current_structure
from axformer.surgery.structure import ModelStructure

BUDGETS = ("uniform", "global")


def parse_layers(spec: str | list[int], present: list[int]) -> list[int]:
    """``"3"``: three layers spread evenly, first and last included; ``"0,2,4"``: exactly those (original numbering);
    ``"5,"``: layer 5 alone (a bare number is a count)."""
    if isinstance(spec, list):
        chosen = spec
    else:
        text = str(spec).strip()
        if "," not in text:
            try:
                count = int(text)
            except ValueError:
                raise AxformerError(
                    f"--student-layers {spec!r}; expected a layer count (e.g. 3) or layer indices (e.g. 0,2,4)"
                ) from None
            if not 1 <= count <= len(present):
                raise AxformerError(f"--student-layers {count}; the teacher has {len(present)} layers")
            return [present[i] for i in np.unique(np.round(np.linspace(0, len(present) - 1, count)).astype(int))]
        try:
            chosen = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise AxformerError(
                f"--student-layers {spec!r}; expected comma-separated layer indices such as 0,2,4"
            ) from None
    missing = sorted(set(chosen) - set(present))
    if missing or not chosen:
        raise AxformerError(
            f"--student-layers {spec!r}: layer(s) {missing or chosen} are not in the teacher (it has {present})"
        )
    return sorted(set(chosen))


def keep_layers(structure: ModelStructure, layers: list[int]) -> ModelStructure:
    new = structure.copy()
    new.layers = [l if i in layers else None for i, l in enumerate(new.layers)]
    return new


def _top(indices: list[int], scores: np.ndarray, count: int) -> list[int]:
    """The ``count`` best of ``indices`` by score (ties: lower index), returned in index order."""
    order = sorted(indices, key=lambda i: (-np.nan_to_num(scores[i], nan=-np.inf), i))
    return sorted(order[:count])


def prune_by_importance(
    structure: ModelStructure,
    head_scores: np.ndarray,
    neuron_scores: np.ndarray,
    heads: int | None,
    ffn: int | None,
    budget: str = "uniform",
) -> ModelStructure:
    """The structure that keeps ``heads`` heads and ``ffn`` FFN neurons per layer (``uniform``), or as many in total
    (``global``).

    Scores are indexed by original layer and original head/neuron (NaN where absent).
    """
    if budget not in BUDGETS:
        raise AxformerError(f"--budget {budget!r}; expected one of {', '.join(BUDGETS)}")
    if heads is not None and not 1 <= heads <= structure.num_heads:
        raise AxformerError(f"--heads {heads}; expected 1..{structure.num_heads} heads kept per layer")
    if ffn is not None and not 1 <= ffn <= structure.ffn_dim:
        raise AxformerError(f"--ffn {ffn}; expected 1..{structure.ffn_dim} FFN neurons kept per layer")
    new = structure.copy()
    present = new.present_layers
    for kind, count, scores in (("heads", heads, head_scores), ("neurons", ffn, neuron_scores)):
        if count is None:
            continue
        if budget == "uniform":
            for i in present:
                units = getattr(new.layers[i], kind)
                setattr(new.layers[i], kind, _top(units, scores[i], count) if len(units) > count else units)
            continue
        # global: one ranking over all layers of per-layer-normalised scores, the same total as uniform
        pool = []
        for i in present:
            units = getattr(new.layers[i], kind)
            vals = np.nan_to_num(scores[i, units], nan=0.0)
            norm = np.sqrt((vals**2).sum()) or 1.0
            pool += [(-v / norm, i, u) for v, u in zip(vals, units)]
        total = min(count * len(present), len(pool))
        kept = sorted(pool)[:total]
        for i in present:
            setattr(new.layers[i], kind, sorted(u for _, layer, u in kept if layer == i))
    return new


def derive_student(
    teacher: PreTrainedModel, layers: list[int] | None = None, target: ModelStructure | None = None
) -> PreTrainedModel:
    """Reduce ``teacher`` (in place; pass a copy) to the given layers and/or structure."""
    structure = current_structure(teacher)
    if target is None:
        target = structure
    if layers is not None:
        target = keep_layers(target, layers)
    if not target.present_layers:
        raise AxformerError("the student would have no layer left")
    return apply_structure(teacher, target)


def layer_map(student: PreTrainedModel, teacher: PreTrainedModel) -> list[int]:
    """For each of the student's hidden states (0 = embeddings, i = after its i-th layer), the teacher's hidden state
    it should match.

    A student derived from the teacher matches the layers it kept; any other
    student is mapped uniformly (its last layer onto the teacher's last).
    """
    s, t = current_structure(student), current_structure(teacher)
    if s.num_layers == t.num_layers and set(s.present_layers) <= set(t.present_layers):
        position = {orig: p + 1 for p, orig in enumerate(t.present_layers)}
        return [0] + [position[orig] for orig in s.present_layers]
    ls, lt = len(s.present_layers), len(t.present_layers)
    return [0] + [max(1, round(j * lt / ls)) for j in range(1, ls + 1)]
