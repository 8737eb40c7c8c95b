"""``axformer optimize``: search for the best approximated model and hand it back physically smaller.

The run directory holds, when done: the optimized model (safetensors, config
with its per-layer structure and attention settings, tokenizer,
axformer.json), ``search_log.jsonl`` (every trial), ``report.md`` and
``report.json`` (original vs optimized on the held-out split and dev set,
parameters, size, FLOPs, measured latency ratios, the search's wall time).
While it runs, ``OUTPUT.partial`` holds the log, the accepted state
(``best_so_far.json``) and the best model found so far (``best_so_far/``);
running the same command again resumes from there (a killed run loses at
most the trial being evaluated), and Ctrl-C stops cleanly with the
best-so-far model saved.

This module only orchestrates; the searches are ``accuracy`` and
``constraint``, recovery training is ``recovery``, writing a candidate is
``candidate``, the report is ``report``, timing is ``axformer.runtime.timing``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from axformer.attention.hard import supports_approximate_attention
from axformer.distill.students import parse_layers
from axformer.errors import AxformerError
from axformer.evaluation.context import load_context, positions_sha, representativeness_warnings
from axformer.evaluation.engine import EvaluationEngine
from axformer.evaluation.fidelity import FidelityEngine, fidelity_pool
from axformer.models.loading import is_local
from axformer.search.accuracy import AccuracySearchConfig, accuracy_search
from axformer.search.accuracy import trial_bound as accuracy_trial_bound
from axformer.search.candidate import save_candidate
from axformer.search.certificate import Step, certify_model, certify_search, fidelity, state_of
from axformer.search.config import OptimizeConfig
from axformer.search.constraint import COARSE_PHASES, PHASES, ConstraintSearchConfig, constraint_search
from axformer.search.constraint import trial_bound as constraint_trial_bound
from axformer.search.cost import CostModel, byte_model, calibrate_latency
from axformer.search.recovery import TEACHER_OUTPUTS, pretrained_origin, recover, rounding
from axformer.search.report import build_report, report_markdown
from axformer.search.trials import Trials
from axformer.surgery.prune import current_structure
from axformer.tasks.calibration import load_calibration_texts
from axformer.tasks.data import TaskData
from axformer.utils.config import to_mapping
from axformer.utils.io import atomic_output_dir, claim_work_dir, read_json, run_key, write_json

LOG_FILE = "search_log.jsonl"
STATE_FILE = "best_so_far.json"
SPLIT_FILE = "split.json"


def default_output(model: str | os.PathLike, goal: str) -> Path:
    base = Path(model) if is_local(model) else Path(str(model).replace("/", "-"))
    return base.with_name(base.name + f"-optimized-{goal}")


def optimize(
    model: str | os.PathLike,
    data: TaskData | None = None,
    data_dir=None,
    output=None,
    config: OptimizeConfig | None = None,
    overwrite: bool = False,
) -> dict:
    """Run the search and write the optimized model and its report; returns the report dict."""
    config = config or OptimizeConfig()
    config.validate()
    output = Path(output) if output is not None else default_output(model, config.goal)
    t_start = time.perf_counter()
    cert = config.certificate
    ctx = load_context(
        model,
        data,
        data_dir,
        config.max_examples,
        config.sample_seed,
        config.device,
        config.allow_pickle,
        confirm_fraction=cert.fraction,
        confirm_max_examples=cert.max_examples,
        decision_data=config.decision_data,
        stage="optimize",
    )
    spec = ctx.data.spec
    ctx.warnings.extend(representativeness_warnings(ctx))
    calibration = (  # read (and refused if malformed) before any work
        load_calibration_texts(
            config.calibration_texts, spec.input_fields, tuple(config.calibration_columns or ()) or None
        )
        if config.calibration_texts is not None
        else None
    )
    if config.recovery.mode == "pretrained" and pretrained_origin(ctx.record) is None:
        raise AxformerError(
            f"--recover pretrained: {model} records no pre-trained checkpoint it was fine-tuned from; "
            "use --recover continue or distill"
        )
    torch.manual_seed(0)
    key = run_key(
        {
            "model": str(Path(model).resolve()) if is_local(model) else str(model),
            "task": spec.name,
            "split": ctx.describe_split(),
            "config": to_mapping(config, drop=("progress", "device", "latency_examples")),
        }
    )
    with atomic_output_dir(output, overwrite=overwrite) as work:
        resumed = claim_work_dir(work, key)
        engine = EvaluationEngine(ctx.model, ctx.encoded, spec, config.batch_size, ctx.device)
        structure = current_structure(ctx.model)
        approx_ok = supports_approximate_attention(ctx.model)
        last_save = [0.0]

        def on_accept(t: Trials) -> None:  # the accepted state, and (at most every 30 s) the model, always on disk
            write_json(work / STATE_FILE, t.state())
            if time.perf_counter() - last_save[0] > 30:
                save_candidate(model, ctx, t.state(), work / "best_so_far", config, config.goal)
                last_save[0] = time.perf_counter()

        if (
            config.fidelity.pool_size(spec.is_embedding) > 0
            and config.goal != "accuracy"
            and not spec.is_qa  # agreement of answer spans on unlabelled questions: not built yet
            # labelled pairs get a pool; a fidelity-only task ("fidelity") is its own pool
            and (spec.extra.get("embedding") == "cosine" or not spec.is_regression)
        ):
            engine = FidelityEngine(engine, ctx, fidelity_pool(ctx, _pool_texts(ctx, config, calibration)))
        trials = Trials(engine, work / LOG_FILE, spec.main_metric, on_accept, positions_sha(ctx.heldout_positions))
        if ctx.confirmation is not None:  # which examples decide and which certify, for anyone to check
            write_json(
                work / SPLIT_FILE,
                {
                    "decision_positions": ctx.heldout_positions,
                    "confirmation_positions": ctx.confirmation_positions,
                    "decision_sha256": positions_sha(ctx.heldout_positions),
                },
            )
        search_info: dict = {}
        acc = AccuracySearchConfig(
            k=config.attention.k,
            attention_modes=config.attention.modes_for("accuracy"),
            slack=config.axformer.slack,
            fraction=config.axformer.fraction,
            groups=config.groups,
            attention_layers=config.attention.layers,
            prune_layers=config.axformer.prune_layers,
            rule=config.axformer.rule,
            alpha=config.axformer.alpha,
        )
        t_search = time.perf_counter()
        try:
            if config.goal == "accuracy":
                if config.progress:
                    trials.progress(accuracy_trial_bound(structure, acc, approx_ok), "search (accuracy)")
                outcome = accuracy_search(trials, structure, acc, approx_ok)
                search_info = {
                    "rule": outcome.rule,
                    "min_loss": outcome.min_loss,
                    "hard_attention_supported": approx_ok,
                }
            else:
                modes = config.attention.modes_for(config.goal) if approx_ok else ()
                cost = _cost_model(ctx, structure, config, work, modes)
                target = config.target_speedup if config.goal == "speed" else config.target_size
                cfg = ConstraintSearchConfig(
                    config.goal,
                    config.tolerance.max_drop,
                    config.tolerance.max_rel_drop,
                    target,
                    config.tolerance.guard,
                    config.tolerance.max_loss_increase,
                    config.groups,
                    attention_modes=modes,
                    k=config.attention.k,
                    phases=COARSE_PHASES if config.coarse_units_only else PHASES,
                    fixed_thresholds=_fixed_thresholds(spec, config.fidelity),
                )
                if config.progress:
                    trials.progress(constraint_trial_bound(structure, cfg), f"search ({config.goal})")
                outcome = constraint_search(trials, structure, cost, cfg, progress=False)
                search_info = {
                    "rule": outcome.rule,
                    "threshold": outcome.threshold,
                    "thresholds": outcome.thresholds,
                    "max_loss": outcome.max_loss,
                    "cost_model": cost.to_dict(),
                    "predicted_ratio": outcome.predicted_ratio,
                    "target": target,
                    "target_met": outcome.target_met,
                    "attention_notes": outcome.attention_notes,
                    "units": "coarse" if config.coarse_units_only else "all",
                }
        except KeyboardInterrupt:
            trials.close()
            write_json(work / STATE_FILE, trials.state())
            save_candidate(model, ctx, trials.state(), work / "best_so_far", config, config.goal)
            engine.close()
            raise AxformerError(
                f"interrupted after {trials.count} trials; the best model so far is in "
                f"{work}/best_so_far; run the same command again to resume"
            ) from None
        trials.close()
        search_seconds = time.perf_counter() - t_search
        student = _student_step(ctx, config, trials) if config.goal != "accuracy" else None
        state = trials.state() if student is None else state_of(trials.steps)
        engine.close()
        certification, state, optimized, recovery = _certify_and_recover(
            model, ctx, work, config, trials, state, calibration
        )
        if recovery is not None and student is not None:
            recovery["student"] = {
                "layers": [i for i in current_structure(ctx.model).present_layers if f"L{i}" not in student.removed],
                "removed": student.removed,
                "kept": all(n in state["removed"] for n in student.removed),
            }
        report = build_report(
            model,
            ctx,
            optimized,
            state,
            config,
            trials,
            search_info,
            search_seconds,
            time.perf_counter() - t_start,
            resumed,
            work,
        )
        report.recovery = recovery
        report.certification = certification
        trained = (
            recovery is not None
            and recovery.get("kept", True)
            and (certification is None or certification.shipped_recovered)
        )
        unchanged = not trained and not state["removed"] and not state["attention"]  # the original's weights
        if unchanged and not spec.is_qa:
            report.fidelity = {"note": "not measured: the shipped model is the original (nothing removed)"}
        else:
            report.fidelity = fidelity(ctx, config, optimized, calibration, trained=trained)
        write_json(work / "report.json", report.to_dict())
        (work / "report.md").write_text(report_markdown(report))
        shutil.rmtree(work / "best_so_far", ignore_errors=True)
        shutil.rmtree(work / TEACHER_OUTPUTS, ignore_errors=True)
        for f in ("run.json",):
            (work / f).unlink(missing_ok=True)
    return report.to_dict()  # the report.json layout; SearchReport.from_dict reads it back


def _student_step(ctx, config: OptimizeConfig, trials: Trials) -> Step | None:
    """``--student-layers``: the layers outside the student, as one more step after the search's own (so the
    certificate's fallback undoes the student first)."""
    if config.recovery.student_layers is None:
        return None
    removed = {n for s in trials.steps for n in s.removed}
    present = [i for i in current_structure(ctx.model).present_layers if f"L{i}" not in removed]
    layers = config.recovery.student_layers.strip()
    if layers.isdigit() and int(layers) >= len(present):  # the search left no more layers than that
        return None
    kept = parse_layers(layers, present)
    step = Step([f"L{i}" for i in present if i not in kept], [])
    if step.removed:
        trials.steps.append(step)
        return step
    return None


