"""Task specifications: what a task's inputs, labels and metrics are.

A :class:`TaskSpec` is pure description. Where the data comes from (a GLUE
directory, the hub, the user's files, a bundled corpus) is the job of
:mod:`axformer.tasks.sources`, so one spec serves every source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from axformer.errors import AxformerError

# the stages that handle extractive question answering (the search does not yet)
QA_STAGES = ("finetune", "evaluate", "analyze", "optimize", "distill", "export", "benchmark")


@dataclass(frozen=True)
class LocalLayout:
    """How a task's files look in its official directory layout.

    ``text_columns`` and ``label_column`` are header names, or integer column
    positions for header-less files (CoLA). ``label_values`` maps the raw label
    strings to label ids; None for regression scores.
    """

    folder: str
    files: dict[str, str]  # split name -> file name
    text_columns: tuple[str | int, ...]
    label_column: str | int
    header: bool = True
    fmt: str = "tsv"  # "tsv", "jsonl" or "squad" (SQuAD's JSON: articles, paragraphs, questions)
    label_values: dict[str, int] | None = None


@dataclass(frozen=True)
class HubSource:
    """Where the same task lives on the Hugging Face hub (``datasets``)."""

    path: str
    name: str
    splits: dict[str, str]  # our split name -> hub split name
    text_columns: tuple[str, ...]
    label_column: str = "label"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    display_name: str
    benchmark: str  # glue, superglue, builtin, custom
    num_text_fields: int
    label_names: tuple[str, ...] | None  # None for regression
    metrics: tuple[str, ...]
    main_metric: str
    dev_splits: tuple[str, ...] = ("dev",)
    local: LocalLayout | None = None
    hub: HubSource | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_qa(self) -> bool:
        """Extractive question answering: the answer is a span of the context (start and end logits per token)."""
        return self.extra.get("problem") == "extractive-qa"

    @property
    def default_max_length(self) -> int:
        """Tokens per model input unless the user says otherwise: a QA window holds a question and a context."""
        return 384 if self.is_qa else 128

    @property
    def is_regression(self) -> bool:
        return self.label_names is None and not self.is_qa

    @property
    def is_embedding(self) -> bool:
        """An embedding model's task: no head; texts are embedded one by one (pairs scored by cosine)."""
        return bool(self.extra.get("embedding"))

    @property
    def has_gold_pairs(self) -> bool:
        """An embedding task whose examples are gold-scored text pairs (STS-B, ``--problem similarity``; not
        ``--task none``, whose labels are the original's embeddings of single texts): a distillation on single
        texts can train on those pairs beside them."""
        return self.is_embedding and self.num_text_fields == 2

    @property
    def input_fields(self) -> int:
        """Texts in one model input (what a calibration file holds per line): an embedding model embeds one."""
        return 1 if self.is_embedding else self.num_text_fields

    @property
    def num_labels(self) -> int:
        if self.is_qa:
            return 2  # a start and an end logit per token
        return 1 if self.label_names is None else len(self.label_names)

    def require_stage(self, stage: str) -> None:
        """Refuse, in one line, a stage that does not handle this task's family yet (question answering: fine-tuning
        and evaluation only, so far)."""
        if self.is_qa and stage not in QA_STAGES:
            raise AxformerError(
                f"{stage} does not handle question answering yet ({self.display_name}); expected one of "
                f"{', '.join(QA_STAGES)} for QA tasks"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "display_name": self.display_name,
            "benchmark": self.benchmark,
            "num_text_fields": self.num_text_fields,
            "label_names": list(self.label_names) if self.label_names else None,
            "metrics": list(self.metrics),
            "main_metric": self.main_metric,
            "dev_splits": list(self.dev_splits),
            "extra": dict(self.extra),
        }


