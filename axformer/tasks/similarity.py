"""Similarity tasks for embedding models: a pair is scored by the cosine of its two texts' embeddings."""

from __future__ import annotations

import dataclasses

import numpy as np

from axformer.errors import AxformerError
from axformer.tasks.data import Split, TaskData


def as_embedding_task(data: TaskData) -> TaskData:
    """``data`` as an embedding task: pairs are embedded text by text and scored by their cosine.

    Gold scores are divided by the training maximum (STS-B's 0-5 becomes 0-1), as sentence-transformers'
    ``CosineSimilarityLoss`` does, so that the per-example loss is the squared error of the cosine; Pearson
    and Spearman do not change under the scaling.
    """
    spec = data.spec
    if spec.is_embedding:
        return data
    if not spec.is_regression or spec.num_text_fields != 2:
        kind = "a classification task" if not spec.is_regression else "a single-text regression task"
        raise AxformerError(
            f"--embedding scores a sentence pair by the cosine of its two embeddings, and {spec.display_name} is "
            f"{kind}; expected a similarity task (stsb, or custom pair files with --problem similarity)"
        )
    scale = float(np.abs(data.train.labels).max()) or 1.0
    # Spearman of the cosine is what embedding models are compared by (MTEB, sentence-transformers' evaluator)
    spec = dataclasses.replace(
        spec,
        metrics=("spearman", "pearson"),
        main_metric="spearman",
        extra={**spec.extra, "embedding": "cosine", "label_scale": scale},
    )

    def scaled(split: Split) -> Split:
        return Split(split.name, split.texts, (split.labels / scale).astype(np.float32))

    return TaskData(spec, scaled(data.train), {k: scaled(v) for k, v in data.dev.items()}, data.source)
