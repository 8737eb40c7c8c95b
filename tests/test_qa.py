"""Extractive question answering: files, windows and offsets, answer selection, and SQuAD's own metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from axformer.data.qa_windows import best_answers, make_windows
from axformer.errors import AxformerError
from axformer.evaluation.squad_metrics import exact_match, normalize_answer, squad_scores, token_f1
from axformer.tasks.qa_files import read_qa_file, write_squad
from tests.conftest import SHARED_GLUE, tiny_tokenizer

SQUAD_DEV = SHARED_GLUE.parent / "squad" / "dev-v1.1.json"

CONTEXT = (
    "the red car is fast. the blue car is slow. a green car was good and the red one was bad. "
    "the car that is blue stays. the last car is red and fast and good."
)
QUESTIONS = [  # (question, answer) with the answer's first occurrence in CONTEXT
    ("what is fast?", "the red car"),
    ("which car is slow?", "blue car"),
    ("what was good?", "a green car"),
    ("what stays?", "the car that is blue"),
    ("what is the last car?", "red and fast and good"),
]


def _fixture():
    return [q for q, _ in QUESTIONS], [CONTEXT] * len(QUESTIONS), [CONTEXT.index(a) for _, a in QUESTIONS]


def test_official_metrics_hand_computed():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert exact_match("the Denver Broncos", "Denver Broncos.") == 1.0
    # prediction tokens {denver, broncos, team}, gold {denver, broncos}: P 2/3, R 1, F1 0.8
    assert token_f1("Denver Broncos team", "the Denver Broncos") == pytest.approx(0.8)
    assert token_f1("Carolina", "Denver Broncos") == 0.0
    # the maximum over gold answers, then the mean over questions, in points
    scores = squad_scores(["Denver Broncos team", "Carolina"], [("Broncos", "the Denver Broncos"), ("Panthers",)])
    assert scores["exact_match"] == 0.0 and scores["f1"] == pytest.approx(40.0)
    assert squad_scores(["1990"], [("1989", "1990")]) == {"exact_match": 100.0, "f1": 100.0}


def test_windows_and_offsets_recover_every_gold_answer_exactly(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    questions, contexts, starts = _fixture()
    answers = [a for _, a in QUESTIONS]
    windows = make_windows(tok, questions, contexts, starts, answers, max_length=32, doc_stride=12)
    assert len(windows) > 2 * len(questions)  # the context does not fit: several overlapping windows each
    for i, answer in enumerate(answers):
        holding = [w for w in range(len(windows)) if windows.example[w] == i and windows.start_positions[w] > 0]
        assert holding, f"no window holds answer {i}"
        for w in holding:
            offs = windows.offsets[w]
            s, e = windows.start_positions[w], windows.end_positions[w]
            assert CONTEXT[offs[s][0] : offs[e][1]] == answer
        # every window of the question that does not hold the answer points at the first token
        others = [w for w in range(len(windows)) if windows.example[w] == i and w not in holding]
        assert all(windows.start_positions[w] == 0 == windows.end_positions[w] for w in others)
    # question tokens and special tokens carry no offset: no answer can be cut from them
    first = windows.offsets[0]
    assert first[0] is None and first[1] is None
    # oracle logits at the gold tokens give back every gold text, across windows
    start_logits, end_logits = [], []
    for w in range(len(windows)):
        s, e = np.zeros(len(windows.input_ids[w])), np.zeros(len(windows.input_ids[w]))
        if windows.start_positions[w] > 0:
            s[windows.start_positions[w]] = e[windows.end_positions[w]] = 10.0
        start_logits.append(s)
        end_logits.append(e)
    predicted = [text for text, _ in best_answers(windows, contexts, start_logits, end_logits)]
    assert predicted == answers


def test_answer_selection_respects_order_and_length(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    windows = make_windows(tok, ["what is fast?"], [CONTEXT], max_length=256, doc_stride=16)
    assert len(windows) == 1
    n = len(windows.input_ids[0])
    inside = [t for t, o in enumerate(windows.offsets[0]) if o is not None]
    s, e = np.zeros(n), np.zeros(n)
    s[inside[5]], e[inside[2]] = 9.0, 9.0  # the highest end lies before the highest start: not a span
    e[inside[6]], e[inside[5]] = 5.0, 1.0
    text, score = best_answers(windows, [CONTEXT], [s], [e])[0]
    o = windows.offsets[0]
    assert text == CONTEXT[o[inside[5]][0] : o[inside[6]][1]] and score == pytest.approx(14.0)
    assert (
        best_answers(windows, [CONTEXT], [s], [e], max_answer_length=1)[0][0]
        == CONTEXT[o[inside[5]][0] : o[inside[5]][1]]
    )


@pytest.mark.skipif(not SQUAD_DEV.is_file(), reason=f"SQuAD dev not found at {SQUAD_DEV}")
def test_squad_dev_answers_survive_the_windows(minilm_dir):
    """On real SQuAD questions (the first 300) and MiniLM's tokenizer: every first gold answer is in some window,
    and the offsets cut it back exactly unless it starts or ends inside a word piece."""
    from axformer.models.loading import load_tokenizer

    data = read_qa_file(SQUAD_DEV)
    assert len(data.examples) == 10570 and len(data.articles) == 48
    ex = data.examples[:300]
    tok = load_tokenizer(minilm_dir)
    windows = make_windows(tok, [e.question for e in ex], [e.context for e in ex], [e.starts[0] for e in ex],
                           [e.answers[0] for e in ex], max_length=128, doc_stride=64)  # fmt: skip
    exact = 0
    for i, e in enumerate(ex):
        holding = [w for w in np.flatnonzero(windows.example == i) if windows.start_positions[w] > 0]
        assert holding
        w = holding[0]
        offs = windows.offsets[w]
        cut = e.context[offs[windows.start_positions[w]][0] : offs[windows.end_positions[w]][1]]
        exact += cut == e.answers[0]
        assert normalize_answer(e.answers[0]) in normalize_answer(cut)
    assert exact >= 0.95 * len(ex)  # measured 290 of 300: the rest are digits inside one piece ("8" of "18")


def test_qa_files_round_trip_and_refuse_wrong_offsets(tmp_path):
    questions, contexts, starts = _fixture()
    jsonl = tmp_path / "qa.jsonl"
    jsonl.write_text(
        "\n".join(
            json.dumps({"id": f"q{i}", "question": q, "context": c, "answers": {"text": [a], "answer_start": [s]}})
            for i, (q, c, s, (_, a)) in enumerate(zip(questions, contexts, starts, QUESTIONS))
        )
    )
    got = read_qa_file(jsonl)
    assert [e.answers[0] for e in got.examples] == [a for _, a in QUESTIONS] and got.articles == [CONTEXT]
    again = read_qa_file(write_squad(got.examples, tmp_path / "qa.json"))
    assert again.examples == got.examples
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        jsonl.read_text().splitlines()[0]
        + "\n"
        + json.dumps({"id": "q9", "question": "what?", "context": CONTEXT, "answers": {"text": ["blue car"],
                                                                                        "answer_start": [3]}})
    )  # fmt: skip
    with pytest.raises(AxformerError, match=r"bad.jsonl: line 2: question 'q9': answer 'blue car' does not occur"):
        read_qa_file(bad)
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"question": "what?", "context": CONTEXT}))
    with pytest.raises(AxformerError, match="line 1 lacks answers"):
        read_qa_file(missing)
    with pytest.raises(AxformerError, match="does not exist"):
        read_qa_file(Path(tmp_path / "nope.json"))
