"""Atomic outputs and small JSON helpers.

An interrupted or failed command must never leave a half-written result that a
later stage could mistake for a finished one, so every output directory is
built under a sibling ``NAME.partial`` path and renamed into place at the end.
The partial directory doubles as the resume point of long runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from axformer.errors import AxformerError


def partial_path(final: Path) -> Path:
    return final.with_name(final.name + ".partial")


@contextlib.contextmanager
def atomic_output_dir(final: str | os.PathLike, overwrite: bool = False, keep_partial: bool = True) -> Iterator[Path]:
    """Yield a work directory that becomes ``final`` only if the block succeeds.

    On failure the partial directory is kept when ``keep_partial`` (so a re-run
    can resume from its checkpoints) and removed otherwise; ``final`` is never
    touched unless the block completes.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise AxformerError(f"output directory {final} already exists; pass --overwrite to replace it or choose another --output")
    work = partial_path(final)
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    except BaseException:
        if not keep_partial:
            shutil.rmtree(work, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    work.rename(final)


def _default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON via a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_default) + "\n")
    tmp.replace(path)


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise AxformerError(f"missing file {path}") from None
    except json.JSONDecodeError as exc:
        raise AxformerError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
