"""What a component costs: a per-component latency model calibrated on this machine, and parameter counts.

A removed head and a removed FFN neuron group save different time, and a
layer costs more than its matrix products (LayerNorms, residuals, kernel
launches), so the speed goal cannot rank by parameters. The model is

    latency(structure) = c0 + c_layer * layers + c_head * heads + c_neuron * neurons

(sums over present layers), fitted by least squares to the measured batch-1
latency of a few physically pruned variants of the model itself (PyTorch, at
the task's typical length, medians of interleaved repeats). The fit's error on
those variants is reported, and the optimize report measures the final model
directly, so the model is checked against reality every run.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import torch

from axformer.attention.hard import MODES, set_attention, supports_approximate_attention
from axformer.runtime.timing import interleaved_medians
from axformer.surgery.components import block_name, head_name, layer_name, neuron_name
from axformer.surgery.prune import apply_structure, count_parameters
from axformer.surgery.structure import ModelStructure


def _features(s: ModelStructure) -> np.ndarray:
    present = [l for l in s.layers if l is not None]
    return np.array([1.0, len(present), sum(len(l.heads) for l in present), sum(len(l.neurons) for l in present)])


@dataclass
class CostModel:
    """A cost (seconds of batch-1 latency, or parameters) linear in the counts of layers, heads and neurons."""

    quantity: str  # "latency" or "parameters"
    coef: list[float]  # c0, c_layer, c_head, c_neuron
    seq_len: int
    calibration: list[dict]  # variant, measured, predicted
    # approximate attention in every layer vs dense, measured at seq_len: mode -> dense_ms, approx_ms,
    # saving_ms_per_layer
    attention: dict | None = None

    def attention_saving(self, mode: str) -> float:
        """Seconds one layer's approximate attention saves at batch 1 (negative: it is slower than dense)."""
        m = (self.attention or {}).get(mode)
        return 0.0 if m is None else m["saving_ms_per_layer"] / 1e3

    def predict(self, s: ModelStructure) -> float:
        """Predicted cost; never below 2% of the cost of the fitted model's largest variant (a fit can go negative)."""
        floor = 0.02 * max((c.get("measured_ms", c.get("parameters", 0.0)) for c in self.calibration), default=0.0)
        floor = floor / 1e3 if self.quantity == "latency" else floor
        return max(float(_features(s) @ np.asarray(self.coef)), floor, 1e-12)

    def speedup(self, base: ModelStructure, s: ModelStructure) -> float:
        return self.predict(base) / max(self.predict(s), 1e-9)

    def to_dict(self) -> dict:
        return asdict(self)


def _variants(s: ModelStructure) -> dict[str, ModelStructure]:
    present = s.present_layers
    half_heads = [head_name(l, h) for l in present for h in s.layers[l].heads[len(s.layers[l].heads) // 2 :]]
    half_ffn = [neuron_name(l, n) for l in present for n in s.layers[l].neurons[len(s.layers[l].neurons) // 2 :]]
    upper = present[len(present) // 2 :]
    return {
        "unchanged": s,
        "half the heads": s.removed(half_heads),
        "half the FFN": s.removed(half_ffn),
        "half the layers": s.removed([layer_name(l) for l in upper]),
        "no attention in half the layers": s.removed([block_name(l, "attn") for l in upper]),
        "quarter heads and FFN": s.removed(half_heads[: len(half_heads) // 2] + half_ffn[len(half_ffn) // 2 :]),
    }


@torch.inference_mode()
def calibrate_latency(
    model,
    structure: ModelStructure,
    seq_len: int,
    repeats: int = 20,
    device: str = "cpu",
    k: int | None = None,
    attention_modes: tuple[str, ...] = MODES,
) -> CostModel:
    """Measure batch-1 latency of pruned variants at ``seq_len`` tokens and fit the per-component model.

    With ``k``, approximate attention in ``attention_modes`` is measured too (only the modes the search may try:
    each costs a model copy and a timing run)."""
    model = model.eval()
    fns, feats = {}, {}
    vocab = int(getattr(model.config, "vocab_size", 1000))
    ids = torch.randint(min(5, vocab - 1), vocab, (1, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    for name, target in _variants(structure).items():
        m = copy.deepcopy(model)
        apply_structure(m, target)
        m.eval()
        fns[name] = lambda m=m: m(**batch)
        feats[name] = _features(target)
    measured = interleaved_medians(fns, repeats=repeats, rounds=3)
    X = np.stack([feats[k] for k in fns])
    y = np.array([measured[k] for k in fns])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    calib = [
        {"variant": k, "measured_ms": 1e3 * measured[k], "predicted_ms": 1e3 * float(feats[k] @ coef)} for k in fns
    ]
    return CostModel(
        "latency",
        [float(c) for c in coef],
        seq_len,
        calib,
        measure_attention(model, structure, batch, k, repeats, attention_modes)
        if k is not None and attention_modes
        else None,
    )


def measure_attention(
    model, structure: ModelStructure, batch: dict, k: int, repeats: int = 20, modes: tuple[str, ...] = MODES
) -> dict | None:
    """Batch-1 latency with top-K and sign-matching attention (gather kernels) in every layer against dense,
    interleaved.

    The approximations only pay where selecting K keys costs less than the
    dense attention it replaces; the search tries them for speed only where
    this measurement says they are faster.
    """
    if not supports_approximate_attention(model):
        return None
    layers = [l for l in structure.present_layers if structure.layers[l].heads]
    fns = {"dense": lambda: model(**batch)}
    for mode in modes:
        m = copy.deepcopy(model)
        set_attention(m, {l: {"mode": mode, "k": k, "renormalize": mode == "topk", "kernel": "gather"} for l in layers})
        fns[mode] = lambda m=m: m(**batch)
    measured = interleaved_medians(fns, repeats=repeats, rounds=3)
    return {
        mode: {
            "dense_ms": 1e3 * measured["dense"],
            "approx_ms": 1e3 * measured[mode],
            "k": k,
            "saving_ms_per_layer": 1e3 * (measured["dense"] - measured[mode]) / max(len(layers), 1),
        }
        for mode in modes
    }


def parameter_model(model, structure: ModelStructure) -> CostModel:
    """Parameters as a function of the structure, fitted on the same variants (counted, not timed)."""
    feats, counts = [], []
    for target in _variants(structure).values():
        m = copy.deepcopy(model)
        apply_structure(m, target)
        feats.append(_features(target))
        counts.append(count_parameters(m))
    coef, *_ = np.linalg.lstsq(np.stack(feats), np.asarray(counts, dtype=float), rcond=None)
    return CostModel("parameters", [float(c) for c in coef], 0, [{"parameters": c} for c in counts])
