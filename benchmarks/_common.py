"""What the benchmark scripts share: running an axformer command as printed, and finding a search's output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_axformer(cmd: list[str]) -> None:
    """Run ``axformer ...`` (the command line the tables print) with this interpreter."""
    print("$", " ".join(cmd), flush=True)
    subprocess.run([sys.executable, "-m", "axformer", *cmd[1:]], check=True)


def searched_dir(out: Path) -> Path:
    """The search's output of an ``axformer optimize`` run: the pipeline's ``3-search`` stage, or the top of a run
    made before the pipeline existed (same model, log and report)."""
    staged = Path(out) / "3-search"
    return staged if (staged / "report.json").exists() or not (Path(out) / "report.json").exists() else Path(out)
