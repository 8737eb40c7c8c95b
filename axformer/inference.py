"""Batched PyTorch inference over a tokenised split: logits, per-example losses, predictions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from axformer.data.batching import Encoded, QAEncoded, collate, sorted_batches


@dataclass
class Outputs:
    logits: np.ndarray  # (n, num_labels), in the split's order; QA: (windows, tokens, 2) start and end logits
    losses: np.ndarray  # (n,) per-example loss: cross-entropy, or squared error for regression
    windows: QAEncoded | None = None  # QA: which question each window belongs to, and its offsets

    @property
    def mean_loss(self) -> float:
        return float(self.losses.mean())

    def predictions(self, regression: bool) -> np.ndarray:
        return predictions(self.logits, regression)


SPAN_PAD = -1e4  # the logit of a padding position in a stored window


def store_logits(logits: np.ndarray | None, idx, out: np.ndarray, n: int, width: int) -> np.ndarray:
    """Write a batch's logits into the split's array (made on the first batch): rows ``idx``; span logits
    (batch, tokens, 2) padded to ``width`` tokens with a logit no span takes."""
    if logits is None:
        span = out.ndim == 3
        shape = (n, width, out.shape[-1]) if span else (n, out.shape[-1])
        logits = np.full(shape, SPAN_PAD if span else 0.0, dtype=np.float32)
    if out.ndim == 3:
        logits[idx, : out.shape[1]] = out
    else:
        logits[idx] = out
    return logits


def predictions(logits: np.ndarray, regression: bool) -> np.ndarray:
    """Class ids, scores, or (a regression onto vectors: embeddings) the vectors themselves."""
    if not regression:
        return logits.argmax(-1)
    return logits[:, 0] if logits.shape[-1] == 1 else logits


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    """The loss the model is trained with, per example: the quantity AxFormer's search compares.

    A regression onto vectors (an embedding model against the original's embeddings) costs ``1 - cosine``. Span
    logits (batch, tokens, 2) against (start, end) positions cost the mean of the two cross-entropies, as
    transformers' QA heads are trained."""
    if logits.dim() == 3:
        start = F.cross_entropy(logits[..., 0].float(), labels[:, 0], reduction="none")
        return (start + F.cross_entropy(logits[..., 1].float(), labels[:, 1], reduction="none")) / 2
    if regression and logits.shape[-1] > 1:
        return 1.0 - F.cosine_similarity(logits.float(), labels.float(), dim=-1)
    if regression:
        return (logits[:, 0].float() - labels.float()) ** 2
    return F.cross_entropy(logits.float(), labels, reduction="none")


@torch.inference_mode()
def run_model(
    model,
    enc: Encoded,
    regression: bool,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: str | None = None,
    with_loss: bool = True,
) -> Outputs:
    """Logits (and, unless ``with_loss`` is False for unlabelled inputs, per-example losses) of ``enc``."""
    model.eval()
    n = len(enc)
    logits = None
    losses = np.zeros(n, dtype=np.float32)
    batches = sorted_batches(enc.lengths, batch_size)
    for idx in tqdm(batches, desc=progress, disable=progress is None, leave=False):
        batch = collate(enc, idx, device)
        labels = batch.pop("labels")
        out = model(**batch).logits
        logits = store_logits(logits, idx, out.float().cpu().numpy(), n, int(enc.lengths.max()))
        if with_loss:
            losses[idx] = per_example_loss(out, labels, regression).cpu().numpy()
    windows = enc if isinstance(enc, QAEncoded) else None
    return Outputs(logits if logits is not None else np.zeros((0, 1), np.float32), losses, windows)
