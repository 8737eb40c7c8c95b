"""What analysis and search start from: the model, its task, and the held-out examples that decide."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedModel

from axformer.data.batching import Encoded, encode
from axformer.errors import AxformerError
from axformer.models.loading import is_local, load_model, load_tokenizer
from axformer.models.record import ModelRecord, task_for
from axformer.tasks.data import Split, TaskData
from axformer.tasks.sources import load_decision_split
from axformer.tasks.splits import SplitRecord, apply_split, make_heldout_split, partition, subsample
from axformer.utils.device import resolve_device

log = logging.getLogger(__name__)


@dataclass
class TaskContext:
    model_path: str
    model: PreTrainedModel
    tokenizer: object
    record: ModelRecord
    data: TaskData
    split: SplitRecord
    heldout: Split  # the (possibly subsampled) held-out examples every decision uses
    heldout_positions: np.ndarray  # their positions in the full held-out split
    encoded: Encoded
    device: str
    warnings: list[str]
    # the confirmation part of the held-out split: labelled examples no decision sees (None: no certificate)
    confirmation: Split | None = None
    confirmation_positions: np.ndarray | None = None
    confirmation_encoded: Encoded | None = None
    decision_pool: np.ndarray | None = None  # every held-out position decisions may use (before subsampling)
    # what the positions index: the held-out split carved from the training data, or the user's --decision-data
    pool_split: Split | None = None
    decision_data: str | None = None

    def describe_split(self) -> dict:
        return {
            "name": "heldout",
            "fraction": self.split.fraction,
            "seed": self.split.seed,
            "full_size": len(self.split.heldout_indices),
            "used": len(self.heldout),
            "positions_sha256": positions_sha(self.heldout_positions),
            **({"decision_data": self.decision_data} if self.decision_data else {}),
            "confirmation": None
            if self.confirmation_positions is None
            else {
                "used": len(self.confirmation_positions),
                "positions_sha256": positions_sha(self.confirmation_positions),
            },
        }


def load_context(
    model: str | os.PathLike,
    data: TaskData | None = None,
    data_dir: str | os.PathLike | None = None,
    max_examples: int | None = 2000,
    seed: int = 0,
    device: str = "auto",
    allow_pickle: bool = False,
    confirm_fraction: float = 0.0,
    confirm_max_examples: int | None = 2000,
    decision_data: str | os.PathLike | None = None,
    stage: str = "analyze",
) -> TaskContext:
    """Load the model and its task, and pick the held-out examples (the split recorded with the model).

    With ``confirm_fraction`` > 0 that share of the held-out split (seeded, stratified) is set aside as the
    confirmation part, and the deciding examples are drawn from the rest only.
    """
    model = str(model)
    record = ModelRecord.load(model) if is_local(model) else ModelRecord()
    data = task_for(model, data, data_dir)
    data.spec.require_stage(stage)
    warnings: list[str] = []
    split = record.split
    if split is not None and record.task is not None and record.task.get("name") != data.spec.name:
        raise AxformerError(
            f"model {model} was fine-tuned on {record.task.get('name')}, not {data.spec.name}; use "
            "that task (or leave --task out to use the one recorded with the model)"
        )
    if split is None:
        split = make_heldout_split(data.train)
        warnings.append(
            "the model was not fine-tuned by axformer, so its training may have seen the held-out "
            "examples; decisions may be optimistic"
        )
        log.warning(warnings[-1])
    train_part, full = apply_split(data, split)
    if decision_data is not None:
        full = read_decision_data(decision_data, data)
        warnings.extend(_decision_data_checks(full, train_part, decision_data))
    pool = np.arange(len(full))
    confirmation = confirmation_positions = None
    if confirm_fraction > 0:
        pool, confirmation_positions = partition(full, confirm_fraction, seed)
        kept = full.subset(confirmation_positions, "confirmation")
        confirmation, picked = subsample(kept, confirm_max_examples, seed)
        confirmation_positions = confirmation_positions[picked]
    heldout, picked = subsample(full.subset(pool, "heldout"), max_examples, seed)
    positions = pool[picked]
    dev = resolve_device(device)
    net = load_model(model, data.spec, allow_pickle=allow_pickle, device=dev).eval()
    tok = load_tokenizer(model)
    return TaskContext(
        model,
        net,
        tok,
        record,
        data,
        split,
        heldout,
        positions,
        encode(tok, heldout, record.max_seq_length, separate=data.spec.is_embedding),
        str(dev),
        warnings,
        confirmation,
        confirmation_positions,
        None
        if confirmation is None
        else encode(tok, confirmation, record.max_seq_length, separate=data.spec.is_embedding),
        pool,
        full,
        None if decision_data is None else str(decision_data),
    )


def read_decision_data(path: str | os.PathLike, data: TaskData) -> Split:
    """The user's decision file, read in the task's format; refused if it shares examples with the dev set (the dev
    set only reports)."""
    decision = load_decision_split(path, data)
    dev = {t for split in data.dev.values() for t in split.texts}
    shared = sum(t in dev for t in decision.texts)
    if shared:
        raise AxformerError(
            f"--decision-data {path} shares {shared} of its {len(decision)} examples with the dev set; the dev set "
            "only reports: expected examples no report uses"
        )
    return decision


def _decision_data_checks(decision: Split, train_part: Split, path) -> list[str]:
    """A decision file that shares examples with the training part is used, with a warning: the model was fit on
    those, so decisions on them are optimistic."""
    trained = set(train_part.texts)
    seen = sum(t in trained for t in decision.texts)
    if seen:
        msg = (
            f"--decision-data {path}: {seen} of its {len(decision)} examples are in the part of the training data "
            "the model was fine-tuned on; decisions on them may be optimistic"
        )
        log.warning(msg)
        return [msg]
    return []


def vocabulary_texts(
    ctx: TaskContext, calibration_texts: str | None = None, calibration_columns: list[str] | None = None
) -> list[tuple[str, ...]]:
    """The texts a pruned vocabulary is built from: the part of the training data the model was fine-tuned on and
    the user's calibration texts; less every dev text (``unseen_by_dev``). Not the held-out examples, deciding or
    confirming: on them, as on the dev set, a word the training texts lack is unseen, so the precision plan's
    decisions and the final check both measure what unseen words cost (built from the deciding examples too, the
    plan saw no unseen word and chose int4 everywhere on STS-B, where the check then failed)."""
    from axformer.tasks.calibration import load_calibration_texts, unseen_by_dev

    train, _ = apply_split(ctx.data, ctx.split)
    calibration: list[tuple[str, ...]] = []
    if calibration_texts is not None:
        columns = tuple(calibration_columns or ()) or None
        calibration = load_calibration_texts(calibration_texts, ctx.data.spec.input_fields, columns)
    return unseen_by_dev(list(train.texts), calibration, {t for split in ctx.data.dev.values() for t in split.texts})


def positions_sha(positions: np.ndarray) -> str:
    """A short fingerprint of a set of held-out positions (what a log records of the examples it used)."""
    return hashlib.sha256(np.asarray(positions).astype(np.int64).tobytes()).hexdigest()[:16]


def representativeness_warnings(ctx: TaskContext, length_ratio: float = 1.5, label_distance: float = 0.1) -> list[str]:
    """Say so when the deciding examples are not distributed like the data the model is reported on.

    SST-2's held-out split is training *phrases* (median 10 tokens) while its dev set is whole sentences
    (median 24): decisions made on one say little about the other. Compared: the median input length in
    tokens (a ratio beyond ``length_ratio`` either way) and, for classification, the label distribution
    (total variation distance above ``label_distance``).
    """
    out = []
    for name, split in ctx.data.dev.items():
        if not len(split) or not len(ctx.heldout):
            continue
        dev_lengths = encode(
            ctx.tokenizer, split, ctx.record.max_seq_length, separate=ctx.data.spec.is_embedding
        ).lengths
        ours, theirs = float(np.median(ctx.encoded.lengths)), float(np.median(dev_lengths))
        if max(ours, theirs) / max(min(ours, theirs), 1.0) > length_ratio:
            out.append(
                f"the deciding held-out examples are {ours:.0f} tokens long (median) and the {name} set {theirs:.0f}: "
                "decisions were made on inputs unlike the reported ones"
            )
        if ctx.data.spec.label_names is not None and split.labels.min() >= 0:
            k = int(max(ctx.heldout.labels.max(), split.labels.max())) + 1
            p = np.bincount(ctx.heldout.labels, minlength=k) / len(ctx.heldout)
            q = np.bincount(split.labels, minlength=k) / len(split)
            tv = 0.5 * float(np.abs(p - q).sum())
            if tv > label_distance:
                out.append(
                    f"the label balance of the deciding examples differs from the {name} set's (total variation "
                    f"distance {tv:.2f})"
                )
    return out
