"""Batched PyTorch inference over a tokenised split: logits, per-example losses, predictions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from axformer.data.batching import Encoded, collate, sorted_batches


@dataclass
class Outputs:
    logits: np.ndarray  # (n, num_labels), in the split's order
    losses: np.ndarray  # (n,) per-example loss: cross-entropy, or squared error for regression

    @property
    def mean_loss(self) -> float:
        return float(self.losses.mean())

    def predictions(self, regression: bool) -> np.ndarray:
        return predictions(self.logits, regression)


def predictions(logits: np.ndarray, regression: bool) -> np.ndarray:
    """Class ids, scores, or (a regression onto vectors: embeddings) the vectors themselves."""
    if not regression:
        return logits.argmax(-1)
    return logits[:, 0] if logits.shape[-1] == 1 else logits


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    """The loss the model is trained with, per example: the quantity AxFormer's search compares.

    A regression onto vectors (an embedding model against the original's embeddings) costs ``1 - cosine``."""
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
        if logits is None:
            logits = np.zeros((n, out.shape[-1]), dtype=np.float32)
        logits[idx] = out.float().cpu().numpy()
        if with_loss:
            losses[idx] = per_example_loss(out, labels, regression).cpu().numpy()
    return Outputs(logits if logits is not None else np.zeros((0, 1), np.float32), losses)
