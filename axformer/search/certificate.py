"""The certificate: the searched model judged on labelled examples that no decision ever saw.

The search decides on one part of the held-out split (the *decision* part); its final "within tolerance" is
not read off that part, where every accepted change looked favourable by selection (the winner's curse), but
off the *confirmation* part: the optimized model against the original on the same confirmation examples,
each guarded metric's difference with a paired bootstrap interval. If the certificate fails, accepted
changes are undone, latest first, until the model passes (``backtrack``); the report says what happened.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from axformer.evaluation.paired import PairedDifference, paired_bootstrap
from axformer.inference import predictions


@dataclass
class AnswerChanges:
    """Classification: the confirmation answers the candidate gives differently from the original. Why it is
    reported: the paired difference of accuracy is (fixed - broken) / examples, so its sampling error grows with
    the share of changed answers; a model that changes a tenth of them cannot be certified to a point on a few
    hundred examples, whatever its estimate (MRPC: 10.5% of the dev answers changed, 15 fixed, 28 broken)."""

    changed: int
    fixed: int  # wrong before, right now
    broken: int  # right before, wrong now

    @classmethod
    def of(cls, labels: np.ndarray, original: np.ndarray, candidate: np.ndarray) -> AnswerChanges:
        differ = original != candidate
        return cls(
            changed=int(differ.sum()),
            fixed=int((differ & (candidate == labels)).sum()),
            broken=int((differ & (original == labels)).sum()),
        )


@dataclass
class Certificate:
    passed: bool
    rule: str  # human-readable: what had to hold
    examples: int
    main_metric: str
    differences: dict[str, PairedDifference]  # candidate - original, per guarded metric
    allowed_drop: dict[str, float]  # per guarded metric, in points
    answers: AnswerChanges | None = None  # classification only

    @property
    def main(self) -> PairedDifference:
        return self.differences[self.main_metric]


def certify(
    metrics: tuple[str, ...] | list[str],
    main_metric: str,
    labels: np.ndarray,
    original: np.ndarray,
    candidate: np.ndarray,
    allowed_drop: dict[str, float],
    rule: str = "estimate",
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    classification: bool = False,
) -> Certificate:
    """Does ``candidate`` stay within ``allowed_drop`` (points, per metric) of ``original`` on these examples?

    ``rule="estimate"``: the measured drop of every guarded metric is at most its allowance (the
    confirmation part is unbiased, so this is the promise's expected value); ``rule="bound"``: the upper
    end of the drop's confidence interval is (a stricter promise that small splits rarely keep).
    """
    differences = paired_bootstrap(metrics, labels, original, candidate, resamples, confidence, seed)
    out = certificate_of(differences, main_metric, len(labels), allowed_drop, rule, confidence)
    if classification:
        out.answers = AnswerChanges.of(labels, original, candidate)
    return out


def certificate_of(
    differences: dict, main_metric: str, examples: int, allowed_drop: dict[str, float], rule: str, confidence: float
) -> Certificate:
    """The verdict on measured paired differences (see :func:`certify`)."""
    guarded = {m: differences[m] for m in allowed_drop}
    if rule == "bound":
        passed = all(-d.low <= allowed_drop[m] + 1e-9 for m, d in guarded.items())
        what = f"the {confidence:.0%} upper bound of the drop"
    else:
        passed = all(-d.difference <= allowed_drop[m] + 1e-9 for m, d in guarded.items())
        what = "the measured drop"
    limits = ", ".join(f"{m} {a:g}" for m, a in allowed_drop.items())
    return Certificate(
        passed=passed,
        rule=f"{what} on the confirmation split is within the allowance (points: {limits})",
        examples=examples,
        main_metric=main_metric,
        differences=differences,
        allowed_drop=dict(allowed_drop),
    )


@dataclass
class Step:
    """One accepted decision of the search: what it removed or changed."""

    removed: list[str] = field(default_factory=list)
    changes: list = field(default_factory=list)  # engine Changes (approximate attention)

    @property
    def name(self) -> str:
        return "+".join([*self.removed, *(c.key for c in self.changes)])


@dataclass
class Backtrack:
    kept: list[Step]
    undone: list[Step]  # latest first
    certificates: list[Certificate]  # one per state tried, the last one is the shipped state's


def backtrack(steps: list[Step], certify_state: Callable[[list[Step]], Certificate]) -> Backtrack:
    """Undo accepted steps, latest first, until the certificate passes (the unchanged model always does)."""
    kept = list(steps)
    undone: list[Step] = []
    certificates = [certify_state(kept)]
    while not certificates[-1].passed and kept:
        undone.append(kept.pop())
        certificates.append(certify_state(kept))
    return Backtrack(kept, undone, certificates)


@dataclass
class Certification:
    """What the report says about the promise: the shipped model's certificate and how it was reached."""

    certificate: Certificate  # of the model as searched and (if needed) backtracked
    searched: Certificate  # of the state the search ended in, before any backtracking
    undone: list[str]  # accepted steps undone to pass, latest first
    states_tried: int
    decision_examples: int
    recovery: Certificate | None = None  # of the recovered model, when recovery ran
    recovery_reverted: bool = False  # the recovered model failed its certificate
    # after the first recovery failed: the searched state less its latest step, recovered again; shipped when
    # it passes (else the searched model, backtracked on its own, ships unrecovered)
    retry: Certificate | None = None
    retry_undone: list[str] = field(default_factory=list)

    @property
    def shipped_recovered(self) -> bool:
        return (self.recovery is not None and not self.recovery_reverted) or bool(self.retry and self.retry.passed)

    @property
    def shipped_undone(self) -> list[str]:
        """The accepted steps the shipped model does not have."""
        if self.recovery is not None and not self.recovery_reverted:
            return []
        return self.retry_undone if self.retry is not None and self.retry.passed else self.undone

    @property
    def shipped(self) -> Certificate:
        if self.recovery is not None and not self.recovery_reverted:
            return self.recovery
        if self.retry is not None and self.retry.passed:
            return self.retry
        return self.certificate


def allowances(config, reference: dict[str, float], main_metric: str) -> dict[str, float]:
    """Points each guarded metric may fall on the confirmation split: the tolerance for the speed and size
    goals (every metric, or the main one with ``guard: main``), nothing at all for the accuracy goal."""
    if config.goal == "accuracy":
        return {main_metric: 0.0}
    t = config.tolerance
    guarded = list(reference) if t.guard == "all" else [main_metric]
    out = {}
    for m in guarded:
        bounds = []
        if t.max_drop is not None:
            bounds.append(t.max_drop)
        if t.max_rel_drop is not None:
            bounds.append(abs(reference[m]) * t.max_rel_drop / 100)
        out[m] = min(bounds) if bounds else 0.0
    return out


def _confirmation_engine(ctx, config):
    from axformer.evaluation.engine import EvaluationEngine

    return EvaluationEngine(ctx.model, ctx.confirmation_encoded, ctx.data.spec, config.batch_size, ctx.device)


def _certify(ctx, config, original_logits, original_metrics: dict, candidate_logits) -> Certificate:
    spec = ctx.data.spec
    c = config.certificate
    if spec.is_qa:  # per question: SQuAD's exact match and F1 of each model's best span, resampled by question
        from axformer.data.qa_windows import best_answers
        from axformer.evaluation.paired import paired_bootstrap_means
        from axformer.evaluation.squad_metrics import per_question

        windows = ctx.confirmation_encoded

        def per_example(logits) -> dict[str, np.ndarray]:
            found = best_answers(windows, windows.contexts, logits[..., 0], logits[..., 1])
            em, f1 = per_question([t for t, _ in found], windows.answers)
            return {"exact_match": 100 * em, "f1": 100 * f1}

        o, k = per_example(original_logits), per_example(candidate_logits)
        differences = paired_bootstrap_means({m: (o[m], k[m]) for m in spec.metrics}, c.resamples, c.confidence,
                                             config.sample_seed)  # fmt: skip
        allowed = allowances(config, original_metrics, spec.main_metric)
        return certificate_of(differences, spec.main_metric, len(windows.answers), allowed, c.rule, c.confidence)
    regression = spec.is_regression
    original, candidate = predictions(original_logits, regression), predictions(candidate_logits, regression)
    return certify(
        spec.metrics,
        spec.main_metric,
        ctx.confirmation.labels,
        original,
        candidate,
        allowances(config, original_metrics, spec.main_metric),
        c.rule,
        c.resamples,
        c.confidence,
        config.sample_seed,
        classification=not regression,
    )


def state_of(steps: list[Step]) -> dict:
    """The search state (as ``Trials.state``) that these accepted steps make."""
    removed = [n for s in steps for n in s.removed]
    return {"removed": removed, "attention": {str(c.layer): c.spec() for c in live_changes(steps)}}


def live_changes(steps: list[Step]) -> list:
    """The steps' changes on layers that are still there (a later step, a student, may drop a layer whose
    attention an earlier step approximated)."""
    gone = {n for s in steps for n in s.removed}
    return [c for s in steps for c in s.changes if f"L{c.layer}" not in gone]


def certify_search(ctx, config, steps: list[Step], backtrack_failing: bool = True) -> tuple[Certification, dict]:
    """Certify the searched state on the confirmation part, backtracking until it passes (unless
    ``backtrack_failing`` is False: the searched state's certificate only, for the report of a recovered model
    that passed its own); returns the report and the state to ship (``{"removed": [...], "attention": {...}}``,
    as ``Trials.state``)."""
    engine = _confirmation_engine(ctx, config)
    try:

        def certify_state(kept: list[Step]) -> Certificate:
            removed = [n for s in kept for n in s.removed]
            changes = live_changes(kept)
            ref = engine.reference
            return _certify(ctx, config, ref.logits, ref.metrics, engine.evaluate(removed, changes).logits)

        result = backtrack(steps, certify_state) if backtrack_failing else Backtrack(steps, [], [certify_state(steps)])
    finally:
        engine.close()
    state = state_of(result.kept)
    report = Certification(
        certificate=result.certificates[-1],
        searched=result.certificates[0],
        undone=[s.name for s in result.undone],
        states_tried=len(result.certificates),
        decision_examples=len(ctx.heldout),
    )
    return report, state


def certify_model(ctx, config, net) -> Certificate:
    """The certificate of a trained model (after recovery) against the original, on the confirmation part."""
    from axformer.evaluation import score
    from axformer.inference import run_model

    spec = ctx.data.spec

    def outputs(model):
        return run_model(model.eval(), ctx.confirmation_encoded, spec.is_regression, config.batch_size, ctx.device)

    reference = outputs(ctx.model)
    metrics = score(spec, ctx.confirmation.labels, reference).metrics
    return _certify(ctx, config, reference.logits, metrics, outputs(net).logits)


def fidelity(
    ctx,
    config,
    net,
    calibration: list[tuple[str, ...]] | None = None,
    max_training_texts: int = 5000,
    trained: bool = False,
) -> dict:
    """How often the final model agrees with the original (classification), how far its outputs are from
    the original's (regression), or how close its embeddings are to the original's (cosine), on unlabelled
    inputs: a seeded sample of the training texts and, when given,
    the user's calibration texts (dev texts removed from them).

    ``trained``: the shipped model was recovered by training on the training texts. A classifier or regressor
    trained there agrees with the original there by construction (99.6% on the demo's articles, where 4 of the
    267 confirmation answers changed, 1.5%), so that figure is not measured: it cost the demo a pass of both
    models over every training text to report a number that says little about unseen inputs; the
    certificate's changed answers are that figure. Embedding models keep it: their cosine on
    the pool is the fidelity promise of ``--task none``."""
    import numpy as np

    from axformer.data.batching import encode
    from axformer.inference import run_model
    from axformer.tasks.calibration import as_inputs, without
    from axformer.tasks.data import Split
    from axformer.tasks.metrics import compute_metrics
    from axformer.tasks.splits import apply_split

    spec = ctx.data.spec
    if spec.is_qa:
        return {"note": "not measured for question answering (agreement of answer spans is not built yet)"}
    pools: dict[str, list[tuple[str, ...]]] = {}
    out: dict = {}
    if trained and not spec.is_embedding:
        out["training_texts_note"] = (
            "not measured on the training texts: the recovery trained on them; the certificate's changed answers "
            "on the confirmation split are the figure on unseen inputs"
        )
    else:
        train, _ = apply_split(ctx.data, ctx.split)
        pick = np.random.default_rng(config.sample_seed).permutation(len(train))[:max_training_texts]
        pools["training texts"] = [train.texts[i] for i in np.sort(pick)]
    per_text = spec.is_embedding  # every distinct text, embedded alone
    if calibration is not None:
        dev = set(as_inputs([t for split in ctx.data.dev.values() for t in split.texts], per_text))
        texts, removed = without(as_inputs(calibration, per_text), dev)
        out["calibration_file"] = str(config.calibration_texts)
        out["removed_dev_texts"] = removed
        if len(texts) > max_training_texts:  # a large file: a seeded sample
            pick = np.random.default_rng(config.sample_seed).permutation(len(texts))[:max_training_texts]
            texts = [texts[i] for i in np.sort(pick)]
        if texts:
            pools["calibration texts"] = texts
    for name, texts in pools.items():
        texts = as_inputs(texts, per_text)
        split = Split(name, texts, np.zeros(len(texts), dtype=np.float32 if spec.is_regression else np.int64))
        enc = encode(ctx.tokenizer, split, ctx.record.max_seq_length)
        a = run_model(ctx.model.eval(), enc, spec.is_regression, config.batch_size, ctx.device, with_loss=False).logits
        b = run_model(net.eval(), enc, spec.is_regression, config.batch_size, ctx.device, with_loss=False).logits
        if spec.is_embedding:
            metrics = compute_metrics(("cosine", "cosine_p5"), a, b)
            out[name] = {"texts": len(texts), **metrics}
        elif spec.is_regression:
            out[name] = {"texts": len(texts), "mean_abs_difference": float(np.abs(a[:, 0] - b[:, 0]).mean())}
        else:
            out[name] = {"texts": len(texts), "agreement": float(100 * (a.argmax(-1) == b.argmax(-1)).mean())}
    return out
