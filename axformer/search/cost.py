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
from axformer.surgery.prune import apply_structure
from axformer.surgery.structure import ModelStructure


def _features(s: ModelStructure) -> np.ndarray:
    present = [l for l in s.layers if l is not None]
    return np.array([1.0, len(present), sum(len(l.heads) for l in present), sum(len(l.neurons) for l in present)])


@dataclass
class CostModel:
    """A cost (seconds of batch-1 latency, or parameters) linear in the counts of layers, heads and neurons."""

    quantity: str  # "latency", "parameters" or "bytes" (of the artifact the export writes)
    coef: list[float]  # c0, c_layer, c_head, c_neuron
    seq_len: int
    calibration: list[dict]  # variant, measured, predicted
    # approximate attention in every layer vs dense, measured at seq_len: mode -> dense_ms, approx_ms,
    # saving_ms_per_layer
    attention: dict | None = None
    # the cost ratios are taken against (None: the unpruned structure's predicted cost). The byte model's is the
    # fp32 original's bytes, so "10x smaller" counts what precision and vocabulary save too
    baseline: float | None = None
    # where latency was measured: "pytorch" (the model as it is) or "onnxruntime-int8" (as the default artifact
    # runs it: exported, fused, int8 weights; axformer.export.deployed)
    runtime: str = "pytorch"

    def attention_saving(self, mode: str) -> float:
        """Seconds one layer's approximate attention saves at batch 1 (negative: it is slower than dense)."""
        m = (self.attention or {}).get(mode)
        return 0.0 if m is None else m["saving_ms_per_layer"] / 1e3

    def predict(self, s: ModelStructure) -> float:
        """Predicted cost; never below 2% of the cost of the fitted model's largest variant (a fit can go negative)."""
        floor = 0.02 * max(
            (c.get("measured_ms", c.get("parameters", c.get("bytes", 0.0))) for c in self.calibration), default=0.0
        )
        floor = floor / 1e3 if self.quantity == "latency" else floor
        return max(float(_features(s) @ np.asarray(self.coef)), floor, 1e-12)

    def speedup(self, base: ModelStructure, s: ModelStructure) -> float:
        reference = self.baseline if self.baseline is not None else self.predict(base)
        return reference / max(self.predict(s), 1e-9)

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
    runtime: str = "pytorch",
) -> CostModel:
    """Measure batch-1 latency of pruned variants at ``seq_len`` tokens and fit the per-component model.

    ``runtime`` "onnxruntime-int8" times each variant as the default artifact runs it (exported, fused, int8, in
    an ONNX Runtime session on the CPU: a few seconds of export per variant), so that speed-ups and targets are
    over ONNX Runtime int8 of the unpruned model. With ``k`` and PyTorch, approximate attention in
    ``attention_modes`` is measured too (only the modes the search may try: each costs a model copy and a timing
    run); the exported graphs have no approximate attention, so it saves nothing there."""
    import contextlib
    import tempfile

    onnx = runtime == "onnxruntime-int8"
    model = model.eval()
    fns, feats = {}, {}
    vocab = int(getattr(model.config, "vocab_size", 1000))
    ids = torch.randint(min(5, vocab - 1), vocab, (1, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    # the exported graphs need a directory while they are timed; PyTorch's variants need none
    with tempfile.TemporaryDirectory(prefix="axformer-cost-") if onnx else contextlib.nullcontext() as tmp:
        for i, (name, target) in enumerate(_variants(structure).items()):
            m = copy.deepcopy(model)
            apply_structure(m, target)
            m.eval()
            if onnx:
                from axformer.export.deployed import int8_graph, session_call

                fns[name] = session_call(int8_graph(m, tmp, f"variant{i}"), ids.cpu().numpy())
            else:
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
        if k is not None and attention_modes and runtime == "pytorch"
        else None,
        runtime=runtime,
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


def _int4_bytes(rows: int, cols: int, block: int) -> int:
    """ONNX Runtime's block-wise 4-bit layout: per row, ceil(cols/block) blocks of block/2 bytes and an fp32 scale."""
    return rows * -(-cols // block) * (block // 2 + 4)


def matrix_bytes(rows: int, cols: int, fmt: str, block: int, table: bool = False) -> int:
    """Bytes of one weight matrix ([rows, cols], blocks along cols) in ``fmt`` as ONNX Runtime stores it."""
    if fmt == "int4" and table:  # GatherBlockQuantized: rows packed whole (two values a byte), a scale per block
        return rows * -(-cols // 2) + rows * -(-cols // block) * 4
    if fmt == "int4":
        return _int4_bytes(rows, cols, block)
    if fmt == "int8":  # per output channel scales and zero points (a lookup table: one of each)
        return rows * cols + (5 if table else 5 * rows)
    return 4 * rows * cols


def artifact_bytes(model, fmt, vocab_rows: int | None = None, max_length: int | None = None) -> int:
    """Predicted bytes of the weights the export will write for ``model`` in ``fmt`` (an ``ArtifactFormat``).

    Encoder matrices in ``fmt.matrices`` (Q/K/V int8 unless int4 attention: the fused Attention op has no 4-bit
    kernel), other matrices (pooler, classifier) int8 unless fp32, embedding tables in ``fmt.embeddings`` with the
    kept vocabulary's rows (int4: the word table; the tables every token adds int8), vectors fp32. The graph's own
    bytes (names, shapes: about 1%) are not counted; the pipeline reports the written file next to this prediction.
    """
    from torch import nn

    from axformer.surgery.adapters import get_adapter
    from axformer.surgery.fake_quant import embedding_tables, table_format

    tables = {id(model.get_submodule(p)): n for n, p in embedding_tables(model).items()}
    adapter = get_adapter(model)
    encoder = {id(linear): name for _, name, linear in adapter.named_linears(model, current_present_layers(model))}
    total = 0
    for module in model.modules():
        if id(module) in tables and isinstance(module, nn.Embedding):
            rows, cols = module.weight.shape
            name = tables[id(module)]
            if name == "embeddings.word" and vocab_rows is not None:
                rows = vocab_rows
            if name == "embeddings.position" and max_length is not None:
                offset = module.padding_idx + 1 if module.padding_idx is not None else 0
                rows = min(rows, max_length + offset)
            total += matrix_bytes(
                rows, cols, table_format(name, fmt.embeddings), fmt.table_block_size or fmt.block_size, table=True
            )
        elif isinstance(module, nn.Linear):
            out_f, in_f = module.weight.shape
            if id(module) in encoder:
                qkv = encoder[id(module)].rsplit(".", 1)[-1] in ("q", "k", "v")
                f = fmt.matrices if not (qkv and fmt.matrices == "int4" and not fmt.int4_attention) else "int8"
            else:
                f = "fp32" if fmt.matrices == "fp32" else "int8"
            total += matrix_bytes(out_f, in_f, f, fmt.block_size) + (4 * out_f if module.bias is not None else 0)
        else:
            total += sum(4 * p.numel() for p in module.parameters(recurse=False))
    return total


def current_present_layers(model) -> list[int]:
    from axformer.surgery.prune import current_structure

    return current_structure(model).present_layers


def byte_model(
    model, structure: ModelStructure, fmt, vocab_rows: int | None = None, max_length: int | None = None
) -> CostModel:
    """Bytes of the artifact as a function of the structure, fitted on the same variants (counted exactly per variant),
    with the fp32 original's bytes as the baseline of every ratio."""
    from axformer.search.config import ArtifactFormat

    feats, counts = [], []
    for target in _variants(structure).values():
        m = copy.deepcopy(model)
        apply_structure(m, target)
        feats.append(_features(target))
        counts.append(artifact_bytes(m, fmt, vocab_rows, max_length))
    coef, *_ = np.linalg.lstsq(np.stack(feats), np.asarray(counts, dtype=float), rcond=None)
    baseline = float(artifact_bytes(model, ArtifactFormat()))
    return CostModel("bytes", [float(c) for c in coef], 0, [{"bytes": c} for c in counts], baseline=baseline)
