"""Paired statistics of a candidate against the original model on the same examples.

The certificate asks "how much worse is the optimized model than the original, on examples no decision
used?". Both models are scored on the *same* examples, so the comparison is paired: resampling examples
(not models) gives a confidence interval for the difference of any metric (F1, MCC and Pearson are not
means of per-example values, so the bootstrap, not a t-interval, is the general tool); the standard error
of a mean per-example difference is what the accuracy goal's paired rule tests against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from axformer.errors import AxformerError
from axformer.tasks.metrics import compute_metrics, row_cosines


@dataclass
class PairedDifference:
    """``candidate - original`` of one metric, in points, with a bootstrap confidence interval."""

    metric: str
    original: float
    candidate: float
    difference: float  # candidate - original, on all examples
    low: float  # confidence interval of the difference (percentile bootstrap over examples)
    high: float
    confidence: float
    examples: int
    resamples: int


def paired_bootstrap(
    metrics: tuple[str, ...] | list[str],
    labels: np.ndarray,
    original: np.ndarray,
    candidate: np.ndarray,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, PairedDifference]:
    """Per metric, the candidate's difference to the original with a paired percentile-bootstrap interval.

    ``original`` and ``candidate`` are predictions (class ids or regression scores) on the same examples,
    in the same order; every resample draws the same example indices for both models.
    """
    labels, original, candidate = np.asarray(labels), np.asarray(original), np.asarray(candidate)
    n = len(labels)
    rng = np.random.default_rng(seed)
    vector = labels.ndim > 1  # targets are embeddings: the metrics summarise each example's cosine to its target
    if vector:
        original, candidate = row_cosines(labels, original), row_cosines(labels, candidate)
        point_o, point_c = _cosine_stats(metrics, original), _cosine_stats(metrics, candidate)
    else:
        point_o = compute_metrics(metrics, labels, original)
        point_c = compute_metrics(metrics, labels, candidate)
    diffs = {m: np.empty(resamples) for m in metrics}
    for start in range(0, resamples, 250):  # resamples in blocks, every metric vectorised over the block
        idx = rng.integers(0, n, size=(min(250, resamples - start), n))
        if vector:
            mo, mc = _cosine_stats(metrics, original[idx]), _cosine_stats(metrics, candidate[idx])
        else:
            mo = resampled_metrics(metrics, labels[idx], original[idx])
            mc = resampled_metrics(metrics, labels[idx], candidate[idx])
        for m in metrics:
            diffs[m][start : start + len(idx)] = mc[m] - mo[m]
    tail = 100 * (1 - confidence) / 2
    return {
        m: PairedDifference(
            metric=m,
            original=point_o[m],
            candidate=point_c[m],
            difference=point_c[m] - point_o[m],
            low=float(np.percentile(diffs[m], tail)),
            high=float(np.percentile(diffs[m], 100 - tail)),
            confidence=confidence,
            examples=n,
            resamples=resamples,
        )
        for m in metrics
    }


def paired_bootstrap_means(
    scores: dict[str, tuple[np.ndarray, np.ndarray]],
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, PairedDifference]:
    """The same paired percentile bootstrap for metrics that are means of per-example scores in points (SQuAD's
    exact match and F1 per question): ``scores`` maps each metric to (original, candidate) per example."""
    n = len(next(iter(scores.values()))[0])
    rng = np.random.default_rng(seed)
    diffs = {m: np.empty(resamples) for m in scores}
    for start in range(0, resamples, 250):
        idx = rng.integers(0, n, size=(min(250, resamples - start), n))
        for m, (o, c) in scores.items():
            diffs[m][start : start + len(idx)] = (np.asarray(c)[idx] - np.asarray(o)[idx]).mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    return {
        m: PairedDifference(
            metric=m,
            original=float(np.mean(o)),
            candidate=float(np.mean(c)),
            difference=float(np.mean(c) - np.mean(o)),
            low=float(np.percentile(diffs[m], tail)),
            high=float(np.percentile(diffs[m], 100 - tail)),
            confidence=confidence,
            examples=n,
            resamples=resamples,
        )
        for m, (o, c) in scores.items()
    }


def _cosine_stats(metrics, cosines: np.ndarray) -> dict:
    """``cosine`` (mean) and ``cosine_p5`` (5th percentile) of per-example cosines, in points, along the last
    axis (one value, or one per resample)."""
    stats_ = {"cosine": lambda c: c.mean(axis=-1), "cosine_p5": lambda c: np.percentile(c, 5, axis=-1)}
    unknown = [m for m in metrics if m not in stats_]
    if unknown:
        raise AxformerError(f"metric {unknown[0]!r} does not apply to embedding targets; expected cosine or cosine_p5")
    return {m: 100.0 * stats_[m](cosines) for m in metrics}


def paired_standard_error(original: np.ndarray, candidate: np.ndarray) -> float:
    """Standard error of the mean per-example difference (candidate - original): sd(d) / sqrt(n)."""
    d = np.asarray(candidate, dtype=np.float64) - np.asarray(original, dtype=np.float64)
    return float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")


def resampled_metrics(metrics, labels: np.ndarray, predictions: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of every resample at once (rows of ``labels``/``predictions``), in points, with the
    definitions of :mod:`axformer.tasks.metrics` (tested equal to them): a thousand scikit-learn calls
    per certificate would cost seconds, these cost milliseconds."""
    out = {}
    classes = None
    if any(m in ("mcc", "f1_macro") for m in metrics):
        classes = np.union1d(np.unique(labels), np.unique(predictions))
    for m in metrics:
        if m == "accuracy":
            out[m] = 100.0 * (labels == predictions).mean(axis=1)
        elif m == "f1":
            tp = ((predictions == 1) & (labels == 1)).sum(axis=1)
            fp = ((predictions == 1) & (labels != 1)).sum(axis=1)
            fn = ((predictions != 1) & (labels == 1)).sum(axis=1)
            denom = 2 * tp + fp + fn
            out[m] = 100.0 * np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
        elif m in ("mcc", "f1_macro"):
            k = len(classes)
            yi, pi = np.searchsorted(classes, labels), np.searchsorted(classes, predictions)
            rows = np.repeat(np.arange(len(labels)), labels.shape[1])
            cm = np.zeros((len(labels), k, k))
            np.add.at(cm, (rows, yi.ravel(), pi.ravel()), 1)
            if m == "mcc":  # Gorodkin's multi-class MCC, as scikit-learn computes it
                t, p = cm.sum(axis=2), cm.sum(axis=1)
                c = np.trace(cm, axis1=1, axis2=2)
                s = cm.sum(axis=(1, 2))
                cov_tp = c * s - (t * p).sum(axis=1)
                cov_pp = s**2 - (p * p).sum(axis=1)
                cov_tt = s**2 - (t * t).sum(axis=1)
                denom = np.sqrt(cov_pp * cov_tt)
                out[m] = 100.0 * np.where(denom > 0, cov_tp / np.where(denom > 0, denom, 1), 0.0)
            else:  # macro F1 over the classes present in that resample's labels or predictions
                tp = np.diagonal(cm, axis1=1, axis2=2)
                denom = cm.sum(axis=2) + cm.sum(axis=1)
                f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)
                out[m] = 100.0 * f1.sum(axis=1) / np.maximum((denom > 0).sum(axis=1), 1)
        elif m in ("pearson", "spearman"):
            y, p = labels.astype(np.float64), predictions.astype(np.float64)
            if m == "spearman":
                y, p = stats.rankdata(y, axis=1), stats.rankdata(p, axis=1)
            y = y - y.mean(axis=1, keepdims=True)
            p = p - p.mean(axis=1, keepdims=True)
            denom = np.sqrt((y * y).sum(axis=1) * (p * p).sum(axis=1))
            out[m] = 100.0 * np.where(denom > 0, (y * p).sum(axis=1) / np.where(denom > 0, denom, 1), 0.0)
        else:
            out[m] = np.array([compute_metrics([m], a, b)[m] for a, b in zip(labels, predictions)])
    return out
