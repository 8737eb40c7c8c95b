"""Decisions by fidelity: every candidate also judged by how close it stays to the original model on a large
pool of unlabelled inputs.

A labelled held-out split of a few hundred examples measures a candidate's accuracy with a standard error of
one to two points: far too coarse to hold a one-point promise over a hundred decisions. Fidelity needs no
labels, so it can be measured on the training texts (tens of thousands on GLUE) and the user's own
``--calibration-texts``. The pool's labels are the original model's own outputs:

* classification: its answers, so the engine's "accuracy" on the pool *is* the agreement rate (``agreement``),
  and a model cannot lose more accuracy than the share of inputs on which it changes its answer;
* embedding models: its embeddings, so the engine's loss is ``1 - cosine`` and the pool's metrics are the mean
  cosine to the original's embeddings (``cosine``) and its 5th percentile (``cosine_p5``, the worst texts), in
  points (100: identical directions).
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
COSINE, COSINE_P5 = "cosine", "cosine_p5"


def fidelity_pool(ctx, texts: list[tuple[str, ...]], batch_size: int = 64) -> Split:
    """``texts`` labelled with the original model's outputs: its answers, or (an embedding model) the
    embeddings of every distinct text, one text per example."""
    embedding = ctx.data.spec.is_embedding
    if embedding:
        texts = [(t,) for t in dict.fromkeys(t for row in texts for t in row)]
    unlabelled = Split("fidelity", texts, np.zeros(len(texts), dtype=np.int64))
    enc = encode(ctx.tokenizer, unlabelled, ctx.record.max_seq_length)
    logits = run_model(ctx.model.eval(), enc, embedding, batch_size, ctx.device, with_loss=False).logits
    return Split("fidelity", texts, logits.astype(np.float32) if embedding else logits.argmax(-1).astype(np.int64))


class FidelityEngine:
    """The decision engine, plus fidelity to the original on a pool, as one engine for the search.

    Every result carries the decision split's metrics and the pool's (``agreement``, or ``cosine`` and
    ``cosine_p5``), which the search's tolerance rule guards like any other metric. The pool runs on a copy of
    the model, so the two engines' masks never meet; both take every accepted state (``set_base``).
    Attributes not defined here are the decision engine's (the gradient ranking uses it).
    """

    def __init__(self, decision: EvaluationEngine, ctx, pool: Split, batch_size: int = 64) -> None:
        self.decision = decision
        spec = ctx.data.spec
        if spec.is_embedding:
            pool_spec = dataclasses.replace(spec, label_names=None, metrics=(COSINE, COSINE_P5), main_metric=COSINE)
            self.names = {COSINE: COSINE, COSINE_P5: COSINE_P5}
        else:
            pool_spec = dataclasses.replace(spec, metrics=("accuracy",), main_metric="accuracy")
            self.names = {"accuracy": AGREEMENT}
        enc = encode(ctx.tokenizer, pool, ctx.record.max_seq_length)
        self.pool = EvaluationEngine(copy.deepcopy(ctx.model), enc, pool_spec, batch_size, ctx.device)
        self.pool_size = len(pool)
        self.reference = self._merge(decision.reference, self.pool.reference)

    def __getattr__(self, name):
        return getattr(self.__dict__["decision"], name)

    def _merge(self, result: CandidateResult, pool: CandidateResult | None) -> CandidateResult:
        if pool is None:
            return result
        if pool.complete:
            result.metrics = {**result.metrics, **{ours: pool.metrics[m] for m, ours in self.names.items()}}
        else:  # the pool's pass stopped: the candidate moved too far from the original to pass
            result.complete = False
        return result

    def evaluate(self, removed=(), changes=(), stop=None, desc=None) -> CandidateResult:
        result = self.decision.evaluate(removed, changes, stop=stop)
        if not result.complete:  # rejected on the labelled examples already: the pool is not needed
            return result
        return self._merge(result, self.pool.evaluate(removed, changes, stop=self._pool_stop(stop)))

    def set_base(self, removed=(), changes=()):
        """The accepted state, in both engines: fidelity is the accumulated model's, not one change's."""
        pool = self.pool.set_base(removed, changes)
        return self._merge(self.decision.set_base(removed, changes), pool)

    def close(self) -> None:
        self.pool.close()
        self.decision.close()

    def _pool_stop(self, stop):
        """The search's tolerance rule, as it applies to the pool: stop a pass once it cannot pass any more
        (exact: no remaining example can bring it back), so rejected candidates cost a fraction."""
        thresholds = getattr(stop, "thresholds", None) or {}
        if AGREEMENT in thresholds:
            return _TooManyChanged(thresholds[AGREEMENT], self.pool.encoded.labels)
        if COSINE in thresholds:
            return _CosineTooLow(thresholds[COSINE])
        return None


class _TooManyChanged:
    def __init__(self, min_agreement: float, answers: np.ndarray) -> None:
        self.min_agreement, self.answers = min_agreement, answers

    def hopeless(self, partial) -> bool:
        done = partial.done
        same = int((partial.logits[done].argmax(-1) == self.answers[done]).sum())
        return 100.0 * (same + int((~done).sum())) / len(done) < self.min_agreement


class _CosineTooLow:
    """Mean cosine >= t is mean loss (1 - cosine) <= 1 - t/100; losses are >= 0, so the losses so far bound it."""

    def __init__(self, min_cosine: float) -> None:
        self.max_mean_loss = 1.0 - min_cosine / 100.0

    def hopeless(self, partial) -> bool:
        return float(partial.losses[partial.done].sum()) / len(partial.done) > self.max_mean_loss + 1e-9
