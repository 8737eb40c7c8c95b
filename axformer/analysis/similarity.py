"""Layer similarity: how much a layer or block changes the hidden states (forward only, one pass).

Score = 1 - mean cosine similarity between the residual stream entering and
leaving the layer (or block), over the non-padding held-out tokens. A layer
that barely turns its input is a cheap candidate for removal; the score is a
hint for ordering, never a decision (decisions are measured by ablation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from axformer.evaluation.engine import EvaluationEngine


@dataclass
class LayerSimilarity:
    layer: np.ndarray  # (layers,) 1 - cos(input, output); NaN where absent
    attn: np.ndarray  # 1 - cos(input, stream between the blocks)
    ffn: np.ndarray  # 1 - cos(stream between the blocks, output)

    def to_dict(self) -> dict:
        return {k: [None if np.isnan(v) else float(v) for v in getattr(self, k)] for k in ("layer", "attn", "ffn")}


@torch.inference_mode()
def layer_similarity(engine: EvaluationEngine) -> LayerSimilarity:
    model, a, st = engine.model, engine.adapter, engine.structure
    sums = {k: np.zeros(st.num_layers) for k in ("layer", "attn", "ffn")}
    count = 0
    captured: dict[tuple[int, str], torch.Tensor] = {}
    handles = []

    def pre(orig: int, where: str):
        def hook(module, args, kwargs):
            captured[(orig, where)] = args[0] if args else kwargs["hidden_states"]

        return hook

    def post(orig: int):
        def hook(module, args, output):
            captured[(orig, "out")] = a.layer_output(output)

        return hook

    engine.mask.set(engine.base_removed)
    for module, orig in zip(a.layers(model), st.present_layers):
        handles.append(module.register_forward_pre_hook(pre(orig, "in"), with_kwargs=True))
        handles.append(a.between_blocks(module).register_forward_pre_hook(pre(orig, "mid"), with_kwargs=True))
        handles.append(module.register_forward_hook(post(orig)))
    try:
        for _b, batch in enumerate(engine._inputs):
            captured.clear()
            model(**batch)
            keep = batch["attention_mask"].bool()
            count += int(keep.sum())
            for orig in st.present_layers:
                x, m, y = (captured[(orig, k)][keep].float() for k in ("in", "mid", "out"))
                sums["layer"][orig] += float((1 - F.cosine_similarity(x, y, dim=-1)).sum())
                sums["attn"][orig] += float((1 - F.cosine_similarity(x, m, dim=-1)).sum())
                sums["ffn"][orig] += float((1 - F.cosine_similarity(m, y, dim=-1)).sum())
    finally:
        for h in handles:
            h.remove()
    absent = [i for i in range(st.num_layers) if st.layers[i] is None]
    out = {k: v / max(count, 1) for k, v in sums.items()}
    for k in out:
        out[k][absent] = np.nan
    return LayerSimilarity(out["layer"], out["attn"], out["ffn"])