def _certify_and_recover(model, ctx, work: Path, config: OptimizeConfig, trials: Trials, state: dict, calibration=None):
    """The certificate is taken on the model that ships. With recovery, the searched state is recovered first
    and the *recovered* model certified (pruning that recovery wins back is not undone before it had its
    chance); if it fails, the searched model is backtracked until it passes on its own and shipped instead.
    Without recovery, or with one that scored no higher than the searched model on the deciding examples (not
    kept, ``recovery_pays``), the searched model is certified and backtracked."""
    certification = None
    # nothing removed and nothing rounded to int4 in training: nothing to win back
    if config.recovery.mode is None or (not trials.steps and not rounding(config)):
        if ctx.confirmation is not None:
            certification, state = certify_search(ctx, config, trials.steps)
        write_json(work / STATE_FILE, state)
        return certification, state, save_candidate(model, ctx, state, work, config, config.goal), None
    write_json(work / STATE_FILE, state)
    save_candidate(model, ctx, state, work, config, config.goal)
    optimized, recovery = recover(model, ctx, work, config, state, calibration)
    if ctx.confirmation is None:
        return None, state, optimized, recovery
    if not recovery["kept"]:  # no better than the searched model on the deciding examples: certified as without it
        certification, state = certify_search(ctx, config, trials.steps)
        write_json(work / STATE_FILE, state)
        return certification, state, save_candidate(model, ctx, state, work, config, config.goal), recovery
    after = certify_model(ctx, config, optimized)
    if after.passed:
        certification, _ = certify_search(ctx, config, trials.steps, backtrack_failing=False)
        certification.recovery = after
        return certification, state, optimized, recovery
    # not a recovery that broke the promise. The searched state less its latest step is recovered once more
    # (one recovery, not one per step: each costs a training run); if that fails too, the searched model,
    # backtracked until it passes on its own, ships unrecovered
    certification, fallback = certify_search(ctx, config, trials.steps)
    certification.recovery = after
    certification.recovery_reverted = True
    if len(trials.steps) > 1:
        fewer = state_of(trials.steps[:-1])
        save_candidate(model, ctx, fewer, work, config, config.goal)
        retried, second = recover(model, ctx, work, config, fewer, calibration)
        second["attempts"] = 2
        if second["kept"]:  # else the retry is the unrecovered state, which the backtracking below tries anyway
            certification.retry = certify_model(ctx, config, retried)
            certification.retry_undone = [trials.steps[-1].name]
            if certification.retry.passed:
                write_json(work / STATE_FILE, fewer)
                return certification, fewer, retried, second
        recovery = second
    write_json(work / STATE_FILE, fallback)
    return certification, fallback, save_candidate(model, ctx, fallback, work, config, config.goal), recovery


