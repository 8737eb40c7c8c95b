"""Numerical formats for an exported graph: dynamic int8, block-wise int4, fp16, and per-matrix mixes of them.

All of it is ONNX Runtime's own tooling (``quantize_dynamic``,
``MatMulNBitsQuantizer``, the transformer optimizer's fp16 conversion); this
module only chooses what each weight matrix gets and names the matrices so a
plan can say "L3.ffn.down in int4" and find that node in a fused graph.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import numpy_helper

from axformer.utils.device import cpu_flags

if TYPE_CHECKING:
    from axformer.export.gptq import Calibration

DEFAULT_INT8_OPS = ("MatMul", "Attention")
EMBEDDING_OPS = ("Gather", "EmbedLayerNormalization")  # a lookup table: int8 either way, int4 only unfused (Gather)
INT4_OPS = ("MatMul", "Gather")  # what ONNX Runtime has 4-bit kernels for (MatMulNBits, GatherBlockQuantized)


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
    op_type: str  # MatMul, Attention (fused Q/K/V), Gather or EmbedLayerNormalization (embedding tables)
    weight: str  # initializer name (for EmbedLayerNormalization: the word embedding)
    shape: tuple[int, ...]
    component: str | None = None  # axformer's name for it (e.g. L3.ffn.down, L2.attn.qkv), when known


# where each op keeps the matrix a precision applies to
_WEIGHT_INPUT = {"MatMul": 1, "Attention": 1, "Gather": 0, "EmbedLayerNormalization": 2}


def weight_nodes(model: onnx.ModelProto, embeddings: bool = False) -> list[WeightNode]:
    """The nodes that multiply by (or look up in) a constant matrix; embedding tables only with ``embeddings``."""
    inits = {i.name: i for i in model.graph.initializer}
    ops = ("MatMul", "Attention", *(EMBEDDING_OPS if embeddings else ()))
    out = []
    for n in model.graph.node:
        slot = _WEIGHT_INPUT.get(n.op_type)
        if n.op_type not in ops or len(n.input) <= slot or n.input[slot] not in inits:
            continue
        dims = tuple(int(d) for d in inits[n.input[slot]].dims)
        if len(dims) == 2:
            out.append(WeightNode(n.name, n.op_type, n.input[slot], dims))
    return out


def name_weight_nodes(
    model: onnx.ModelProto, linears: dict[str, np.ndarray], tables: dict[str, np.ndarray] | None = None
) -> list[WeightNode]:
    """Attach axformer component names to the weight nodes by matching weight values.

    ``linears`` maps component names (``L3.ffn.down``, ``L3.attn.q`` ...) to the
    PyTorch weight ([out, in]). Exported MatMul weights are the transposes,
    bit for bit; a fused Attention's weight starts with Q's columns. Matching
    by value is immune to how an exporter or optimizer renames nodes. ``tables`` (``embeddings.word`` ...:
    the PyTorch embedding weights, [rows, hidden]) adds the embedding lookups, stored as they are.
    """
    inits = {i.name: i for i in model.graph.initializer}
    if tables is not None:
        named_tables = []
        for wn in weight_nodes(model, embeddings=True):
            if wn.op_type not in EMBEDDING_OPS:
                continue
            arr = numpy_helper.to_array(inits[wn.weight])
            found = next((n for n, w in tables.items() if w.shape == arr.shape and np.array_equal(arr, w)), None)
            named_tables.append(WeightNode(wn.node, wn.op_type, wn.weight, wn.shape, found))
    else:
        named_tables = []
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
    return named_tables + named


def saturates_u8s8(cpuinfo: str | None = None) -> bool:
    """Whether this CPU's int8 kernels can saturate: on x86-64 with AVX2 or AVX-512 but without VNNI, ONNX Runtime
    multiplies uint8 activations by int8 weights with VPMADDUBSW, whose int16 pair sums overflow for 8-bit
    weights (ONNX Runtime's quantization guide; measured here on an AVX2 AMD EPYC: a trained tiny model's int8
    logits moved by 0.52 instead of < 0.05). VNNI (VPDPBUSD) accumulates in int32 and does not saturate."""
    flags = cpu_flags(cpuinfo)
    return "avx2" in flags and not {"avx512_vnni", "avx_vnni", "amx_int8"} & flags


def quantize_int8(
    source: str | os.PathLike,
    target: str | os.PathLike,
    per_channel: bool = True,
    op_types: tuple[str, ...] = DEFAULT_INT8_OPS,
    exclude: list[str] | None = None,
    include: list[str] | None = None,
    reduce_range: bool | None = None,
) -> Path:
    """Dynamic int8 quantization (weights per output channel when ``per_channel``), activations quantised at run
    time. ``reduce_range`` (7-bit weights, ONNX Runtime's remedy for saturation) defaults to whether this CPU's
    kernels saturate (:func:`saturates_u8s8`): the artifact is validated on this CPU, and 7-bit weights also
    run unsaturated elsewhere.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if reduce_range is None:
        reduce_range = saturates_u8s8()

    # a fused graph has ops whose output types the quantizer cannot infer; telling it the default tensor type
    # is float is what lets it go on instead of stopping with "unable to find data type"
    with quiet_onnxruntime():
        quantize_dynamic(
            str(source),
            str(target),
            op_types_to_quantize=list(op_types),
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            reduce_range=reduce_range,
            nodes_to_exclude=exclude or None,
            nodes_to_quantize=include or None,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True},
        )
    return Path(target)


