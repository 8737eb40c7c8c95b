"""Conventional fine-tuning: the baseline every later stage is measured against.

The loop (AdamW, warmup, length-grouped batches, held-out model selection,
resumable checkpoints) lives in :mod:`axformer.training.loop`; this module
picks the split and the starting weights.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from axformer.models.loading import is_local, load_model, load_tokenizer
from axformer.models.record import ModelRecord
from axformer.tasks.data import TaskData
from axformer.tasks.splits import apply_split, make_heldout_split
from axformer.training.loop import FinetuneConfig, FinetuneResult, LabelObjective, train_model
from axformer.utils.device import resolve_device

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "training_split"]


def training_split(model: str, data: TaskData, config: FinetuneConfig):
    """The held-out split (the one recorded with ``model`` when it was trained on this data), the training part and the
    held-out part.
    """
    prior = ModelRecord.load(model) if is_local(model) else ModelRecord()
    if (
        prior.split is not None
        and prior.task
        and prior.task.get("name") == data.spec.name
        and prior.split.train_fingerprint == data.train.fingerprint()
    ):
        split = prior.split  # keep the held-out examples of the model we start from
    else:
        split = make_heldout_split(data.train, config.heldout_fraction, config.seed)
    train_part, heldout = apply_split(data, split)
    return prior, split, training_subset(train_part, config.max_train_examples, config.seed), heldout


def training_subset(train_part, max_examples: int | None, seed: int):
    """The seeded subset ``--max-train-examples`` trains on (all of the training part when None)."""
    if max_examples is None or max_examples >= len(train_part):
        return train_part
    return train_part.subset(np.sort(np.random.default_rng(seed).permutation(len(train_part))[:max_examples]))


def finetune(
    model: str | os.PathLike,
    data: TaskData,
    output: str | os.PathLike,
    config: FinetuneConfig | None = None,
    overwrite: bool = False,
) -> FinetuneResult:
    """Fine-tune ``model`` on ``data`` and save the best held-out checkpoint to ``output``.

    Re-running the same call after an interruption resumes from the last
    checkpoint in ``output.partial`` (same model, data and config).
    """
    config = config or FinetuneConfig()
    config.validate()
    model = str(model)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    prior, split, train_part, heldout = training_split(model, data, config)
    tokenizer = load_tokenizer(model)
    net = load_model(model, data.spec, new_head=config.new_head, allow_pickle=config.allow_pickle, device=device)
    key = {"model": model, "task": data.spec.name, "train": data.train.fingerprint()}
    return train_model(
        net,
        tokenizer,
        data,
        split,
        train_part,
        heldout,
        output,
        config,
        LabelObjective(data.spec.is_regression),
        {"stage": "finetune", "base_model": model},
        prior,
        key,
        device,
        overwrite,
    )
