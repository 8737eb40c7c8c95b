"""Recovery after the search: train the found structure again, so what pruning cost is won back.

``continue`` fine-tunes from the searched weights. ``pretrained`` is AxFormer's
variant: the same components removed from the *pre-trained* checkpoint the
model was fine-tuned from (a new task head), then fine-tuned. ``distill`` is
FastFormers': the searched model learns the original model's outputs (soft
cross-entropy). All keep the recorded held-out split, which selects the
checkpoint; the dev set only reports.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

from axformer.attention.hard import set_attention
from axformer.distill import DistillConfig, distill
from axformer.distill.augment import later_windows
from axformer.distill.objective import TEACHER_OUTPUTS
from axformer.distill.trainer import perturbed_inputs
from axformer.errors import AxformerError
from axformer.evaluation import score
from axformer.inference import run_model
from axformer.models.loading import load_model, save_model
from axformer.models.record import ModelRecord
from axformer.surgery.prune import prune
from axformer.tasks.splits import apply_split
from axformer.training.finetune import FinetuneConfig, finetune, training_subset
from axformer.training.loop import scores_higher

RECOVERY_EXAMPLES = 6000  # example passes an automatic recovery aims for
MAX_AUTO_EPOCHS = 3.0


def recovery_epochs(epochs: float | None, train_examples: int) -> float:
    """The epochs of recovery training: as given, or enough to see ``RECOVERY_EXAMPLES`` examples, from one to
    three epochs. Why: a few hundred steps are too few to win back removed layers (measured on BBC News, same
    structure, 1,513 texts: 2 epochs -0.90 dev points, 4 epochs -0.22; benchmarks/experiments/recovery_bbc), while
    one epoch over SST-2's 57k sentences already takes 6.4 minutes here (more was not measured)."""
    if epochs is not None:
        return float(epochs)
    return float(min(MAX_AUTO_EPOCHS, max(1.0, RECOVERY_EXAMPLES / max(train_examples, 1))))


def recovery_pays(before: dict, after: dict) -> bool:
    """Is the recovered model better than the searched one on the deciding examples (main metric, then loss)?

    Why the searched model is a candidate too: recovery picks the best of its own checkpoints, never the weights
    it started from, and distillation from a weak teacher can lose what the search kept. Measured on CoLA
    (session 24, MCC 31.24 on the deciding examples): L5's FFN removed, 31.01; distilled for an epoch, 27.38, and
    27.32 against 29.59 on the confirmation examples. The distilled model passed its certificate (-0.09 against
    the original on 513 examples) and lost 5.57 dev MCC (benchmarks/results/promises_glue.md)."""
    main = before["main_metric"]
    return scores_higher(
        (after["metrics"][main], after.get("loss") or 0.0), (before["metrics"][main], before.get("loss") or 0.0)
    )


def training_budget(record) -> dict | None:
    """What the original's fine-tuning saw (examples and epochs), as its axformer.json records it: the report puts
    the recovery's budget beside it, so that a gain from more training data is not read as a gain of the method."""
    for h in reversed(record.history):
        if h.get("stage") == "finetune" and h.get("num_train_examples"):
            return {"examples": int(h["num_train_examples"]), "epochs": float(h.get("config", {}).get("epochs", 0))}
    return None


def rounding(config, recipe: bool = False) -> dict:
    """The DistillConfig settings of quantization-aware recovery: what the artifact will store in int4, rounded to
    its grid while the student trains, or, for an int8 artifact, every matrix product as dynamic int8 computes it
    (nothing without --recover distill, or with --no-quantization-aware). ``recipe``: for the FastFormers recipe's
    last distillation, where an unset switch means int8-aware (``Recovery.quantization_aware``)."""
    art = config.artifact
    aware = config.recovery.quantization_aware
    if aware is None:
        aware = recipe and art.matrices == "int8" and art.embeddings != "int4"
    if config.recovery.mode != "distill" or not aware:
        return {}
    if art.matrices == "int8" and art.embeddings != "int4":
        return {"qat_int8": True}
    out = {}
    if art.matrices == "int4":
        out |= {"qat_block_size": art.block_size, "qat_attention_inputs": art.int4_attention}
    if art.embeddings == "int4":
        out["qat_table_block_size"] = art.table_block_size or art.block_size
    return out


def pretrained_origin(record) -> str | None:
    """The pre-trained checkpoint the model was first fine-tuned from, as its axformer.json records it."""
    return next(
        (h.get("base_model") for h in record.history if h.get("stage") == "finetune" and h.get("base_model")), None
    )