def _glue(
    name,
    display,
    folder,
    texts,
    label,
    labels,
    metrics,
    main,
    header=True,
    raw=None,
    files=None,
    hub_texts=None,
    hub_splits=None,
    dev_splits=("dev",),
):
    label_values = None
    if labels is not None:
        raw = raw or tuple(str(i) for i in range(len(labels)))
        label_values = {r: i for i, r in enumerate(raw)}
    files = files or {"train": "train.tsv", "dev": "dev.tsv"}
    return TaskSpec(
        name=name,
        display_name=display,
        benchmark="glue",
        num_text_fields=len(texts),
        label_names=labels,
        metrics=metrics,
        main_metric=main,
        dev_splits=dev_splits,
        local=LocalLayout(
            folder=folder, files=files, text_columns=texts, label_column=label, header=header, label_values=label_values
        ),
        hub=HubSource(
            "nyu-mll/glue",
            name,
            hub_splits or {"train": "train", "dev": "validation"},
            hub_texts or tuple(t for t in texts if isinstance(t, str)),
        ),
    )


def _superglue(name, display, hub_name, texts, labels, metrics, main, raw):
    return TaskSpec(
        name=name,
        display_name=display,
        benchmark="superglue",
        num_text_fields=len(texts),
        label_names=labels,
        metrics=metrics,
        main_metric=main,
        local=LocalLayout(
            folder=display,
            files={"train": "train.jsonl", "dev": "val.jsonl"},
            text_columns=texts,
            label_column="label",
            fmt="jsonl",
            label_values={r: i for i, r in enumerate(raw)},
        ),
        hub=HubSource("aps/super_glue", hub_name, {"train": "train", "dev": "validation"}, texts),
    )


_NLI2 = ("entailment", "not_entailment")

BUILTIN_TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        _glue(
            "cola",
            "CoLA",
            "CoLA",
            (3,),
            1,
            ("unacceptable", "acceptable"),
            ("mcc", "accuracy"),
            "mcc",
            header=False,
            hub_texts=("sentence",),
        ),
        _glue("sst2", "SST-2", "SST-2", ("sentence",), "label", ("negative", "positive"), ("accuracy",), "accuracy"),
        _glue(
            "mrpc",
            "MRPC",
            "MRPC",
            ("#1 String", "#2 String"),
            "Quality",
            ("not_equivalent", "equivalent"),
            ("f1", "accuracy"),
            "f1",
            hub_texts=("sentence1", "sentence2"),
        ),
        _glue("stsb", "STS-B", "STS-B", ("sentence1", "sentence2"), "score", None, ("pearson", "spearman"), "pearson"),
        _glue(
            "qqp",
            "QQP",
            "QQP",
            ("question1", "question2"),
            "is_duplicate",
            ("not_duplicate", "duplicate"),
            ("f1", "accuracy"),
            "f1",
        ),
        _glue(
            "mnli",
            "MNLI",
            "MNLI",
            ("sentence1", "sentence2"),
            "gold_label",
            ("entailment", "neutral", "contradiction"),
            ("accuracy",),
            "accuracy",
            raw=("entailment", "neutral", "contradiction"),
            files={"train": "train.tsv", "dev_matched": "dev_matched.tsv", "dev_mismatched": "dev_mismatched.tsv"},
            hub_texts=("premise", "hypothesis"),
            hub_splits={
                "train": "train",
                "dev_matched": "validation_matched",
                "dev_mismatched": "validation_mismatched",
            },
            dev_splits=("dev_matched", "dev_mismatched"),
        ),
        _glue("qnli", "QNLI", "QNLI", ("question", "sentence"), "label", _NLI2, ("accuracy",), "accuracy", raw=_NLI2),
        _glue("rte", "RTE", "RTE", ("sentence1", "sentence2"), "label", _NLI2, ("accuracy",), "accuracy", raw=_NLI2),
        _glue(
            "wnli",
            "WNLI",
            "WNLI",
            ("sentence1", "sentence2"),
            "label",
            ("not_entailment", "entailment"),
            ("accuracy",),
            "accuracy",
        ),
        _superglue(
            "boolq",
            "BoolQ",
            "boolq",
            ("question", "passage"),
            ("False", "True"),
            ("accuracy",),
            "accuracy",
            raw=("false", "true"),
        ),
        _superglue(
            "cb",
            "CB",
            "cb",
            ("premise", "hypothesis"),
            ("entailment", "contradiction", "neutral"),
            ("accuracy", "f1_macro"),
            "f1_macro",
            raw=("entailment", "contradiction", "neutral"),
        ),
        _superglue(
            "superglue-rte", "RTE", "rte", ("premise", "hypothesis"), _NLI2, ("accuracy",), "accuracy", raw=_NLI2
        ),
        # SQuAD v1.1: the official files in DIR/squad (or DIR/SQuAD), or the hub's rajpurkar/squad
        TaskSpec(
            name="squad",
            display_name="SQuAD",
            benchmark="squad",
            num_text_fields=2,
            label_names=None,
            metrics=("f1", "exact_match"),
            main_metric="f1",
            local=LocalLayout(
                folder="squad",
                files={"train": "train-v1.1.json", "dev": "dev-v1.1.json"},
                text_columns=("question", "context"),
                label_column="answers",
                fmt="squad",
            ),
            hub=HubSource(
                "rajpurkar/squad",
                "plain_text",
                {"train": "train", "dev": "validation"},
                ("question", "context"),
                "answers",
            ),  # fmt: skip
            extra={"problem": "extractive-qa"},
        ),
        TaskSpec(
            name="bbcnews",
            display_name="BBC News",
            benchmark="builtin",
            num_text_fields=1,
            label_names=("business", "entertainment", "politics", "sports", "tech"),
            metrics=("accuracy", "f1_macro"),
            main_metric="accuracy",
            extra={"dev_fraction": 0.2, "split_seed": 0},
        ),
    ]
}