def quantize_int4(
    source: str | os.PathLike,
    target: str | os.PathLike,
    nodes: list[str] | None = None,
    block_size: int = 32,
    op_types: tuple[str, ...] = ("MatMul",),
) -> Path:
    """Weight-only block-wise 4-bit quantization of MatMul nodes (ONNX Runtime's MatMulNBits) and, with "Gather" in
    ``op_types``, of embedding lookups (GatherBlockQuantized, blocks along the hidden axis): all, or ``nodes``."""
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size,
        is_symmetric=True,
        op_types_to_quantize=tuple(op_types),
        quant_format=QuantFormat.QOperator,  # the only format with a 4-bit Gather
    )
    model = onnx.load(str(source))
    # the default quantizer ignores nodes_to_include (onnxruntime 1.32), so the selection is made by exclusion
    exclude = (
        None
        if nodes is None
        else [n.name for n in model.graph.node if n.op_type in op_types and n.name not in set(nodes)]
    )
    q = MatMulNBitsQuantizer(model, nodes_to_exclude=exclude, algo_config=config)
    with quiet_onnxruntime():
        q.process()
    q.model.save_model_to_file(str(target), False)
    return Path(target)


def gemm_as_matmul(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """The exporter writes a head's dense layers (on one token: 2-D) as Gemm; ONNX Runtime's int8 quantizer turns
    them into MatMul + Add itself, its 4-bit quantizer does not. Doing it first makes them plannable matrices."""
    from onnxruntime.quantization.onnx_model import ONNXModel

    model = ONNXModel(onnx.load(str(source)))
    model.replace_gemm_with_matmul()
    onnx.save(model.model, str(target))
    return Path(target)


def convert_fp16(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """fp16 weights and compute with fp32 inputs/outputs (for CUDA; CPUs gain nothing from it)."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    m = OnnxModel(onnx.load(str(source)))
    m.convert_float_to_float16(keep_io_types=True)
    m.save_model_to_file(str(target))
    return Path(target)


def int4_format(block: int) -> str:
    """A plan's name for int4 in blocks of ``block`` (plain "int4" is the export's default block size)."""
    return f"int4/{block}"


def int4_block(fmt: str, default: int) -> int | None:
    """The block size of an int4 plan entry (None: not int4)."""
    if fmt == "int4":
        return default
    if fmt.startswith("int4/"):
        return int(fmt.split("/", 1)[1])
    return None


def apply_plan(
    source: str | os.PathLike,
    target: str | os.PathLike,
    plan: dict[str, str],
    block_size: int = 32,
    per_channel: bool = True,
    table_block_size: int | None = None,
    calibration: Calibration | None = None,
    keep_fp32: Sequence[str] = (),
) -> Path:
    """Write ``source`` with each weight node in its planned precision (node name -> fp32, int8, int4 or int4/B for
    blocks of B; MatMul and Attention nodes the plan does not name: int8, except those in ``keep_fp32``, the user's
    ``--exclude-node``; embedding lookups it does not name: fp32).
    Plain int4 tables use ``table_block_size`` (default: ``block_size``): a table row is looked up, not multiplied,
    so it can take coarser blocks than a matrix at less cost. With ``calibration`` the int4 matrices are rounded
    by GPTQ on its inputs (:mod:`axformer.export.gptq`), else to the nearest level; tables always to the nearest.
    """
    target = Path(target)
    tmp = target.with_name(target.stem + ".int4-stage.onnx")
    fp32 = [n for n, p in plan.items() if p == "fp32"] + [n for n in keep_fp32 if n not in plan]
    ops = {n.name: n.op_type for n in onnx.load(str(source), load_external_data=False).graph.node}
    groups: dict[tuple[str, int], list[str]] = {}  # one quantizer pass per op and block size
    for n, p in plan.items():
        block = int4_block(p, (table_block_size or block_size) if ops[n] == "Gather" else block_size)
        if block is not None:
            groups.setdefault((ops[n], block), []).append(n)
    stage = source
    stages = []
    matrices = {n: block for (op, block), nodes in groups.items() if op == "MatMul" for n in nodes}
    if calibration is not None and matrices:
        stages.append(tmp.with_name(f"{tmp.stem}-gptq.onnx"))
        stage = calibration.round_matrices(stage, stages[-1], matrices)
    for (op, block), nodes in sorted(groups.items()):
        stages.append(tmp.with_name(f"{tmp.stem}-{op}-{block}.onnx"))
        stage = quantize_int4(stage, stages[-1], nodes, block, op_types=(op,))
    tables = [n for n, p in plan.items() if p == "int8" and ops.get(n) in EMBEDDING_OPS]
    op_types = DEFAULT_INT8_OPS + tuple(sorted({ops[n] for n in tables}))
    if tables:  # only the planned tables: a Gather the plan does not name (shapes, other lookups) stays as it is
        fp32 = fp32 + [n for n, op in ops.items() if op in EMBEDDING_OPS and n not in set(tables)]
    quantize_int8(stage, target, per_channel, op_types, exclude=fp32)
    for path in stages:
        path.unlink(missing_ok=True)
    return target
