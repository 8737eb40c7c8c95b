"""Question answering inputs and outputs as transformers' QA examples do them, shared by training, every
evaluation and the runtime.

In: the question and the context tokenized together, the context truncated only, in windows of
``max_length`` tokens that overlap by ``doc_stride`` (the fast tokenizer's own overflow), each token's
character offsets in the context kept (``None`` for question and special tokens), and the gold span as token
positions where the window holds the whole answer (else the first token, as SQuAD v1.1 training does).

Out: for each question, over all its windows, the ``n_best`` highest start and end logits, spans that lie in the
context, run forward and are at most ``max_answer_length`` tokens long, ranked by the sum of their two logits;
the best is cut from the context by its offsets. Windows exist per question; predictions per question.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from axformer.errors import AxformerError
from axformer.tasks.qa_files import DOC_STRIDE, MAX_SEQ_LENGTH

N_BEST = 20
MAX_ANSWER_LENGTH = 30


@dataclass
class QAWindows:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    offsets: list[list[tuple[int, int] | None]]  # context character span per token; None outside the context
    example: np.ndarray  # the question each window belongs to
    start_positions: np.ndarray  # gold start token (0 when the window does not hold the whole answer)
    end_positions: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)


def make_windows(
    tokenizer,
    questions: list[str],
    contexts: list[str],
    starts: list[int] | None = None,
    answers: list[str] | None = None,
    max_length: int = MAX_SEQ_LENGTH,
    doc_stride: int = DOC_STRIDE,
) -> QAWindows:
    """Windows of every (question, context); with ``starts``/``answers`` (the first gold answer) their labels."""
    if not getattr(tokenizer, "is_fast", False):
        raise AxformerError(
            f"question answering needs a fast tokenizer (offset mappings); {type(tokenizer).__name__} is not one"
        )
    if doc_stride >= max_length:
        raise AxformerError(f"--doc-stride {doc_stride} with --max-seq-length {max_length}; expected a smaller stride")
    pad_right = tokenizer.padding_side == "right"
    enc = tokenizer(
        [q.lstrip() for q in questions] if pad_right else contexts,
        contexts if pad_right else [q.lstrip() for q in questions],
        truncation="only_second" if pad_right else "only_first",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    context_id = 1 if pad_right else 0
    example = np.asarray(enc["overflow_to_sample_mapping"], dtype=np.int64)
    offsets, s_pos, e_pos = [], [], []
    for w in range(len(enc["input_ids"])):
        seq = enc.sequence_ids(w)
        offs = [tuple(o) if seq[i] == context_id else None for i, o in enumerate(enc["offset_mapping"][w])]
        offsets.append(offs)
        if starts is None or answers is None:
            s_pos.append(0)
            e_pos.append(0)
            continue
        i = int(example[w])
        a_start, a_end = starts[i], starts[i] + len(answers[i])
        inside = [t for t, o in enumerate(offs) if o is not None]
        if not inside or offs[inside[0]][0] > a_start or offs[inside[-1]][1] < a_end:
            s_pos.append(0)  # the answer is not wholly in this window
            e_pos.append(0)
            continue
        s_pos.append(next(t for t in inside if offs[t][1] > a_start))
        e_pos.append(next(t for t in reversed(inside) if offs[t][0] < a_end))
    return QAWindows(
        [list(x) for x in enc["input_ids"]],
        [list(x) for x in enc["token_type_ids"]] if "token_type_ids" in enc else None,
        offsets,
        example,
        np.asarray(s_pos, dtype=np.int64),
        np.asarray(e_pos, dtype=np.int64),
    )


def best_answers(
    windows: QAWindows,
    contexts: list[str],
    start_logits: list[np.ndarray],
    end_logits: list[np.ndarray],
    n_best: int = N_BEST,
    max_answer_length: int = MAX_ANSWER_LENGTH,
) -> list[tuple[str, float]]:
    """The best span's text and score (start + end logit) per question, over all its windows."""
    best: list[tuple[str, float]] = [("", -np.inf)] * len(contexts)
    for w in range(len(windows)):
        i, offs = int(windows.example[w]), windows.offsets[w]
        s, e = np.asarray(start_logits[w])[: len(offs)], np.asarray(end_logits[w])[: len(offs)]
        for a in np.argsort(s)[::-1][:n_best]:
            if offs[a] is None:
                continue
            for b in np.argsort(e)[::-1][:n_best]:
                if offs[b] is None or b < a or b - a + 1 > max_answer_length:
                    continue
                score = float(s[a] + e[b])
                if score > best[i][1]:
                    best[i] = (contexts[i][offs[a][0] : offs[b][1]], score)
    return best
