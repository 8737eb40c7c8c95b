"""One calling convention for PyTorch models and ONNX Runtime sessions.

Everything that runs a model (``evaluate``, the export validation, the
benchmark, :class:`~axformer.runtime.predictor.Predictor`) calls
``model(**batch).logits`` on padded int64 batches. :class:`OnnxModel` gives an
ONNX Runtime session that interface, so an exported artifact is scored by
exactly the code that scores the PyTorch model it came from.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from axformer.errors import AxformerError
from axformer.models.span_head import SPAN_OUTPUTS

ONNX_FILE = "model.onnx"
SENTENCE_ONNX_FILE = "onnx/model.onnx"  # sentence-transformers' ONNX layout (embedding artifacts)


def onnx_file(path: str | os.PathLike) -> Path:
    """The graph of an artifact directory: ``model.onnx`` (Optimum's layout) or ``onnx/model.onnx``
    (sentence-transformers'); a path to a file is itself."""
    path = Path(path)
    if not path.is_dir():
        return path
    sentence = path / SENTENCE_ONNX_FILE
    return sentence if sentence.is_file() and not (path / ONNX_FILE).is_file() else path / ONNX_FILE


def is_onnx_artifact(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and onnx_file(path).is_file()


def session_options(threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # ORT's notes about unused initializers are not the user's concern
    return opts


# ONNX Runtime's graph rewrites left out of a CPU session. SkipLayerNormFusion folds each residual Add and the
# LayerNormalization after it into one SkipLayerNormalization, whose CPU kernel (onnxruntime 1.32) is slower than the
# pair: 54 against 23 us at 50 tokens x 384, 2.7x at 128 tokens; without it MiniLM's int8 artifacts ran 1.07-1.27x
# faster at batch 1 (benchmarks/experiments/skip_layer_norm.md). The export writes the two ops unfused
# (axformer.export.fusion) and a session would fuse them again at load. CUDA keeps the fusion.
CPU_DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]


def inference_session(source: str | os.PathLike | bytes, options, providers: list[str]):
    """An ONNX Runtime session of ``source`` (a path or a serialized model) as every artifact is served."""
    import onnxruntime as ort

    source = source if isinstance(source, bytes) else str(source)
    if providers == ["CPUExecutionProvider"]:
        return ort.InferenceSession(source, options, providers=providers, disabled_optimizers=CPU_DISABLED_OPTIMIZERS)
    return ort.InferenceSession(source, options, providers=providers)


def providers_for(device: str | torch.device) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxModel:
    """An ONNX Runtime session behind the ``model(**batch).logits`` interface of a transformers model."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, device: str | torch.device = "cpu") -> None:
        path = onnx_file(path)
        if not path.is_file():
            raise AxformerError(f"ONNX model {path} does not exist")
        try:
            self.session = inference_session(path, session_options(threads), providers_for(device))
        except Exception as exc:
            raise AxformerError(
                f"cannot load ONNX model {path} (corrupt or not ONNX?): {str(exc).splitlines()[0][:200]}"
            ) from None
        self.path = path
        self.input_names = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        # logits, sentence_embedding, or a span head's start_logits and end_logits (stacked as logits)
        self.output_names = outputs if outputs[:2] == list(SPAN_OUTPUTS) else outputs[:1]
        self.output_name = self.output_names[0]
        self.training = False

    def eval(self) -> OnnxModel:
        return self

    def to(self, *_args, **_kwargs) -> OnnxModel:
        return self

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        out = self.session.run(
            self.output_names, {k: np.asarray(v, dtype=np.int64) for k, v in feed.items() if k in self.input_names}
        )
        return np.stack(out, axis=-1) if len(out) == 2 else out[0]

    def __call__(self, **batch) -> SimpleNamespace:
        from axformer.embedding.model import score_groups

        feed = {k: (v.cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        out = torch.from_numpy(np.ascontiguousarray(self.run(feed)))
        return SimpleNamespace(logits=score_groups(out, batch.get("group_size")))


def position_limit(config: dict) -> int | None:
    """How many tokens the position table takes (RoBERTa-style tables start after the padding index)."""
    positions = config.get("max_position_embeddings")
    if positions is None:
        return None
    return int(positions) - (2 if config.get("model_type") in ("roberta", "xlm-roberta", "camembert", "mpnet") else 0)


def max_input_length(path: str | os.PathLike) -> int:
    """Training's length (recorded with the model), capped by the position table: inputs are truncated to this."""
    from axformer.models.loading import read_config_json
    from axformer.models.record import ModelRecord

    limit = position_limit(read_config_json(path)) if (Path(path) / "config.json").is_file() else None
    recorded = ModelRecord.load(path).max_seq_length
    return recorded if limit is None else min(recorded, limit)


def load_runnable(
    path: str | os.PathLike,
    task=None,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    allow_pickle: bool = False,
):
    """A directory with ``model.onnx`` runs in ONNX Runtime; anything else loads as a PyTorch model."""
    if is_onnx_artifact(path):
        return OnnxModel(path, threads, device)
    from axformer.models.loading import load_model

    return load_model(path, task, allow_pickle=allow_pickle, device=device).eval()
