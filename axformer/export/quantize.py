"""Numerical formats for an exported graph: dynamic int8, block-wise int4, fp16, and per-matrix mixes of them.

All of it is ONNX Runtime's own tooling (``quantize_dynamic``,
``MatMulNBitsQuantizer``, the transformer optimizer's fp16 conversion); this
module only chooses what each weight matrix gets and names the matrices so a
plan can say "L3.ffn.down in int4" and find that node in a fused graph.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

DEFAULT_INT8_OPS = ("MatMul", "Attention")


@contextmanager
def quiet_onnxruntime():
    """ORT's tools log advice meant for their own developers (pre-processing hints, unused initializers) on the root
    logger.
    """
    import onnxruntime as ort

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        root.setLevel(level)


@dataclass(frozen=True)
class WeightNode:
    """A graph node that multiplies by a weight matrix: what a precision plan assigns a format to."""

    node: str  # ONNX node name
    op_type: str  # MatMul or Attention (fused Q/K/V)
    weight: str  # initializer name
    shape: tuple[int, ...]
    component: str | None = None  # axformer's name for it (e.g. L3.ffn.down, L2.attn.qkv), when known


def weight_nodes(model: onnx.ModelProto) -> list[WeightNode]:
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type not in ("MatMul", "Attention") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        dims = tuple(int(d) for d in inits[n.input[1]].dims)
        if len(dims) == 2:
            out.append(WeightNode(n.name, n.op_type, n.input[1], dims))
    return out


def name_weight_nodes(model: onnx.ModelProto, linears: dict[str, np.ndarray]) -> list[WeightNode]:
    """Attach axformer component names to the weight nodes by matching weight values.

    ``linears`` maps component names (``L3.ffn.down``, ``L3.attn.q`` ...) to the
    PyTorch weight ([out, in]). Exported MatMul weights are the transposes,
    bit for bit; a fused Attention's weight starts with Q's columns. Matching
    by value is immune to how an exporter or optimizer renames nodes.
    """
    inits = {i.name: i for i in model.graph.initializer}
    by_shape: dict[tuple, list[tuple[str, np.ndarray]]] = {}
    for name, w in linears.items():
        by_shape.setdefault(tuple(w.shape[::-1]), []).append((name, w))
    named = []
    for wn in weight_nodes(model):
        arr = numpy_helper.to_array(inits[wn.weight])
        found = None
        if wn.op_type == "MatMul":
            found = next((n for n, w in by_shape.get(wn.shape, []) if np.array_equal(arr, w.T)), None)
        else:
            width = wn.shape[1] // 3
            q = arr[:, :width]
            for n, w in linears.items():
                if n.endswith(".attn.q") and w.shape == (width, wn.shape[0]) and np.array_equal(q, w.T):
                    found = n[: -len(".q")] + ".qkv"
                    break
        named.append(WeightNode(wn.node, wn.op_type, wn.weight, wn.shape, found))
    return named


def quantize_int8(
    source: str | os.PathLike,
    target: str | os.PathLike,
    per_channel: bool = True,
    op_types: tuple[str, ...] = DEFAULT_INT8_OPS,
    exclude: list[str] | None = None,
    include: list[str] | None = None,
) -> Path:
    """Dynamic int8 quantization (weights per output channel when ``per_channel``), activations quantised at run
    time.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # a fused graph has ops whose output types the quantizer cannot infer; telling it the default tensor type
    # is float is what lets it go on instead of stopping with "unable to find data type"
    with quiet_onnxruntime():
        quantize_dynamic(
            str(source),
            str(target),
            op_types_to_quantize=list(op_types),
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude or None,
            nodes_to_quantize=include or None,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True},
        )
    return Path(target)


def quantize_int4(
    source: str | os.PathLike, target: str | os.PathLike, nodes: list[str] | None = None, block_size: int = 32
) -> Path:
    """Weight-only block-wise 4-bit quantization (ONNX Runtime's MatMulNBits) of MatMul nodes (all, or ``nodes``)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, op_types_to_quantize=("MatMul",))
    model = onnx.load(str(source))
    # the default quantizer ignores nodes_to_include (onnxruntime 1.32), so the selection is made by exclusion
    exclude = (
        None
        if nodes is None
        else [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in set(nodes)]
    )
    q = MatMulNBitsQuantizer(model, nodes_to_exclude=exclude, algo_config=config)
    with quiet_onnxruntime():
        q.process()
    q.model.save_model_to_file(str(target), False)
    return Path(target)


def convert_fp16(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """fp16 weights and compute with fp32 inputs/outputs (for CUDA; CPUs gain nothing from it)."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    m = OnnxModel(onnx.load(str(source)))
    m.convert_float_to_float16(keep_io_types=True)
    m.save_model_to_file(str(target))
    return Path(target)


def apply_plan(
    source: str | os.PathLike, target: str | os.PathLike, plan: dict[str, str], block_size: int = 32
) -> Path:
    """Write ``source`` with each weight node in its planned precision (node name -> fp32/int8/int4; unnamed nodes
    int8).
    """
    target = Path(target)
    tmp = target.with_name(target.stem + ".int4-stage.onnx")
    int4 = [n for n, p in plan.items() if p == "int4"]
    fp32 = [n for n, p in plan.items() if p == "fp32"]
    stage = source
    if int4:
        stage = quantize_int4(source, tmp, int4, block_size)
    quantize_int8(stage, target, exclude=fp32)
    tmp.unlink(missing_ok=True)
    return target
