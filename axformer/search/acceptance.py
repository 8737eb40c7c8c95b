"""Acceptance rules: when does the search keep a candidate change?

Each rule decides on a complete evaluation (``accepts``) and can tell, from a
partial one, that a candidate can no longer pass (``hopeless``), which lets the
evaluation engine stop early without changing any decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from axformer.evaluation.engine import CandidateResult, PartialResult
from axformer.evaluation.paired import paired_standard_error


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

    def accepted(self, mean_loss: float, losses: np.ndarray | None = None) -> None:
        """Record an accepted candidate: its loss becomes the bar to beat (per-example losses stay the
        unpruned model's, as published)."""
        self.min_loss = mean_loss

    def describe(self) -> str:
        return (
            f"axformer (mean loss below the best so far, and more than {self.fraction:.0%} of examples not worse "
            "than the unpruned model)"
        )


@dataclass
class PairedImprovement:
    """The accuracy goal's default: keep a change only if it really improves the model it changes.

    A candidate must improve on the *current* model (the original, then each accepted state in turn) by more
    than noise, with ``z`` the one-sided normal quantile at ``alpha / trials`` (Bonferroni over the search's
    most possible trials), so that a search of a hundred trials does not accept the few that look good by chance:

    - the mean paired per-example loss improvement ``current loss - candidate loss`` exceeds ``z`` standard
      errors, and
    - for classification (``labels`` given), it also gives more right answers than it takes away: among the
      deciding examples whose correctness the change flips, the share it fixes is significant by the exact
      one-sided sign test (McNemar's) at the same ``alpha / trials``. A loss test alone accepts changes that
      only make the model more confident (the loss of the many right answers falls, the few wrong ones get
      worse) and flip answers at random: "more accurate" is a claim about answers, so answers are tested.

    Each step is tested against the state it modifies, not against the original: tested against the original,
    one real improvement lets every later change that merely does not undo it through (measured: MRPC's search
    kept 22 changes, +1.3 F1 on the deciding examples, -1.8 on dev). With nothing that clears it, the result is
    "nothing to remove", which is the honest answer.

    On a resumed search the accepted decisions are replayed from the log without their per-example results;
    ``current`` re-evaluates the accepted state once (per-example losses and logits) when the next fresh
    candidate is judged.
    """

    baseline_losses: np.ndarray
    min_loss: float
    alpha: float = 0.05
    trials: int = 1
    labels: np.ndarray | None = None  # classification: the deciding examples' labels (the answers test)
    baseline_logits: np.ndarray | None = None
    current: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None
    _stale: bool = False
    _last: tuple[np.ndarray, np.ndarray] | None = None  # the latest candidate judged: (losses, logits)

    name = "paired"

    @property
    def level(self) -> float:
        return self.alpha / max(self.trials, 1)

    @property
    def z(self) -> float:
        from scipy import stats

        return float(stats.norm.ppf(1 - self.level))

    def accepts(self, result: CandidateResult) -> bool:
        if not result.complete or not result.mean_loss < self.min_loss:
            return False
        if self._stale and self.current is not None:
            self.baseline_losses, self.baseline_logits = self.current()
            self._stale = False
        self._last = (result.losses, result.logits)
        improvement = float((self.baseline_losses.astype(np.float64) - result.losses).mean())
        if not improvement > self.z * paired_standard_error(result.losses, self.baseline_losses):
            return False
        return self.labels is None or self.answers_p_value(result.logits) < self.level

    def answers_p_value(self, logits: np.ndarray) -> float:
        """One-sided exact sign test on the answers the change flips: P(at least this many fixed | no effect)."""
        from scipy import stats

        now = self.baseline_logits.argmax(-1) == self.labels
        then = np.asarray(logits).argmax(-1) == self.labels
        fixed, broken = int((then & ~now).sum()), int((now & ~then).sum())
        if fixed + broken == 0:
            return 1.0
        return float(stats.binom.sf(fixed - 1, fixed + broken, 0.5))

    def hopeless(self, partial: PartialResult) -> bool:
        # losses are >= 0, so the loss so far divided by n bounds the final mean from below
        return float(partial.losses[partial.done].sum()) / len(partial.losses) >= self.min_loss

    def accepted(self, mean_loss: float, losses: np.ndarray | None = None) -> None:
        """The accepted candidate becomes the model the next change must improve on."""
        self.min_loss = mean_loss
        if (
            losses is not None
            and self._last is not None
            and (self._last[0] is losses or np.array_equal(self._last[0], losses))
        ):
            self.baseline_losses, self.baseline_logits = self._last
            self._stale = False
        elif losses is not None:
            self.baseline_losses = np.asarray(losses)
            self._stale = self.labels is not None  # its answers are not known: evaluated when next needed
        else:
            self._stale = True

    def describe(self) -> str:
        answers = (
            " and more answers fixed than broken by the exact sign test at the same level" if self.labels is not None
            else ""
        )  # fmt: skip
        return (
            f"paired (each change's mean per-example loss improvement over the model it changes above "
            f"{self.z:.2f} standard errors{answers}: one-sided, alpha {self.alpha} over {self.trials} trials)"
        )


@dataclass
class MetricTolerance:
    """Constraint mode: keep a candidate while every guarded held-out metric stays at or above its threshold.

    Guarding every metric of the task, not just the main one, is what stops a
    search from "passing" by collapsing towards the majority class: on MRPC a
    model that answers "paraphrase" for nearly everything keeps F1 within a
    point while accuracy falls by four. ``max_loss`` optionally bounds the mean
    held-out loss too: the loss moves before the metric does, and on SST-2 a
    rising held-out loss was the first sign of a drop on the (longer) dev
    sentences that the held-out accuracy did not show.

    Early stopping is exact for accuracy (each remaining example adds at most
    one correct answer) and for the loss bound (losses are non-negative); for
    other metrics the whole split is evaluated.
    """

    thresholds: dict[str, float]
    labels: np.ndarray
    regression: bool = False
    max_loss: float | None = None

    name = "tolerance"

    def accepts(self, result: CandidateResult) -> bool:
        if not result.complete:
            return False
        if self.max_loss is not None and result.mean_loss > self.max_loss:
            return False
        return all(result.metrics.get(m, -np.inf) >= t for m, t in self.thresholds.items())

    def hopeless(self, partial: PartialResult) -> bool:
        done = partial.done
        if self.max_loss is not None and float(partial.losses[done].sum()) / len(done) > self.max_loss:
            return True
        if "accuracy" not in self.thresholds or self.regression:
            return False
        correct = int((partial.logits[done].argmax(-1) == self.labels[done]).sum())
        best = 100.0 * (correct + int((~done).sum())) / len(done)
        return best < self.thresholds["accuracy"]

    def describe(self) -> str:
        pool = ("agreement", "cosine", "cosine_p5")  # measured against the original on the fidelity pool
        parts = [f"{'fidelity-pool' if m in pool else 'held-out'} {m} >= {t:.2f}" for m, t in self.thresholds.items()]
        if self.max_loss is not None:
            parts.append(f"mean held-out loss <= {self.max_loss:.4f}")
        return "tolerance: " + ", ".join(parts)
