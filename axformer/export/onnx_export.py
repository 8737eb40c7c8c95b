"""ONNX export with dynamic batch and sequence axes, for any adapter and any per-layer structure."""

from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel

from axformer.errors import AxformerError
from axformer.models.span_head import SPAN_OUTPUTS

OPSET = 17


def model_input_names(model: PreTrainedModel) -> list[str]:
    """The inputs the model's forward takes, in the order ONNX will list them."""
    declared = getattr(model, "input_names", None)  # an embedder: what its transformer takes
    if declared is not None:
        return list(declared)
    params = inspect.signature(model.forward).parameters
    return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in params]


def output_names(model) -> list[str]:
    """``logits`` for a task head; a span (QA) head gives ``start_logits`` and ``end_logits`` [batch, sequence];
    an embedding model's graph gives ``sentence_embedding`` (sentence-transformers' name for the pooled,
    normalised output)."""
    from axformer.embedding.model import SentenceEmbedder
    from axformer.models.span_head import is_span_model

    if isinstance(model, SentenceEmbedder):
        return ["sentence_embedding"]
    return list(SPAN_OUTPUTS) if is_span_model(model) else ["logits"]


class _LogitsOnly(torch.nn.Module):
    def __init__(self, model: PreTrainedModel, names: list[str], span: bool = False) -> None:
        super().__init__()
        self.model, self.names, self.span = model, names, span

    def forward(self, *inputs):
        out = self.model(**dict(zip(self.names, inputs)))
        return (out.start_logits, out.end_logits) if self.span else out.logits


def export_onnx(model: PreTrainedModel, path: str | os.PathLike, opset: int = OPSET, seq_len: int = 16) -> Path:
    """Write ``model`` to ``path`` as ONNX (inputs: int64 [batch, sequence]; output: logits [batch, labels], a
    span head's start_logits and end_logits [batch, sequence], or an embedding model's sentence_embedding
    [batch, dimension]).

    Uses the TorchScript-based exporter, and eager attention (instead of SDPA)
    while tracing: those graphs are the ones ONNX Runtime's transformer
    optimizer knows how to fuse. Approximate attention is kept as it is.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = model_input_names(model)
    was_training = model.training
    impl = getattr(model.config, "_attn_implementation", None)
    if impl == "sdpa":
        model.set_attn_implementation("eager")
    model = model.eval()
    device = next(model.parameters()).device
    vocab = getattr(model.config, "vocab_size", 100)
    dummy = {
        "input_ids": torch.randint(3, min(vocab, 1000), (2, seq_len), device=device),
        "attention_mask": torch.ones(2, seq_len, dtype=torch.long, device=device),
        "token_type_ids": torch.zeros(2, seq_len, dtype=torch.long, device=device),
    }
    dynamic = {n: {0: "batch", 1: "sequence"} for n in names}
    outputs = output_names(model)
    span = outputs == list(SPAN_OUTPUTS)
    dynamic.update({o: {0: "batch", 1: "sequence"} if span else {0: "batch"} for o in outputs})
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # the wrapper must be in eval mode too: the exporter restores the *wrapper's* mode on the
            # whole module tree afterwards, which would silently switch dropout on in the caller's model
            torch.onnx.export(
                _LogitsOnly(model, names, span).eval(),
                tuple(dummy[n] for n in names),
                str(tmp),
                input_names=names,
                output_names=outputs,
                dynamic_axes=dynamic,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            raise AxformerError(
                f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from None
        finally:
            model.train(was_training)
            if impl == "sdpa":
                model.set_attn_implementation("sdpa")
    tmp.replace(path)
    return path


def onnx_session(path: str | os.PathLike, threads: int | None = None, providers: list[str] | None = None):
    import onnxruntime as ort

    from axformer.runtime.backends import inference_session

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return inference_session(path, opts, providers or ["CPUExecutionProvider"])


def onnx_logits(session, batch: dict[str, torch.Tensor]) -> np.ndarray:
    wanted = {i.name for i in session.get_inputs()}
    feed = {k: v.cpu().numpy().astype(np.int64) for k, v in batch.items() if k in wanted}
    return session.run([session.get_outputs()[0].name], feed)[0]
