"""SQuAD v1.1's official exact match and F1, in points.

The normalisation is the official evaluation script's (lower case, punctuation and the articles a/an/the
removed, whitespace collapsed), and each question scores the best over its gold answers: figures comparable
with every published SQuAD number, which is the point of computing them exactly this way.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def per_question(predictions: list[str], golds: list[tuple[str, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """Exact match and F1 of each question (0..1), each the maximum over that question's gold answers."""
    em = np.array([max(exact_match(p, g) for g in gs) for p, gs in zip(predictions, golds)], dtype=np.float64)
    f1 = np.array([max(token_f1(p, g) for g in gs) for p, gs in zip(predictions, golds)], dtype=np.float64)
    return em, f1


def squad_scores(predictions: list[str], golds: list[tuple[str, ...]]) -> dict[str, float]:
    em, f1 = per_question(predictions, golds)
    return {"exact_match": 100.0 * float(em.mean()), "f1": 100.0 * float(f1.mean())}


def answer_metrics(windows, logits: np.ndarray) -> dict[str, float]:
    """SQuAD's scores of span logits (windows, tokens, 2) over the questions of ``windows`` (a ``QAEncoded``
    with its gold answers): every evaluation of a QA model, in every stage, scores through here."""
    from axformer.data.qa_windows import best_answers

    if windows.answers is None:
        raise ValueError("windows without gold answers cannot be scored")
    found = best_answers(windows, windows.contexts, logits[..., 0], logits[..., 1])
    return squad_scores([text for text, _ in found], windows.answers)
