"""Decisions by fidelity: every candidate also judged by how often it agrees with the original model on a large
pool of unlabelled inputs.

A labelled held-out split of a few hundred examples measures a candidate's accuracy with a standard error of
one to two points: far too coarse to hold a one-point promise over a hundred decisions. Fidelity needs no
labels, so it can be measured on the training texts (tens of thousands on GLUE) and the user's own
``--calibration-texts``. For classification it bounds what matters: a model cannot lose more accuracy than
the share of inputs on which it changes its answer. The pool's labels are the original model's own
predictions, so the engine's "accuracy" on it *is* the agreement rate, and its loss the cross-entropy to the
original's answers.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np

from axformer.data.batching import encode
from axformer.evaluation.engine import CandidateResult, EvaluationEngine
from axformer.inference import run_model
from axformer.tasks.data import Split

AGREEMENT = "agreement"


def fidelity_pool(ctx, texts: list[tuple[str, ...]], batch_size: int = 64) -> Split:
    """``texts`` labelled with the original model's predictions (a classification pool)."""
    unlabelled = Split("fidelity", texts, np.zeros(len(texts), dtype=np.int64))
    enc = encode(ctx.tokenizer, unlabelled, ctx.record.max_seq_length)
    answers = run_model(ctx.model.eval(), enc, False, batch_size, ctx.device).logits.argmax(-1)
    return Split("fidelity", texts, answers.astype(np.int64))


class FidelityEngine:
    """The decision engine, plus the agreement with the original on a pool, as one engine for the search.

    Every result carries the decision split's metrics and ``agreement`` (points); the search's tolerance rule
    guards it like any other metric (100 for the original). The pool runs on a copy of the model, so the two
    engines' masks never meet. Attributes not defined here are the decision engine's (the gradient ranking
    uses it).
    """

    def __init__(self, decision: EvaluationEngine, ctx, pool: Split, batch_size: int = 64) -> None:
        self.decision = decision
        pool_spec = dataclasses.replace(ctx.data.spec, metrics=("accuracy",), main_metric="accuracy")
        enc = encode(ctx.tokenizer, pool, ctx.record.max_seq_length)
        self.pool = EvaluationEngine(copy.deepcopy(ctx.model), enc, pool_spec, batch_size, ctx.device)
        self.pool_size = len(pool)
        self.reference = self._merge(decision.reference, self.pool.reference)

    def __getattr__(self, name):
        return getattr(self.__dict__["decision"], name)

    @staticmethod
    def _merge(result: CandidateResult, pool: CandidateResult | None) -> CandidateResult:
        if pool is None:
            return result
        if pool.complete:
            result.metrics = {**result.metrics, AGREEMENT: pool.metrics["accuracy"]}
        else:  # the pool's pass stopped: too many answers changed, so the candidate cannot pass
            result.complete = False
        return result

    def evaluate(self, removed=(), changes=(), stop=None, desc=None) -> CandidateResult:
        result = self.decision.evaluate(removed, changes, stop=stop)
        if not result.complete:  # rejected on the labelled examples already: the pool is not needed
            return result
        return self._merge(result, self.pool.evaluate(removed, changes, stop=self._pool_stop(stop)))

    def set_base(self, removed=(), changes=()):
        """The accepted state, in both engines: agreement is the accumulated model's, not one change's."""
        pool = self.pool.set_base(removed, changes)
        return self._merge(self.decision.set_base(removed, changes), pool)

    def close(self) -> None:
        self.pool.close()
        self.decision.close()

    def _pool_stop(self, stop):
        """The search's tolerance rule, as it applies to the pool: stop a pass once too many answers changed
        (exact: no remaining example can bring the agreement back), so rejected candidates cost a fraction."""
        thresholds = getattr(stop, "thresholds", None) or {}
        return None if AGREEMENT not in thresholds else _TooManyChanged(thresholds[AGREEMENT], self.pool.encoded.labels)


class _TooManyChanged:
    def __init__(self, min_agreement: float, answers: np.ndarray) -> None:
        self.min_agreement, self.answers = min_agreement, answers

    def hopeless(self, partial) -> bool:
        done = partial.done
        same = int((partial.logits[done].argmax(-1) == self.answers[done]).sum())
        return 100.0 * (same + int((~done).sum())) / len(done) < self.min_agreement
