"""Extractive question answering files: SQuAD v1.1 JSON, or JSONL with ``question``, ``context``, ``answers``.

Every answer is checked against its context where it is read: an ``answer_start`` that does not point at the
answer's text is a one-line error naming the file, the line (JSONL) or article (JSON) and the question id,
because a shifted offset silently trains the model on the wrong span and scores it against the wrong one.
Examples keep their article (SQuAD's ``title``; JSONL: a ``title`` field, or the context itself) so that a
held-out split can be taken by article: questions on one context are too alike to be split between the parts
that train and that judge.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from axformer.errors import AxformerError
from axformer.tasks.data import Split

# transformers' QA examples' defaults: windows of 384 tokens overlapping by 128
MAX_SEQ_LENGTH = 384
DOC_STRIDE = 128


@dataclass(frozen=True)
class QAExample:
    id: str
    question: str
    context: str
    answers: tuple[str, ...]  # gold texts (SQuAD dev has up to 3 per question; training has 1)
    starts: tuple[int, ...]  # their character offsets in the context
    article: str = ""


@dataclass
class QAFile:
    path: Path
    examples: list[QAExample] = field(default_factory=list)

    @property
    def articles(self) -> list[str]:
        return list(dict.fromkeys(e.article for e in self.examples))


def _checked(path: Path, where: str, qid: str, question, context, texts, starts, article: str) -> QAExample:
    if not isinstance(question, str) or not question.strip():
        raise AxformerError(f"{path}: {where}: question {qid!r} has no question text; expected a non-empty string")
    if not isinstance(context, str) or not context:
        raise AxformerError(f"{path}: {where}: question {qid!r} has no context; expected a non-empty string")
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts) or not texts:
        raise AxformerError(
            f"{path}: {where}: question {qid!r} has answers {texts!r} at {starts!r}; expected equally long, "
            "non-empty lists of texts and answer_start offsets"
        )
    for text, start in zip(texts, starts):
        if not isinstance(start, int) or not isinstance(text, str) or context[start : start + len(text)] != text:
            found = context[start : start + len(text)] if isinstance(start, int) and isinstance(text, str) else None
            raise AxformerError(
                f"{path}: {where}: question {qid!r}: answer {text!r} does not occur at answer_start {start!r} of its "
                f"context (found {found!r}); expected the answer's character offset in the context"
            )
    return QAExample(str(qid), question, context, tuple(texts), tuple(starts), article)


def qa_example(where: str, record: dict, path: Path | str = "hub") -> QAExample:
    """One question from a record in the hub's (and the JSONL files') layout: id, title, question, context and
    answers {"text": [...], "answer_start": [...]}; checked like a file's."""
    answers = record.get("answers") if isinstance(record.get("answers"), dict) else {}
    return _checked(
        Path(path), where, record.get("id", where), record.get("question"), record.get("context"),
        answers.get("text"), answers.get("answer_start"), str(record.get("title") or record.get("context")),
    )  # fmt: skip


def qa_split(name: str, examples: list[QAExample], doc_stride: int) -> Split:
    """A task split of questions: texts (question, context), labels the examples themselves (gold answers,
    offsets, article), inputs windows of the context overlapping by ``doc_stride`` tokens."""
    labels = np.empty(len(examples), dtype=object)
    labels[:] = examples
    return Split(name, [(e.question, e.context) for e in examples], labels, doc_stride)


def read_qa_file(path: str | os.PathLike) -> QAFile:
    """A SQuAD-layout JSON file (``{"data": [{"title", "paragraphs": [{"context", "qas"}]}]}``) or JSONL."""
    path = Path(path)
    if not path.is_file():
        raise AxformerError(f"question answering file {path} does not exist; expected a SQuAD JSON or a JSONL file")
    out = QAFile(path)
    if path.suffix == ".jsonl":
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise AxformerError(
                    f"{path}: line {n} is not JSON ({e.msg}); expected one JSON object per line"
                ) from None
            missing = [k for k in ("question", "context", "answers") if k not in row]
            if missing:
                raise AxformerError(
                    f"{path}: line {n} lacks {', '.join(missing)}; expected question, context and answers "
                    "({'text': [...], 'answer_start': [...]})"
                )
            out.examples.append(qa_example(f"line {n}", {"id": f"line {n}", **row}, path))
    else:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise AxformerError(f"{path} is not JSON ({e.msg}); expected SQuAD's layout or a .jsonl file") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
            raise AxformerError(f"{path} has no 'data' list; expected SQuAD's layout (data -> paragraphs -> qas)")
        for a, article in enumerate(doc["data"]):
            title = str(article.get("title") or f"article {a}")
            for paragraph in article.get("paragraphs", []):
                for qa in paragraph.get("qas", []):
                    answers = qa.get("answers") or []
                    out.examples.append(
                        _checked(path, f"article {title!r}", qa.get("id", "?"), qa.get("question"),
                                 paragraph.get("context"), [x.get("text") for x in answers],
                                 [x.get("answer_start") for x in answers], title)
                    )  # fmt: skip
    if not out.examples:
        raise AxformerError(f"{path} has no questions; expected at least one question with an answer")
    return out


def write_squad(examples: list[QAExample], path: str | os.PathLike) -> Path:
    """Examples in SQuAD v1.1's layout, grouped by article and context (the benchmark's split files)."""
    data: dict[str, dict[str, list]] = {}
    for e in examples:
        data.setdefault(e.article, {}).setdefault(e.context, []).append(
            {"id": e.id, "question": e.question,
             "answers": [{"text": t, "answer_start": s} for t, s in zip(e.answers, e.starts)]}
        )  # fmt: skip
    doc = {
        "version": "1.1",
        "data": [
            {"title": t, "paragraphs": [{"context": c, "qas": q} for c, q in paras.items()]}
            for t, paras in data.items()
        ],
    }
    Path(path).write_text(json.dumps(doc), encoding="utf-8")
    return Path(path)
