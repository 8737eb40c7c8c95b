"""One way to run resumable stages: a stage whose directory is complete is skipped, its wall time is kept.

Used by the end-to-end pipeline (``axformer optimize``) and the FastFormers recipe: both write each stage to
its own directory, so running the same command again resumes after the last finished stage, and both report
how long each stage took (kept across resumed runs in ``times.json``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from axformer.utils.io import read_json, write_json


@dataclass
class StageRunner:
    root: Path  # holds times.json
    progress: Callable[[str], None] = lambda message: None
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        path = self.root / "times.json"
        self.times: dict[str, float] = read_json(path) if path.exists() else {}

    def run(self, name: str, path: Path, fn: Callable[[Path], object], done: Callable[[Path], bool]) -> Path:
        """Run ``fn(path)`` unless ``done(path)`` says the stage finished already; returns ``path``."""
        if done(path):
            self.skipped.append(name)
            self.progress(f"[{name}] done already: {path}")
            return path
        self.progress(f"[{name}] running -> {path}")
        t0 = time.perf_counter()
        fn(path)
        self.times[name] = time.perf_counter() - t0
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.root / "times.json", self.times)
        self.ran.append(name)
        return path