def _cost_model(ctx, structure, config: OptimizeConfig, work: Path, attention_modes: tuple[str, ...]) -> CostModel:
    """The calibrated cost model, saved in the work directory: a resumed run must rank candidates exactly as before,
    and latency measurements never repeat exactly."""
    path = work / "cost_model.json"
    if path.exists():
        return CostModel(**read_json(path))
    cost = (
        calibrate_latency(
            ctx.model,
            structure,
            _typical_length(ctx),
            device=ctx.device,
            k=config.attention.k,
            attention_modes=attention_modes,
            runtime=config.latency_runtime,
        )
        if config.goal == "speed"
        else byte_model(ctx.model, structure, config.artifact, *_kept_sizes(ctx, config))
    )
    write_json(path, cost.to_dict())
    return cost


def _kept_sizes(ctx, config: OptimizeConfig) -> tuple[int | None, int | None]:
    """The vocabulary rows and position rows the export will keep (None: all), for the size goal's byte count."""
    vocab_rows = None
    if config.artifact.prune_vocabulary:
        from axformer.evaluation.context import vocabulary_texts
        from axformer.surgery.vocabulary import plan_vocabulary

        vocab_rows = len(
            plan_vocabulary(
                ctx.tokenizer,
                vocabulary_texts(ctx, config.calibration_texts, config.calibration_columns),
                min_count=config.artifact.vocabulary_min_count,
            ).kept
        )
    return vocab_rows, ctx.record.max_seq_length if config.artifact.trim_positions else None


