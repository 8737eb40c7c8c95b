"""A PyTorch model as the default artifact would run it: exported, fused, int8, in an ONNX Runtime session.

The search prices latency in the runtime the model will be served in when asked to (``--latency-runtime
onnxruntime-int8``): int8 kernels shrink the matrix products by a different factor on different CPUs (VNNI or
not) while the embeddings, LayerNorms, softmax and the request's fixed costs stay, so a structure that is 1.7x
faster in PyTorch fp32 measured 1.93x over ONNX Runtime int8 of the original on an AVX2 EPYC and 1.47x on an
AVX-512 VNNI one (docs/promises.md, runs 11-12).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from axformer.export.fusion import fuse
from axformer.export.onnx_export import export_onnx, onnx_session
from axformer.export.quantize import gemm_as_matmul, quantize_int8


def int8_graph(model, directory: str | Path, name: str = "model") -> Path:
    """``model`` (on the CPU) written to ``directory`` as the default int8 artifact's graph: the exporter's graph,
    ONNX Runtime's transformer fusions, dynamic int8 weights per channel. No precision check: a timing
    stand-in, not an artifact."""
    directory = Path(directory)
    cfg = model.config
    raw = export_onnx(model.cpu().eval(), directory / f"{name}-raw.onnx")
    fused = fuse(raw, directory / f"{name}-fused.onnx", cfg.model_type, cfg.hidden_size, cfg.num_attention_heads)
    matmul = gemm_as_matmul(fused.path, directory / f"{name}-matmul.onnx")
    return quantize_int8(matmul, directory / f"{name}-int8.onnx")


def session_call(path: Path, input_ids: np.ndarray, threads: int | None = None):
    """A no-argument function that runs one request of ``input_ids`` ([batch, tokens], no padding) through the
    graph at ``path``."""
    session = onnx_session(path, threads=threads)
    feed = {
        "input_ids": input_ids.astype(np.int64),
        "attention_mask": np.ones_like(input_ids, dtype=np.int64),
        "token_type_ids": np.zeros_like(input_ids, dtype=np.int64),
    }
    wanted = {i.name for i in session.get_inputs()}
    feed = {k: v for k, v in feed.items() if k in wanted}
    return lambda: session.run(None, feed)
