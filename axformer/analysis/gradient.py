"""Gradient importance (Michel et al. 2019; FastFormers): one backward pass per held-out batch.

Gates of one multiply each head's output, each FFN neuron's activation, each
block's output and each layer's update (the soft masks of axformer.surgery).
The importance of a unit is the sum over batches of |dLoss/dgate|, with the
loss summed over the batch's examples and the gradient taken afresh for every
batch (FastFormers' code let gradients accumulate across batches; we do not).
For a neuron this is the first-order Taylor estimate of the loss change when
its activation is removed, |sum over tokens of activation x dLoss/dactivation|
(FastFormers takes the same product at the neuron's pre-activation, through
the first projection's weights; the gate form measures what pruning removes
and works unchanged for gated FFNs). Head scores can be normalised per layer
by their L2 norm, as Michel et al. do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from axformer.evaluation.engine import EvaluationEngine
from axformer.inference import per_example_loss
from axformer.surgery.components import neuron_group_range
from axformer.surgery.masks import SoftMask


@dataclass
class GradientImportance:
    heads: np.ndarray  # (layers, heads) by original index; NaN where absent
    neurons: np.ndarray  # (layers, ffn_dim); NaN where absent
    groups: np.ndarray  # (layers, groups): sum of the group's neuron scores
    attn: np.ndarray  # (layers,) |dL/d block gate|
    ffn: np.ndarray
    layer: np.ndarray
    normalized_heads: bool

    def to_dict(self) -> dict:
        def clean(a):
            return (
                [None if isinstance(v, float) and np.isnan(v) else v for v in a.tolist()]
                if a.ndim == 1
                else [clean(r) for r in a]
            )

        return {k: clean(getattr(self, k)) for k in ("heads", "groups", "attn", "ffn", "layer")} | {
            "normalized_heads": self.normalized_heads
        }


def gradient_importance(
    engine: EvaluationEngine, groups: int = 12, normalize_heads: bool = False, progress: bool = True
) -> GradientImportance:
    """Gradient scores of every present head, neuron, block and layer of the engine's base model."""
    model, st = engine.model, engine.structure
    L = st.num_layers
    heads = np.full((L, st.num_heads), np.nan)
    neurons = np.full((L, st.ffn_dim), np.nan)
    attn, ffn, layer = (np.full(L, np.nan) for _ in range(3))
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    engine.mask.set(engine.base_removed)
    try:
        # the engine's own mask keeps the base's removals switched off; their gates here get zero gradient
        with SoftMask(model, engine.adapter, requires_grad=True) as mask:
            gates = mask.gates()
            sums = [torch.zeros_like(g) for g in gates]
            for b in tqdm(range(len(engine.batches)), desc="gradient importance", disable=not progress, leave=False):
                out = model(**engine._inputs[b]).logits
                loss = per_example_loss(out, engine._labels[b], engine.regression).sum()
                grads = torch.autograd.grad(loss, gates)
                for s, g in zip(sums, grads):
                    s.add_(g.abs())
            by_gate = {id(g): s.cpu().double().numpy() for g, s in zip(gates, sums)}
            for orig in st.present_layers:
                ls = st.layers[orig]
                layer[orig] = by_gate[id(mask.layer_gates[orig])]
                if orig in mask.head_gates:
                    heads[orig, ls.heads] = by_gate[id(mask.head_gates[orig])]
                    attn[orig] = by_gate[id(mask.attn_gates[orig])]
                if orig in mask.neuron_gates:
                    neurons[orig, ls.neurons] = by_gate[id(mask.neuron_gates[orig])]
                    ffn[orig] = by_gate[id(mask.ffn_gates[orig])]
    finally:
        for p in params:
            p.requires_grad_(True)
    # units the base state switched off are absent, not unimportant
    base = st.removed(engine.base_removed)
    for orig in st.present_layers:
        now = base.layers[orig]
        if now is None:
            heads[orig], neurons[orig], attn[orig], ffn[orig], layer[orig] = np.nan, np.nan, np.nan, np.nan, np.nan
            continue
        heads[orig, sorted(set(st.layers[orig].heads) - set(now.heads))] = np.nan
        neurons[orig, sorted(set(st.layers[orig].neurons) - set(now.neurons))] = np.nan
        if not now.heads:
            attn[orig] = np.nan
        if not now.neurons:
            ffn[orig] = np.nan
    if normalize_heads:
        norms = np.sqrt(np.nansum(heads**2, axis=1, keepdims=True))
        heads = np.where(norms > 0, heads / np.where(norms > 0, norms, 1), heads)
    group_scores = np.full((L, groups), np.nan)
    for orig in st.present_layers:
        for g in range(groups):
            vals = neurons[orig, list(neuron_group_range(g, groups, st.ffn_dim))]
            if not np.all(np.isnan(vals)):
                group_scores[orig, g] = np.nansum(vals)
    return GradientImportance(heads, neurons, group_scores, attn, ffn, layer, normalize_heads)
