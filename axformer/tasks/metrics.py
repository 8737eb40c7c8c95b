"""Task metrics, computed by scikit-learn and scipy exactly as the benchmarks define them.

All metric values are reported in points (x100), as on the GLUE leaderboard, so
that tolerances such as ``--max-drop 1`` read as "one point".
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from axformer.errors import AxformerError


def _accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return skm.accuracy_score(y, p)


def _f1(y: np.ndarray, p: np.ndarray) -> float:
    # GLUE's F1 (MRPC, QQP) is the F1 of the positive class, label 1.
    return skm.f1_score(y, p, pos_label=1, average="binary", zero_division=0.0)


def _f1_macro(y: np.ndarray, p: np.ndarray) -> float:
    return skm.f1_score(y, p, average="macro", zero_division=0.0)


def _mcc(y: np.ndarray, p: np.ndarray) -> float:
    return skm.matthews_corrcoef(y, p)


def _pearson(y: np.ndarray, p: np.ndarray) -> float:
    if np.std(p) == 0 or np.std(y) == 0:
        return 0.0
    return float(stats.pearsonr(y, p)[0])


def _spearman(y: np.ndarray, p: np.ndarray) -> float:
    if np.std(p) == 0 or np.std(y) == 0:
        return 0.0
    return float(stats.spearmanr(y, p)[0])


def row_cosines(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per row, the cosine of ``p`` to ``y``."""
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    denom = np.linalg.norm(y, axis=1) * np.linalg.norm(p, axis=1)
    return (y * p).sum(1) / np.maximum(denom, 1e-12)


def _cosine(y: np.ndarray, p: np.ndarray) -> float:
    """Fidelity of an embedding model: mean cosine of its embeddings (``p``) to the original's (``y``)."""
    return float(row_cosines(y, p).mean())


def _cosine_p5(y: np.ndarray, p: np.ndarray) -> float:
    """The worst 5% of texts: the 5th percentile of the cosines to the original's embeddings."""
    return float(np.percentile(row_cosines(y, p), 5))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": _accuracy,
    "f1": _f1,
    "f1_macro": _f1_macro,
    "mcc": _mcc,
    "pearson": _pearson,
    "spearman": _spearman,
    "cosine": _cosine,
    "cosine_p5": _cosine_p5,
}

REGRESSION_METRICS = frozenset({"pearson", "spearman"})


def compute_metrics(
    names: tuple[str, ...] | list[str], labels: np.ndarray, predictions: np.ndarray
) -> dict[str, float]:
    """Metric name -> value in points. ``predictions`` are class ids or regression scores."""
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    if len(labels) != len(predictions):
        raise AxformerError(f"{len(labels)} labels but {len(predictions)} predictions")
    if len(labels) == 0:
        raise AxformerError("cannot compute metrics on an empty split")
    out = {}
    for name in names:
        try:
            fn = METRICS[name]
        except KeyError:
            raise AxformerError(f"unknown metric {name!r}; expected one of {', '.join(METRICS)}") from None
        out[name] = 100.0 * float(fn(labels, predictions))
    return out
