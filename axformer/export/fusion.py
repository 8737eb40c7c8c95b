"""ONNX Runtime's transformer graph optimizer, made to work on pruned models.

The optimizer fuses each layer's attention subgraph into one ``Attention`` op
(plus EmbedLayerNormalization and BiasGelu; not SkipLayerNormalization, whose
CPU kernel is slower than the ops it replaces), which is
where most of ONNX Runtime's CPU speed-up over plain ONNX comes from. It needs
each layer's head count, and it reads it from the constant shape that splits
Q into heads. transformers 5 writes that shape as ``(batch, seq, -1,
head_dim)``, so the optimizer sees ``-1`` heads and either falls back to one
global ``num_heads`` (wrong for a model whose layers kept different numbers of
heads) or gives up on the fusion. :func:`pin_head_counts` replaces each ``-1``
with the head count that layer really has, read off the projection's weight
width, so every layer fuses with its own head count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

# families whose exported graph matches ORT's BERT fusion patterns (others still get the generic fusions)
FUSION_MODEL_TYPE = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "camembert": "bert",
    "electra": "bert",
    "distilbert": "bert",
}


@dataclass
class FusionResult:
    path: Path
    fused: dict[str, int]  # fused operator counts reported by the optimizer
    pinned_reshapes: int  # attention reshapes whose head count was made explicit


def _producer_map(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def _constant(graph: onnx.GraphProto, producers: dict, inits: dict, name: str) -> np.ndarray | None:
    if name in inits:
        return numpy_helper.to_array(inits[name])
    node = producers.get(name)
    if node is not None and node.op_type == "Constant":
        return numpy_helper.to_array(node.attribute[0].t)
    if node is not None and node.op_type == "Unsqueeze":  # constant folded scalars come through an Unsqueeze
        inner = _constant(graph, producers, inits, node.input[0])
        return None if inner is None else inner.reshape(-1)
    return None


def _projection_width(producers: dict, inits: dict, name: str) -> int | None:
    """Output width of the linear layer (MatMul [+ Add]) that produces ``name``."""
    node = producers.get(name)
    for _ in range(3):
        if node is None:
            return None
        if node.op_type == "MatMul":
            for i in node.input:
                if i in inits:
                    dims = inits[i].dims
                    return int(dims[-1]) if len(dims) == 2 else None
            return None
        if node.op_type != "Add":
            return None
        node = next((producers[i] for i in node.input if i in producers and producers[i].op_type == "MatMul"), None)
    return None


def pin_head_counts(model: onnx.ModelProto) -> int:
    """Replace the ``-1`` head dimension of every per-head Reshape that follows a linear projection; returns how
    many.
    """
    graph = model.graph
    producers = _producer_map(graph)
    inits = {i.name: i for i in graph.initializer}
    pinned = 0
    for node in list(graph.node):
        if node.op_type != "Reshape":
            continue
        concat = producers.get(node.input[1])
        if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
            continue
        heads = _constant(graph, producers, inits, concat.input[2])
        head_dim = _constant(graph, producers, inits, concat.input[3])
        if heads is None or head_dim is None or heads.size != 1 or head_dim.size != 1 or int(heads[0]) != -1:
            continue
        width = _projection_width(producers, inits, node.input[0])
        if width is None or width % int(head_dim[0]):
            continue
        name = f"axformer_heads_{pinned}"
        graph.initializer.append(
            numpy_helper.from_array(np.array([width // int(head_dim[0])], dtype=heads.dtype), name)
        )
        concat.input[2] = name
        pinned += 1
    return pinned


def fuse(
    source: str | os.PathLike,
    target: str | os.PathLike,
    model_type: str,
    hidden_size: int,
    num_heads: int,
    attention: bool = True,
    embedding: bool = True,
    skip_layer_norm: bool = False,
) -> FusionResult:
    """Pin per-layer head counts, run ORT's transformer optimizer, and save the fused graph.

    ``attention=False`` leaves Q, K and V as MatMuls and ``embedding=False`` leaves the embedding lookups as
    Gathers: ONNX Runtime has 4-bit kernels for those, not for the fused Attention and EmbedLayerNormalization.
    ``skip_layer_norm=True`` writes the slower SkipLayerNormalization ops, for comparison only
    (benchmarks/experiments/skip_layer_norm.py).
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from axformer.export.quantize import quiet_onnxruntime

    model = onnx.load(str(source))
    pinned = pin_head_counts(model)
    kind = FUSION_MODEL_TYPE.get(model_type, "bert")
    options = FusionOptions(kind)
    options.enable_attention = attention
    options.enable_embed_layer_norm = embedding
    # residual Add + LayerNormalization stay two ops: ONNX Runtime's CPU SkipLayerNormalization is slower than the
    # pair (axformer.runtime.backends.CPU_DISABLED_OPTIMIZERS, which keeps a session from fusing them again)
    options.enable_skip_layer_norm = skip_layer_norm
    with quiet_onnxruntime():
        opt = optimize_model(
            model, model_type=kind, num_heads=num_heads, hidden_size=hidden_size, optimization_options=options
        )
    target = Path(target)
    opt.save_model_to_file(str(target))
    return FusionResult(target, {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}, pinned)
