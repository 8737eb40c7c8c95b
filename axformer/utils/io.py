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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

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
        raise AxformerError(
            f"output directory {final} already exists; pass --overwrite to replace it or choose another --output"
        )
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


def run_key(payload: Any) -> str:
    """A short hash of everything that determines a run's results (model, data, config)."""
    import hashlib

    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=_default).encode()).hexdigest()[:16]


def claim_work_dir(work: Path, key: str, marker: str = "run.json") -> bool:
    """Resume in ``work`` only if it was started by the same run; otherwise empty it. True when resuming."""
    key_file = work / marker
    resuming = key_file.exists() and json.loads(key_file.read_text()).get("key") == key
    if not resuming:
        for child in work.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        write_json(key_file, {"key": key})
    return resuming


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one row and flush it to disk, so a killed run loses at most the row being written."""
    with open(path, "a") as f:
        f.write(json.dumps(row, default=_default) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike, repair: bool = False) -> list[dict]:
    """Rows of a JSONL log. A torn last line (the process was killed mid-write) is dropped, and with
    ``repair`` the file is rewritten without it, so that rows appended later start on a line of their own."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    if repair and (len(rows) < len(lines) or not path.read_text().endswith("\n") and rows):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, default=_default) + "\n" for r in rows))
        tmp.replace(path)
    return rows


def refuse_overwriting_inputs(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> None:
    """No command may write its output over one of its inputs: not onto an input, and not onto a directory
    that holds one (replacing it would delete the input). Writing *inside* an input directory
    (``MODEL/eval``) is fine."""
    out = Path(output).expanduser().resolve()
    for given in inputs:
        if given is None or not Path(given).expanduser().exists():
            continue
        src = Path(given).expanduser().resolve()
        if out == src or out in src.parents:
            raise AxformerError(f"output {output} would overwrite the input {given}; choose another --output")
