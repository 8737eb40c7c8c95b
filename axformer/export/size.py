"""Where the bytes of an ONNX artifact go: per part of the model (embeddings, encoder layers, head) and per format.

A size goal that counts parameters misses what matters on disk: an int4 matrix costs an eighth of an fp32
one, an embedding table of 30k rows can be half the model, and a graph has bytes of its own. This module
reads the written file, so every figure is what the artifact really holds.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import onnx

PARTS = ("embeddings", "encoder", "head", "other")
FORMATS = ("fp32", "fp16", "int8", "int4")
_INT4_OPS = {"MatMulNBits", "GatherBlockQuantized"}
_INT8_OPS = {
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "QAttention",
    "QEmbedLayerNormalization",
    "DequantizeLinear",
    "QGemm",
}
_EMBEDDING_OPS = {"Gather", "GatherBlockQuantized", "EmbedLayerNormalization", "QEmbedLayerNormalization"}
_ENCODER_OPS = {"Attention", "QAttention", "SkipLayerNormalization", "BiasGelu", "FastGelu", "Gelu"}
_LAYER = re.compile(r"(?:^|[/._])(?:layer|layers|block|blocks)[._/]?\d+", re.IGNORECASE)


def _part(node: onnx.NodeProto) -> str:
    name = node.name.lower()
    if node.op_type in _EMBEDDING_OPS or "embeddings" in name:
        return "embeddings"
    if any(k in name for k in ("classifier", "pooler", "pre_classifier", "score")):
        return "head"
    if node.op_type in _ENCODER_OPS or _LAYER.search(node.name) or "encoder" in name:
        return "encoder"
    return "other"


def _format(op_type: str, init: onnx.TensorProto) -> str:
    if op_type in _INT4_OPS:
        return "int4"
    if op_type in _INT8_OPS or init.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
        return "int8"
    if init.data_type == onnx.TensorProto.FLOAT16:
        return "fp16"
    return "fp32"


_GRAPH_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL)


def _nbytes(init: onnx.TensorProto) -> int:
    """The tensor's data, without its name (a name is graph, not weight)."""
    if init.raw_data:
        return len(init.raw_data)
    from onnx import numpy_helper

    return int(numpy_helper.to_array(init).nbytes)


def _is_weight(init: onnx.TensorProto) -> bool:
    """Integer tensors of at most a few values are shapes and indices: the graph's, not the model's weights."""
    n = 1
    for d in init.dims:
        n *= d
    return not (init.data_type in _GRAPH_TYPES and n <= 16)


def size_breakdown(path: str | os.PathLike) -> dict:
    """Bytes per part and format of the weights in ``path``, the file's total, and what the graph itself takes
    (nodes, tensor names, shape constants).

    An initializer used by several nodes is counted once, in the part of its first consumer; a quantized
    matrix's scales and zero points count in its format (they are what that format costs).
    """
    path = Path(path)
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    seen: set[str] = set()
    table = {p: dict.fromkeys(FORMATS, 0) for p in PARTS}
    for node in model.graph.node:
        for name in node.input:
            if name in inits and name not in seen:
                seen.add(name)
                if _is_weight(inits[name]):
                    table[_part(node)][_format(node.op_type, inits[name])] += _nbytes(inits[name])
    for name, init in inits.items():  # graph outputs or unused initializers
        if name not in seen and _is_weight(init):
            table["other"][_format("", init)] += _nbytes(init)
    return _summary(table, path.stat().st_size)


def _summary(table: dict[str, dict[str, int]], total: int) -> dict:
    weights = sum(sum(v.values()) for v in table.values())
    return {
        "file_bytes": total,
        "parts": {p: {f: b for f, b in v.items() if b} for p, v in table.items()},
        "part_bytes": {p: sum(v.values()) for p, v in table.items()},
        "format_bytes": {f: sum(table[p][f] for p in PARTS) for f in FORMATS},
        "graph_bytes": max(total - weights, 0),
    }


SERVING_SUFFIXES = (".onnx", ".safetensors", ".bin", ".model")
SERVING_FILES = {
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
}


def directory_bytes(directory: str | os.PathLike) -> int:
    """What serving the model needs: the weights, the config and the tokenizer files (not axformer's records,
    training logs, predictions or reports)."""
    root = Path(directory)
    files = [p for p in root.iterdir() if p.is_file()]
    if (root / "onnx").is_dir():  # sentence-transformers' layout keeps the graph under onnx/
        files += [p for p in (root / "onnx").iterdir() if p.is_file()]
    return sum(p.stat().st_size for p in files if p.suffix in SERVING_SUFFIXES or p.name in SERVING_FILES)


def checkpoint_breakdown(directory: str | os.PathLike) -> dict:
    """The same breakdown for a PyTorch checkpoint (``*.safetensors``), read from the file headers only."""
    from safetensors import safe_open

    table = {p: dict.fromkeys(FORMATS, 0) for p in PARTS}
    files = sorted(Path(directory).glob("*.safetensors"))
    dtype_format = {"F32": "fp32", "F16": "fp16", "BF16": "fp16", "I8": "int8", "U8": "int8"}
    for f in files:
        with safe_open(str(f), "np") as handle:
            for key in handle.keys():  # noqa: SIM118 (a safetensors handle is not a dict)
                sl = handle.get_slice(key)
                n = 1
                for d in sl.get_shape():
                    n *= d
                fmt = dtype_format.get(sl.get_dtype(), "fp32")
                size = n * {"fp32": 4, "fp16": 2, "int8": 1}[fmt]
                lower = key.lower()
                part = (
                    "embeddings"
                    if "embeddings" in lower
                    else "head"
                    if any(k in lower for k in ("classifier", "pooler", "score"))
                    else "encoder"
                    if _LAYER.search(key) or "encoder" in lower
                    else "other"
                )
                table[part][fmt] += size
    return _summary(table, sum(f.stat().st_size for f in files))


def breakdown_of(path: str | os.PathLike) -> dict:
    """The breakdown of a model directory: an exported artifact (``model.onnx``) or a PyTorch checkpoint."""
    from axformer.runtime.backends import is_onnx_artifact, onnx_file

    path = Path(path)
    out = size_breakdown(onnx_file(path)) if is_onnx_artifact(path) else checkpoint_breakdown(path)
    out["directory_bytes"] = directory_bytes(path)
    return out
