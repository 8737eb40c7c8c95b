"""The lean batch-1 path: the same predictions as Predictor, session options chosen by timing, the breakdown."""

from __future__ import annotations

import numpy as np
import pytest

from axformer.errors import AxformerError
from axformer.export.artifact import ExportConfig, export_model
from tests.conftest import make_tiny_model_dir, make_tiny_qa_model_dir, write_similarity_files


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_lean_session_predicts_what_the_predictor_predicts(tiny_task, tmp_path, precision):
    from axformer.runtime import Predictor
    from axformer.runtime.lean import LeanSession, SessionChoice

    model, data, _ = tiny_task
    art = tmp_path / precision
    export_model(model, art, ExportConfig(precision=precision, device="cpu", max_drop=100), data)
    texts = [t[0] for t in data.dev["dev"].texts] + [" ".join(["good"] * 5000)]  # truncated as training truncates
    with Predictor(art, threads=1) as p:
        ref = p.predict(texts, batch_size=1)
    for choice in (SessionChoice(), SessionChoice(threads=2, spinning=False, graph_level="extended")):
        lean = LeanSession(art, choice)
        got = np.stack([lean(t) for t in texts])
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
        assert (got.argmax(-1) == ref.argmax(-1)).all()
    label, probability = lean.label(got[0])
    assert label in ("neg", "pos") and 0.5 <= probability <= 1


def test_lean_session_takes_pairs_with_their_token_types(tmp_path):
    from axformer.runtime import Predictor
    from axformer.runtime.lean import LeanSession
    from axformer.tasks.sources import load_custom

    train, dev = write_similarity_files(tmp_path / "data", n_train=20, n_dev=12)
    data = load_custom(train, dev, ("sentence1", "sentence2"), "score", "regression", None, "toypairs")
    model = make_tiny_model_dir(tmp_path / "model", "bert", num_labels=1)
    export_model(model, tmp_path / "onnx", ExportConfig(precision="fp32", device="cpu", max_drop=100), data)
    pairs = data.dev["dev"].texts
    ref = Predictor(tmp_path / "onnx").predict(pairs, batch_size=1)
    lean = LeanSession(tmp_path / "onnx")
    assert lean.type_ids  # BERT's second segment is marked, as in training
    np.testing.assert_allclose(np.stack([lean(tuple(p)) for p in pairs]), ref, rtol=0, atol=1e-5)
    with pytest.raises(AxformerError, match="not a classifier with named labels"):
        lean.label(lean(tuple(pairs[0])))


def test_lean_session_refuses_what_it_does_not_serve(tiny_task, tmp_path):
    from axformer.runtime.lean import LeanSession, SessionChoice

    model, data, _ = tiny_task
    with pytest.raises(AxformerError, match="not an exported artifact"):
        LeanSession(model)
    qa = make_tiny_qa_model_dir(tmp_path / "qa")
    (qa / "model.onnx").write_bytes(b"")
    (qa / "axformer.json").write_text('{"task": {"extra": {"problem": "extractive-qa"}}}')
    with pytest.raises(AxformerError, match="use Predictor.answer"):
        LeanSession(qa)
    export_model(model, tmp_path / "onnx", ExportConfig(precision="fp32", device="cpu", max_drop=100), data)
    with pytest.raises(AxformerError, match="expected threads >= 1"):
        LeanSession(tmp_path / "onnx", SessionChoice(graph_level="maximal"))


def test_session_options_are_chosen_by_timing_and_the_breakdown_adds_up(tiny_task, tmp_path):
    from axformer.runtime.breakdown import request_breakdown
    from axformer.runtime.lean import SessionChoice, candidate_choices, choose_session

    model, data, _ = tiny_task
    art = tmp_path / "onnx"
    export_model(model, art, ExportConfig(precision="int8", device="cpu", max_drop=100), data)
    texts = [t[0] for t in data.dev["dev"].texts][:10]
    choices = candidate_choices(2)
    assert SessionChoice(threads=1) in choices and SessionChoice(threads=2, spinning=False) in choices
    best, table = choose_session(art, texts, choices, rounds=2)
    assert best in choices and len(table) == len(choices)
    assert all(row["ms_per_request"] > 0 for row in table)
    fastest = min(table, key=lambda row: row["ms_per_request"])
    assert SessionChoice(**{k: v for k, v in fastest.items() if k != "ms_per_request"}) == best
    parts = request_breakdown(art, texts, best, rounds=2)
    assert all(parts[k] > 0 for k in ("tokenize", "prepare", "run", "post", "lean", "predictor"))
    # medians of parts need not add up exactly to the median of their sums; within a factor they do
    assert (
        0.5 * parts["lean"] <= parts["tokenize"] + parts["prepare"] + parts["run"] + parts["post"] <= 2 * parts["lean"]
    )


def test_one_request_takes_the_lean_path_and_answers_as_the_batch_path(tiny_task, tmp_path):
    """Predictor serves a single request through the lean path over its own session (no second copy of the
    weights) and gives what the batch path gives it; several requests, a PyTorch directory and an embedder's
    pair stay on the batch path."""
    from axformer.runtime import Predictor
    from axformer.runtime.lean import LeanSession

    model, data, _ = tiny_task
    art = tmp_path / "int8"
    export_model(model, art, ExportConfig(precision="int8", device="cpu", max_drop=100), data)
    texts = [t[0] for t in data.dev["dev"].texts][:6]
    with Predictor(art) as p:
        assert isinstance(p._lean, LeanSession) and p._lean.session is p.model.session
        batch = p.predict(texts, batch_size=1)  # int8 quantizes activations per batch: compare batches of one
        for i, t in enumerate(texts):
            one = p.predict([t])
            assert one.shape == (1, batch.shape[1]) and one.dtype == np.float32
            np.testing.assert_allclose(one, batch[i : i + 1], rtol=0, atol=1e-5)
        assert p._one_request(texts[:2]) is None
    assert Predictor(model)._lean is None  # PyTorch: the batch path

    from axformer.tasks.sources import load_custom
    from tests.conftest import make_tiny_sentence_model

    st = make_tiny_sentence_model(tmp_path / "st")
    train, dev = write_similarity_files(tmp_path / "sts", n_train=20, n_dev=12)
    similarity = load_custom(train, dev, ("sentence1", "sentence2"), "score", "similarity", name="toy-sts")
    emb = tmp_path / "emb"
    export_model(st, emb, ExportConfig(precision="fp32", device="cpu", max_examples=20), similarity)
    with Predictor(emb) as p:
        assert p._lean is not None
        words = ["red car blue", "the good movie was long", "bad"]
        np.testing.assert_allclose(p.encode(words[:1]), p.encode(words)[:1], rtol=0, atol=1e-5)
        assert p._one_request([(words[0], words[1])]) is None  # a pair is two texts: its cosine, batch path
        assert p.predict([(words[0], words[1])]).shape == (1, 1)
