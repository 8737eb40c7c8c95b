"""Acceptance rules: when does the search keep a candidate change?

Each rule decides on a complete evaluation (``accepts``) and can tell, from a
partial one, that a candidate can no longer pass (``hopeless``), which lets the
evaluation engine stop early without changing any decision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from axformer.analysis.engine import CandidateResult, PartialResult


@dataclass
class AxFormerAcceptance:
    """AxFormer's two-part test, exactly as published.

    Keep a candidate only if (1) its mean held-out loss is below ``min_loss``
    (the best loss so far, starting at the unpruned model's) and (2) more than
    ``fraction`` of the examples have a loss no worse than their loss under the
    *unpruned* model (``baseline_losses``, fixed for the whole search).
    """

    baseline_losses: np.ndarray
    min_loss: float
    fraction: float = 0.5

    name = "axformer"

    @property
    def required_not_worse(self) -> float:
        return self.fraction * len(self.baseline_losses)

    def not_worse(self, losses: np.ndarray) -> np.ndarray:
        return losses <= self.baseline_losses

    def accepts(self, result: CandidateResult) -> bool:
        if not result.complete:
            return False
        return result.mean_loss < self.min_loss and int(self.not_worse(result.losses).sum()) > self.required_not_worse

    def hopeless(self, partial: PartialResult) -> bool:
        n = len(partial.losses)
        done = partial.done
        # losses are >= 0, so the loss so far divided by n bounds the final mean from below
        if float(partial.losses[done].sum()) / n >= self.min_loss:
            return True
        best_possible = int((partial.losses[done] <= self.baseline_losses[done]).sum()) + int((~done).sum())
        return best_possible <= self.required_not_worse

    def accepted(self, mean_loss: float) -> None:
        """Record an accepted candidate: its loss becomes the bar to beat."""
        self.min_loss = mean_loss


@dataclass
class MetricTolerance:
    """Constraint mode: keep a candidate while the held-out main metric stays at or above ``threshold``.

    Early stopping is exact for accuracy (each remaining example adds at most
    one correct answer); for other metrics the whole split is evaluated.
    """

    metric: str
    threshold: float
    labels: np.ndarray
    regression: bool = False

    name = "tolerance"

    def accepts(self, result: CandidateResult) -> bool:
        return result.complete and result.metrics.get(self.metric, -np.inf) >= self.threshold

    def hopeless(self, partial: PartialResult) -> bool:
        if self.metric != "accuracy" or self.regression:
            return False
        done = partial.done
        correct = int((partial.logits[done].argmax(-1) == self.labels[done]).sum())
        best = 100.0 * (correct + int((~done).sum())) / len(done)
        return best < self.threshold
