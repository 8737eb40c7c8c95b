"""In-memory task data: texts and labels of each split."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from axformer.tasks.spec import TaskSpec


@dataclass
class Split:
    """One split of a task. ``texts[i]`` is a tuple of one or two strings."""

    name: str
    texts: list[tuple[str, ...]]
    labels: np.ndarray  # int64 class ids, float32 scores for regression, QAExample objects for extractive QA
    # extractive QA: (question, context) texts, encoded as windows of the context that overlap by this many tokens
    doc_stride: int | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int], name: str | None = None) -> Split:
        idx = np.asarray(indices, dtype=np.int64)
        return Split(name or self.name, [self.texts[i] for i in idx], self.labels[idx], self.doc_stride)

    @property
    def is_qa(self) -> bool:
        return self.doc_stride is not None

    @property
    def is_labelled(self) -> bool:
        """Gold labels throughout (unlabelled class ids are -1, as GLUE's test files have them)."""
        if self.is_qa or self.labels.dtype.kind not in "iu":
            return True
        return not len(self.labels) or int(self.labels.min()) >= 0

    def fingerprint(self) -> str:
        """A hash of texts and labels, to detect that a recorded split no longer fits the data."""
        h = hashlib.sha256()
        for text, label in zip(self.texts, self.labels.tolist()):
            h.update("\x1f".join(text).encode())
            h.update(f"\x1e{label}\x1d".encode())
        return h.hexdigest()[:16]


@dataclass
class TaskData:
    """A task's training split and its dev split(s), as loaded from one source."""

    spec: TaskSpec
    train: Split
    dev: dict[str, Split]
    source: dict = field(default_factory=dict)  # how to load it again (recorded with models)