def recover(model, ctx, work: Path, config, state: dict, calibration: list[tuple[str, ...]] | None = None):
    """Train the found structure again; the recovered model replaces the searched one in ``work`` if it scores
    higher on the deciding examples (``recovery_pays``), and the searched model stays otherwise.

    ``continue`` fine-tunes from the searched weights. ``pretrained`` is
    AxFormer's variant: the same components removed from the *pre-trained*
    checkpoint the model was fine-tuned from (a new task head), then
    fine-tuned. ``distill`` is FastFormers': the searched model learns the
    original model's outputs (soft cross-entropy). All keep the recorded
    held-out split, which selects the checkpoint.
    """
    searched = score(
        ctx.data.spec,
        ctx.heldout.labels,
        run_model(
            load_model(work, device=ctx.device).eval(),
            ctx.encoded,
            ctx.data.spec.is_regression,
            config.batch_size,
            ctx.device,
        ),
    ).to_dict()
    # what the trainer will train on: the same seeded subset, and the same windows of long texts
    train = training_subset(
        apply_split(ctx.data, ctx.split)[0], config.recovery.max_train_examples, FinetuneConfig.seed
    )
    train_examples = len(train)
    # a QA example already is every window of its context
    windows = config.recovery.windows if config.recovery.mode == "distill" and not ctx.data.spec.is_qa else 0
    n_windows = len(later_windows(ctx.tokenizer, train.texts, ctx.record.max_seq_length, windows))
    augment = (config.recovery.augment or 0) if config.recovery.mode == "distill" and not ctx.data.spec.is_qa else 0
    # made once here (counted to plan the epochs) and handed to the trainer
    wanted = DistillConfig(
        augment=augment,
        augment_min_words=config.recovery.augment_min_words,
        augment_words=config.recovery.augment_words,
        selection_data=ctx.decision_data,
    )
    copies = perturbed_inputs(wanted, ctx.data, train, apply_split(ctx.data, ctx.split)[1], model)
    n_augmented = len(copies)
    added = n_windows + n_augmented
    # distillation needs no labels: the calibration texts are inputs too (the original labels them), less every
    # dev, training, held-out and pool text (``distillation_inputs``)
    extra: list[tuple[str, ...]] = []
    if config.recovery.mode == "distill" and calibration and not ctx.data.spec.is_qa:
        from axformer.tasks.calibration import distillation_inputs

        held = apply_split(ctx.data, ctx.split)[1]
        rows = [*(t for split in ctx.data.dev.values() for t in split.texts), *train.texts, *held.texts]
        rows += list(ctx.pool_split.texts) if ctx.pool_split is not None else []
        extra = distillation_inputs(calibration, rows, ctx.data.spec.is_embedding)
    added += len(extra)
    common = {
        "epochs": recovery_epochs(config.recovery.epochs, train_examples + added),
        "learning_rate": config.recovery.learning_rate,
        "batch_size": config.recovery.batch_size,
        "max_train_examples": config.recovery.max_train_examples,
        "max_seq_length": ctx.record.max_seq_length,
        "max_seconds": None if config.recovery.max_minutes is None else config.recovery.max_minutes * 60,
        "device": config.device,
        "precision": config.recovery.precision,
        # the checkpoint is a decision too: chosen on the decision part, never on the confirmation examples
        "selection_positions": None if ctx.confirmation is None else [int(i) for i in ctx.decision_pool],
        "selection_data": ctx.decision_data,  # what those positions index (None: the held-out split)
    }
    t0 = time.perf_counter()
    start = work
    if config.recovery.mode == "distill":
        # a retry distils from the same original on the same texts: its teacher outputs are kept in between
        kept = str(work / TEACHER_OUTPUTS)
        cfg = DistillConfig(
            **common,
            windows=windows,
            augment=augment,
            augment_min_words=config.recovery.augment_min_words,
            augment_words=config.recovery.augment_words,
            teacher_cache_dir=kept,
            hard_weight=config.recovery.distill_hard_weight(ctx.data.spec),
            **rounding(config),
        )
        result = distill(
            model,
            work / "recovered",
            student=work,
            data=ctx.data,
            config=cfg,
            overwrite=True,
            extra_texts=extra,
            augmented=copies,
        )
    else:
        cfg = FinetuneConfig(**common)
        if config.recovery.mode == "pretrained":
            origin = pretrained_origin(ctx.record)
            if origin is None:
                raise AxformerError(
                    f"--recover pretrained: {ctx.model_path} records no pre-trained checkpoint it was "
                    "fine-tuned from; use --recover continue or distill"
                )
            net = load_model(origin, ctx.data.spec, new_head=True, allow_pickle=config.allow_pickle)
            prune(net, state["removed"])
            if state["attention"]:
                set_attention(net, {int(k): v for k, v in state["attention"].items()})
            start = work / "pretrained-structure"
            save_model(net, ctx.tokenizer, start)
            record = ModelRecord.load(work)  # the searched model's record: task, split, and the optimize stage
            record.history = [
                *record.history,
                {"stage": "structure-on-pretrained", "base_model": origin, "removed": state["removed"]},
            ]
            record.save(start)
        result = finetune(start, ctx.data, work / "recovered", cfg, overwrite=True)
    net = load_model(result.output, ctx.data.spec, device=ctx.device).eval()
    recovered = score(
        ctx.data.spec,
        ctx.heldout.labels,
        run_model(net, ctx.encoded, ctx.data.spec.is_regression, config.batch_size, ctx.device),
    ).to_dict()
    # recovery where it pays: its checkpoints are chosen on the deciding examples, and so is whether to keep any
    # of them; int4 rounding in training aims at an artifact the fp32 searched model does not score, so it stays
    kept = bool(rounding(config)) or recovery_pays(searched, recovered)
    if kept:
        save_model(net, ctx.tokenizer, work)
        ModelRecord.load(result.output).save(work)
    else:
        net = load_model(work, ctx.data.spec, device=ctx.device).eval()
    shutil.rmtree(result.output, ignore_errors=True)
    if start != work:
        shutil.rmtree(start, ignore_errors=True)
    return net, {
        "mode": config.recovery.mode,
        "heldout_before": searched,
        "heldout_after": recovered,
        "kept": kept,
        "seconds": time.perf_counter() - t0,
        "stopped_by_time": result.stopped_by_time,
        "config": asdict(cfg),
        "budget": {
            "examples": train_examples,
            "windows": n_windows,
            "augmented_texts": n_augmented,
            "calibration_texts": len(extra),
            "epochs": cfg.epochs,
        },
        "original_budget": training_budget(ctx.record),
    }
