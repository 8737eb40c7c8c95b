"""Which task a command works on, as one object: the same options on every command, in the pipeline's config
and in the Python API."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from axformer.tasks.data import TaskData
from axformer.tasks.sources import load_custom, load_task


@dataclass(frozen=True)
class TaskSelection:
    """A benchmark task by name (``task``, from ``data_dir`` or the hub), a custom task from ``train``/``dev``
    files, or nothing at all: then every stage uses the task recorded with the model."""

    task: str | None = None
    data_dir: str | os.PathLike | None = None
    source: str = "auto"
    train: str | os.PathLike | None = None
    dev: str | os.PathLike | None = None
    text_column: tuple[str, ...] | None = None
    label_column: str = "label"
    problem: str = "classification"
    labels: str | None = None  # comma-separated label names in id order
    embedding: bool = False  # the model is a sentence-transformers embedding model: pairs scored by cosine
    doc_stride: int | None = None  # extractive QA: overlap of the context windows (default 128 tokens)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @property
    def given(self) -> bool:
        """False when no task option was given (the model's recorded task applies)."""
        return self.task is not None or self.train is not None or self.dev is not None

    @property
    def is_custom(self) -> bool:
        return self.train is not None or self.dev is not None or (self.task or "").lower() == "custom"

    def load(self) -> TaskData:
        from axformer.errors import AxformerError

        if self.is_custom:
            if self.train is None or self.dev is None:
                raise AxformerError("a custom task needs both --train and --dev files")
            if not self.text_column and self.problem != "extractive-qa":  # QA files name their own fields
                raise AxformerError("a custom task needs --text-column (once, or twice for sentence pairs)")
            names = tuple(s.strip() for s in self.labels.split(",")) if self.labels else None
            name = self.task if self.task and self.task.lower() != "custom" else "custom"
            data = load_custom(
                self.train, self.dev, tuple(self.text_column or ()), self.label_column, self.problem, names,
                name=name, doc_stride=self.doc_stride,
            )  # fmt: skip
        elif self.task is None:
            raise AxformerError("missing --task; expected a task name (see 'axformer tasks') or --train/--dev files")
        else:
            data = load_task(self.task, self.data_dir, self.source, doc_stride=self.doc_stride)
        if self.embedding and not data.spec.is_embedding:
            from axformer.tasks.similarity import as_embedding_task

            data = as_embedding_task(data)
        return data

    def load_if_given(self) -> TaskData | None:
        """The selected task, or None when nothing was selected (the stage falls back to the recorded task)."""
        return self.load() if self.given else None
