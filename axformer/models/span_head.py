"""Extractive QA models seen through the one interface every stage reads: ``model(**batch).logits``.

A transformers ``...ForQuestionAnswering`` model returns ``start_logits`` and ``end_logits``; with the hook
installed here its output also carries ``logits`` = both stacked, (batch, tokens, 2), so training, evaluation,
analysis and export handle a span head like any other head. The checkpoint itself stays transformers' own
(a hook is not saved): ``AutoModelForQuestionAnswering.from_pretrained(OUT)`` loads what axformer writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

QA_SUFFIX = "ForQuestionAnswering"
SPAN_OUTPUTS = ("start_logits", "end_logits")  # the ONNX outputs, as Optimum's ORTModelForQuestionAnswering reads them


@dataclass
class SpanLogits(ModelOutput):
    logits: torch.Tensor | None = None  # (batch, tokens, 2): start and end logits
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None


def _stack(module, args, output):
    if isinstance(output, SpanLogits) or getattr(output, "start_logits", None) is None:
        return None
    return SpanLogits(torch.stack([output.start_logits, output.end_logits], dim=-1), output.start_logits,
                      output.end_logits)  # fmt: skip


def is_span_model(net: torch.nn.Module) -> bool:
    return type(net).__name__.endswith(QA_SUFFIX)


def install_span_logits(net: torch.nn.Module) -> None:
    """Give a QA model's outputs ``.logits`` (idempotent)."""
    if is_span_model(net) and not getattr(net, "_axformer_span_logits", False):
        net.register_forward_hook(_stack)
        net._axformer_span_logits = True