def _fixed_thresholds(spec, fidelity) -> dict[str, float]:
    """Embedding models: the cosine levels the fidelity settings fix. With labelled pairs both (the task's metric
    holds the promise); with texts only the mean cosine is the task's main metric, under the tolerance, and
    only its 5th percentile is fixed."""
    kind = spec.extra.get("embedding")
    if kind == "cosine":
        return {"cosine": fidelity.min_cosine, "cosine_p5": fidelity.min_cosine_p5}
    return {"cosine_p5": fidelity.min_cosine_p5} if kind == "fidelity" else {}


def _typical_length(ctx) -> int:
    return int(np.median(ctx.encoded.lengths)) if len(ctx.encoded) else 32


def _pool_texts(ctx, config: OptimizeConfig, calibration) -> list[tuple[str, ...]]:
    """The unlabelled inputs fidelity decides on: a seeded sample of the training part, plus the calibration
    texts, less every dev text (the dev set only reports; ``unseen_by_dev``)."""
    from axformer.tasks.calibration import as_inputs, unseen_by_dev
    from axformer.tasks.splits import apply_split

    train, _ = apply_split(ctx.data, ctx.split)
    size = config.fidelity.pool_size(ctx.data.spec.is_embedding)
    pick = np.sort(np.random.default_rng(config.sample_seed + 1).permutation(len(train))[:size])
    per_text = ctx.data.spec.is_embedding
    extra = as_inputs(calibration or [], per_text)
    if len(extra) > max(size, 1000):  # a large calibration file joins the pool as a seeded sample
        extra = [
            extra[i] for i in np.sort(np.random.default_rng(config.sample_seed + 2).permutation(len(extra))[:size])
        ]
    dev = set(as_inputs([t for s in ctx.data.dev.values() for t in s.texts], per_text))
    return unseen_by_dev(as_inputs([train.texts[i] for i in pick], per_text), extra, dev)
