"""``axformer.json``: what axformer knows about a model directory.

It records the task (and how to load its data again), the held-out split, the
sequence length used in training, and the history of stages that produced the
model, so that every later stage (evaluate, analyze, optimize, export) works
from the same facts without the user repeating them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from axformer.errors import AxformerError
from axformer.tasks.data import TaskData
from axformer.tasks.sources import load_task_from_record
from axformer.tasks.splits import SplitRecord
from axformer.utils.io import read_json, write_json

RECORD_FILE = "axformer.json"
FORMAT_VERSION = 1


@dataclass
class ModelRecord:
    task: dict[str, Any] | None = None  # TaskSpec.to_dict() plus "source"
    split: SplitRecord | None = None
    max_seq_length: int = 128
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "task": self.task,
            "split": self.split.to_dict() if self.split else None,
            "max_seq_length": self.max_seq_length,
            "history": self.history,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelRecord:
        if d.get("format_version", 0) > FORMAT_VERSION:
            raise AxformerError(
                f"{RECORD_FILE} has format version {d['format_version']}; this axformer reads up to "
                f"{FORMAT_VERSION}: upgrade axformer"
            )
        return cls(
            task=d.get("task"),
            split=SplitRecord.from_dict(d["split"]) if d.get("split") else None,
            max_seq_length=int(d.get("max_seq_length", 128)),
            history=list(d.get("history", [])),
        )

    def save(self, directory: str | Path) -> None:
        write_json(Path(directory) / RECORD_FILE, self.to_dict())

    @classmethod
    def load(cls, directory: str | Path) -> ModelRecord:
        """The record of a model directory, or an empty one for a model axformer has not seen."""
        path = Path(directory) / RECORD_FILE
        if not path.is_file():
            # a sentence-transformers model states the length it is run at (all-MiniLM-L6-v2: 256)
            st = Path(directory) / "sentence_bert_config.json"
            length = read_json(st).get("max_seq_length") if st.is_file() else None
            config = Path(directory) / "config.json"
            architectures = (read_json(config).get("architectures") or []) if config.is_file() else []
            if length is None and any(a.endswith("ForQuestionAnswering") for a in architectures):
                length = 384  # a QA model's windows, as transformers' QA examples run it
            return cls(max_seq_length=int(length)) if length else cls()
        return cls.from_dict(read_json(path))


def require_model_dir(model: str | os.PathLike, role: str = "model") -> None:
    """A local path that is not a model directory is named as such, not as a model that "records no task"."""
    path = Path(model).expanduser()
    if not path.exists():
        raise AxformerError(f"{role} directory {path} does not exist")
    if not path.is_dir():
        raise AxformerError(f"{role} {path} is a file; expected a model directory")
    if not any((path / f).is_file() for f in ("config.json", "model.onnx", RECORD_FILE)):
        raise AxformerError(
            f"{path} is not a model directory (no config.json); expected a directory written by axformer "
            "or by transformers' save_pretrained"
        )


def task_for(
    model: str | os.PathLike,
    data: TaskData | None = None,
    data_dir: str | os.PathLike | None = None,
    role: str = "model",
) -> TaskData:
    """``data`` when the user selected a task, else the task recorded with ``model`` (its data loaded again)."""
    if data is not None:
        return data
    from axformer.models.loading import is_local

    if is_local(model):
        require_model_dir(model, role)
    record = ModelRecord.load(model) if is_local(model) else ModelRecord()
    if record.task is None:
        raise AxformerError(f"{role} {model} records no task; pass --task (and --data-dir)")
    if record.task.get("source", {}).get("kind") == "texts":  # fidelity only: labelled by the original model
        from axformer.models.labelled_texts import texts_task_from_record

        return texts_task_from_record(record.task["source"])
    return load_task_from_record(record.task, data_dir)