_ALIASES = {
    "superglue/rte": "superglue-rte",
    "superglue_rte": "superglue-rte",
    "bbc": "bbcnews",
    "bbc-news": "bbcnews",
    "mnli-m": "mnli",
    "squad-v1": "squad",
    "squad1.1": "squad",
    "squad-v1.1": "squad",
}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def get_task(name: str) -> TaskSpec:
    """Look a benchmark task up by name; case, '-' and '_' do not matter (SST-2 = sst2)."""
    key = _normalise(name)
    key = _ALIASES.get(key, key)
    if key in BUILTIN_TASKS:
        return BUILTIN_TASKS[key]
    squashed = key.replace("-", "")
    for task_name in BUILTIN_TASKS:
        if task_name.replace("-", "") == squashed:
            return BUILTIN_TASKS[task_name]
    raise AxformerError(
        f"unknown task {name!r}; expected one of {', '.join(BUILTIN_TASKS)}, or 'custom' with --train/--dev files"
    )


def custom_task(
    label_names: tuple[str, ...] | None,
    num_text_fields: int,
    name: str = "custom",
    metrics: tuple[str, ...] | None = None,
    main_metric: str | None = None,
    extra: dict[str, Any] | None = None,
) -> TaskSpec:
    """A task over the user's own files: classification when label names are given, extractive QA when ``extra``
    says so, else regression."""
    if metrics is None:
        if (extra or {}).get("problem") == "extractive-qa":
            metrics = ("f1", "exact_match")
        elif label_names is None:
            metrics = ("pearson", "spearman")
        elif len(label_names) == 2:
            metrics = ("accuracy", "f1", "mcc")
        else:
            metrics = ("accuracy", "f1_macro")
    return TaskSpec(
        name=name,
        display_name=name,
        benchmark="custom",
        num_text_fields=num_text_fields,
        label_names=label_names,
        metrics=metrics,
        main_metric=main_metric or metrics[0],
        extra=extra or {},
    )
