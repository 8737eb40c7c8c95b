"""Metrics on inputs whose values are known by hand, and agreement with scikit-learn/scipy."""

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from axformer.errors import AxformerError
from axformer.tasks.metrics import compute_metrics

Y = np.array([1, 1, 1, 0, 0, 0, 1, 0])
P = np.array([1, 1, 0, 0, 0, 1, 1, 0])


def test_known_values():
    m = compute_metrics(("accuracy", "f1", "mcc", "f1_macro"), Y, P)
    # tp=3 fp=1 fn=1 tn=3
    assert m["accuracy"] == pytest.approx(75.0)
    assert m["f1"] == pytest.approx(75.0)
    assert m["mcc"] == pytest.approx(50.0)  # (9 - 1) / sqrt(4*4*4*4)
    assert m["f1_macro"] == pytest.approx(75.0)


def test_agrees_with_sklearn_and_scipy():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    m = compute_metrics(("accuracy", "f1_macro", "mcc"), y, p)
    assert m["accuracy"] == pytest.approx(100 * skm.accuracy_score(y, p))
    assert m["f1_macro"] == pytest.approx(100 * skm.f1_score(y, p, average="macro"))
    assert m["mcc"] == pytest.approx(100 * skm.matthews_corrcoef(y, p))
    ys, ps = rng.normal(size=100), rng.normal(size=100)
    r = compute_metrics(("pearson", "spearman"), ys, ps)
    assert r["pearson"] == pytest.approx(100 * stats.pearsonr(ys, ps)[0])
    assert r["spearman"] == pytest.approx(100 * stats.spearmanr(ys, ps)[0])


def test_regression_known_values():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert compute_metrics(("pearson",), y, 2 * y + 1)["pearson"] == pytest.approx(100.0)
    assert compute_metrics(("spearman",), y, y**3)["spearman"] == pytest.approx(100.0)
    assert compute_metrics(("pearson",), y, np.ones(4))["pearson"] == 0.0  # constant predictions


def test_errors():
    with pytest.raises(AxformerError, match="unknown metric 'bleu'"):
        compute_metrics(("bleu",), Y, P)
    with pytest.raises(AxformerError, match="8 labels but 3 predictions"):
        compute_metrics(("accuracy",), Y, P[:3])
