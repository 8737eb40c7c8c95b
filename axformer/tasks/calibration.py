"""Unlabelled in-domain texts (``--calibration-texts``): what the user's production inputs look like.

They carry no labels, so they never decide on accuracy; they measure how faithful the optimized model stays
to the original on inputs like the ones it will serve (prediction agreement, or output distance for
regression), next to the certificate. Dev texts are removed from them, so a measurement that mentions the
dev set never saw it twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from axformer.errors import AxformerError
from axformer.tasks.sources import read_delimited


def load_calibration_texts(
    path: str | os.PathLike, num_fields: int, columns: tuple[str, ...] | None = None
) -> list[tuple[str, ...]]:
    """Texts (or text pairs) from ``path``.

    ``.txt``: one input per line, the two texts of a pair separated by a tab. ``.csv``/``.tsv``: a header
    row and ``columns`` (one per text field); ``.jsonl``: one object per line with the ``columns`` keys.
    """
    path = Path(path)
    if not path.is_file():
        raise AxformerError(f"--calibration-texts {path} does not exist; expected a .txt, .csv, .tsv or .jsonl file")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise AxformerError(f"cannot read --calibration-texts {path}: {exc}") from None
    out: list[tuple[str, ...]] = []
    if suffix in (".csv", ".tsv", ".jsonl"):
        if not columns or len(columns) != num_fields:
            raise AxformerError(
                f"--calibration-texts {path}: give --calibration-column {num_fields} time(s) (the task has "
                f"{num_fields} text field(s))"
            )
        if suffix == ".jsonl":
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise AxformerError(f"{path}:{n} is not valid JSON ({exc.msg})") from None
                missing = [c for c in columns if c not in row]
                if missing:
                    raise AxformerError(f"{path}:{n} has no field {missing[0]!r}; expected {', '.join(columns)}")
                out.append(tuple(str(row[c]) for c in columns))
        else:
            if not text.strip():
                raise AxformerError(f"--calibration-texts {path} is empty; expected a header row and texts")
            header, rows = read_delimited(path, "," if suffix == ".csv" else "\t", True)
            for c in columns:
                if c not in header:
                    raise AxformerError(f"{path} has no column {c!r}; its columns are {', '.join(header)}")
            idx = [header.index(c) for c in columns]
            for n, row in enumerate(rows, 2):
                if len(row) <= max(idx):
                    raise AxformerError(f"{path}:{n} has {len(row)} columns; expected at least {max(idx) + 1}")
                out.append(tuple(row[i] for i in idx))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t") if num_fields > 1 else [line]
            if len(fields) != num_fields:
                raise AxformerError(
                    f"{path}:{n} has {len(fields)} tab-separated field(s); expected {num_fields} (a sentence pair)"
                )
            out.append(tuple(f.strip() for f in fields))
    out = [t for t in out if any(f.strip() for f in t)]
    if not out:
        raise AxformerError(f"--calibration-texts {path} holds no text; expected one input per line or row")
    return out


def without(texts: list[tuple[str, ...]], excluded: set[tuple[str, ...]]) -> tuple[list[tuple[str, ...]], int]:
    """``texts`` less any that shares a text with ``excluded`` (the dev texts), and how many were removed.

    Compared text by text, whitespace stripped: a calibration pair holding one sentence of a dev pair (in the
    other order, or beside another sentence: STS-B's MSRpar pairs come from the corpus MRPC's dev set comes from)
    is as much a dev text as the pair itself."""
    banned = {t.strip() for row in excluded for t in row}
    kept = [t for t in texts if not any(f.strip() in banned for f in t)]
    return kept, len(texts) - len(kept)


def unseen_by_dev(
    training: list[tuple[str, ...]], calibration: list[tuple[str, ...]], dev: set[tuple[str, ...]]
) -> list[tuple[str, ...]]:
    """Training inputs and calibration inputs for a decision or a vocabulary, less the dev set's. A training
    input goes only when it is a dev input: it is the model's own data (a question answering training example
    shares its article with other questions, a paraphrase pair one sentence with other pairs). A calibration
    input goes when it shares any one text with a dev input (``without``): it is text from elsewhere."""
    return [t for t in training if t not in dev] + without(calibration, dev)[0]


def distillation_inputs(
    calibration: list[tuple[str, ...]],
    seen: list[tuple[str, ...]],
    per_text: bool,
) -> list[tuple[str, ...]]:
    """Calibration texts a distillation may add as inputs (the original labels them): those sharing no text with
    ``seen``, every dev, held-out and training input. Dev texts only report; held-out ones decide and certify,
    and trained on they would flatter both; a training input is already there. ``per_text``: an embedding model
    distils on single texts, so inputs and exclusions are its texts one by one (``as_inputs``)."""
    return without(as_inputs(calibration, per_text), set(as_inputs(seen, per_text)))[0]


def as_inputs(rows: list[tuple[str, ...]], per_text: bool) -> list[tuple[str, ...]]:
    """Rows as model inputs: for an embedding model every distinct text alone (a pair's two texts are two
    inputs, and exclusions compare text by text); otherwise the rows as they are."""
    return list(dict.fromkeys((t,) for row in rows for t in row)) if per_text else list(rows)
