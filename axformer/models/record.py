"""``axformer.json``: what axformer knows about a model directory.

It records the task (and how to load its data again), the held-out split, the
sequence length used in training, and the history of stages that produced the
model, so that every later stage (evaluate, analyze, optimize, export) works
from the same facts without the user repeating them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from axformer.errors import AxformerError
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
            return cls()
        return cls.from_dict(read_json(path))
