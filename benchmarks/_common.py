"""What the benchmark scripts share: running an axformer command as printed, and finding a search's output."""

from __future__ import annotations

import os
import platform
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


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment_line() -> str:
    """Hardware and versions, for the line under a table's title."""
    import onnxruntime
    import torch
    import transformers

    return (
        f"{platform.machine()}, {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}"
    )


def commit() -> str:
    """The code a row was measured with (rows accumulate over sessions; a row of older code says so)."""

    def git(*a):
        return subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain", "axformer") else "")


def run_suffix(extra: str) -> str:
    """A directory-name suffix for a run with extra options ('--decision-data runs/d/x.tsv' -> 'decision-data-x')."""
    import re
    import shlex

    parts = [Path(a).stem if "/" in a else a.lstrip("-") for a in shlex.split(extra)]
    return re.sub(r"[^A-Za-z0-9.=]+", "-", "-".join(parts)).strip("-")
