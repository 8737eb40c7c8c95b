"""Sentence-embedding models: sentence-transformers' layout, pairs scored by cosine, fidelity, distillation,
reloading where users work (SentenceTransformer, Auto classes) and the ONNX artifact's encode()."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from axformer.data.batching import collate, encode
from axformer.errors import AxformerError
from axformer.models.loading import load_embedder, load_model, load_tokenizer, save_model
from axformer.surgery.prune import current_structure, prune
from axformer.tasks.data import Split
from axformer.tasks.sources import load_custom
from tests.conftest import ARCHS, make_tiny_model_dir, make_tiny_sentence_model, write_similarity_files

st = pytest.importorskip("sentence_transformers")

TEXTS = ["red car blue", "the good movie was long", "bad", "a blue green car and a red one", "movie"]


def embeddings(net, tok, texts=TEXTS) -> np.ndarray:
    enc = encode(tok, Split("t", [(t,) for t in texts], np.zeros(len(texts))), 48)
    with torch.no_grad():
        return net(**collate(enc, np.arange(len(texts)), with_labels=False)).logits.numpy()


def similarity_task(tmp_path):
    train, dev = write_similarity_files(tmp_path / "sts")
    return load_custom(train, dev, ("sentence1", "sentence2"), "score", "similarity", name="toy-sts")


@pytest.mark.parametrize(("arch", "pooling", "normalize"), [
    ("bert", "mean", True), ("bert", "cls", False), ("bert", "max", True), ("mpnet", "mean", True),
    ("distilbert", "mean", True), ("roberta", "cls", True),
])  # fmt: skip
def test_embeddings_are_sentence_transformers_own(tmp_path, arch, pooling, normalize):
    path = make_tiny_sentence_model(tmp_path / "st", arch, pooling, normalize)
    ours = embeddings(load_embedder(str(path)), load_tokenizer(path))
    theirs = st.SentenceTransformer(str(path), device="cpu").encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_pairs_are_embedded_text_by_text_and_scored_by_cosine(tmp_path):
    path = make_tiny_sentence_model(tmp_path / "st")
    net, tok = load_embedder(str(path)), load_tokenizer(path)
    pairs = [(TEXTS[0], TEXTS[1]), (TEXTS[2], TEXTS[3]), (TEXTS[4], TEXTS[0])]
    enc = encode(tok, Split("p", pairs, np.array([0.1, 0.5, 0.9], np.float32)), 48, separate=True)
    assert len(enc) == 3 and enc.group == 2 and len(enc.input_ids) == 6
    assert enc.lengths.tolist() == [max(len(enc.input_ids[2 * i]), len(enc.input_ids[2 * i + 1])) for i in range(3)]
    sub = enc.subset([2, 0])
    assert [x.tolist() for x in sub.input_ids] == [enc.input_ids[i].tolist() for i in (4, 5, 0, 1)]
    batch = collate(enc, np.array([1, 2]))
    assert batch["input_ids"].shape[0] == 4 and int(batch["group_size"]) == 2
    batch.pop("labels")
    with torch.no_grad():
        cos = net(**batch).logits[:, 0].numpy()
    e = embeddings(net, tok)
    expected = [e[2] @ e[3] / np.linalg.norm(e[2]) / np.linalg.norm(e[3]), e[4] @ e[0] / np.linalg.norm(e[4])]
    np.testing.assert_allclose(cos, [expected[0], expected[1] / np.linalg.norm(e[0])], atol=1e-5)


def test_similarity_tasks_scale_scores_and_refuse_classification(tmp_path):
    data = similarity_task(tmp_path)
    spec = data.spec
    assert spec.is_embedding and spec.main_metric == "spearman" and spec.extra["label_scale"] == 5.0
    assert data.train.labels.max() <= 1.0 and data.dev["dev"].labels.min() >= 0.0
    from axformer.tasks.similarity import as_embedding_task
    from tests.conftest import write_sentiment_files

    train, dev = write_sentiment_files(tmp_path / "cls")
    with pytest.raises(AxformerError, match="classification task; expected a similarity task"):
        as_embedding_task(load_custom(train, dev, ("text",), "label", "classification"))


def test_a_directory_that_is_not_a_sentence_transformers_model_is_refused(tmp_path, monkeypatch, capsys):
    from tests.test_cli import assert_clean_failure, run_cli

    train, dev = write_similarity_files(tmp_path / "sts")
    model = make_tiny_model_dir(tmp_path / "classifier", "bert", num_labels=1)
    out = tmp_path / "eval"
    code, _, err = run_cli(
        monkeypatch, capsys, "evaluate", str(model), "--embedding", "--task", "custom", "--train", str(train),
        "--dev", str(dev), "--text-column", "sentence1", "--text-column", "sentence2", "--label-column", "score",
        "--problem", "similarity", "-o", str(out),
    )  # fmt: skip
    assert_clean_failure(code, err, out, "not a sentence-transformers model \\(no modules.json\\)")


@pytest.mark.parametrize("arch", ["bert", "mpnet", "distilbert"])
def test_a_pruned_embedder_loads_in_sentence_transformers(tmp_path, arch):
    """Per-layer head counts no stock config expresses: SentenceTransformer(OUT) loads it (through AutoModel, which
    `import axformer` taught the axformer-pruned type) and gives axformer's embeddings."""
    import axformer  # noqa: F401

    path = make_tiny_sentence_model(tmp_path / "st", arch)
    data = similarity_task(tmp_path)
    net, tok = load_model(str(path), data.spec), load_tokenizer(path)
    prune(net, ["L0.attn.head1", "L2.attn.head0", "L1.ffn.group2of12"])
    before = embeddings(net, tok)
    save_model(net, tok, tmp_path / "pruned")
    assert json.loads((tmp_path / "pruned" / "config.json").read_text())["model_type"] == "axformer-pruned"
    assert (tmp_path / "pruned" / "modules.json").is_file() and (tmp_path / "pruned" / "1_Pooling").is_dir()
    again = load_model(tmp_path / "pruned", data.spec)
    assert current_structure(again).to_dict() == current_structure(net).to_dict()
    np.testing.assert_allclose(embeddings(again, tok), before, atol=1e-6)
    theirs = st.SentenceTransformer(str(tmp_path / "pruned"), device="cpu").encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(theirs, before, atol=1e-5)


def test_masked_candidates_score_like_the_physically_pruned_embedder(tmp_path):
    from axformer.evaluation.engine import EvaluationEngine
    from axformer.inference import run_model

    path = make_tiny_sentence_model(tmp_path / "st")
    data = similarity_task(tmp_path)
    net, tok = load_model(str(path), data.spec), load_tokenizer(path)
    enc = encode(tok, data.dev["dev"], 48, separate=True)
    engine = EvaluationEngine(net, enc, data.spec, batch_size=8)
    removed = ["L0.attn.head2", "L1.ffn", "L2.ffn.group0of12"]
    masked = engine.evaluate(removed)
    engine.close()
    pruned = load_model(str(path), data.spec)
    prune(pruned, removed)
    direct = run_model(pruned, enc, True, 8)
    np.testing.assert_allclose(masked.logits, direct.logits, atol=1e-5)
    np.testing.assert_allclose(masked.losses, direct.losses, atol=1e-5)
    assert set(masked.metrics) == {"spearman", "pearson"}


def test_fidelity_pool_measures_cosine_to_the_original_and_stops_exactly(tmp_path):
    from axformer.evaluation.context import load_context
    from axformer.evaluation.engine import EvaluationEngine, PartialResult
    from axformer.evaluation.fidelity import COSINE, COSINE_P5, FidelityEngine, _CosineTooLow, fidelity_pool

    path = make_tiny_sentence_model(tmp_path / "st")
    data = similarity_task(tmp_path)
    ctx = load_context(str(path), data, device="cpu")
    pool = fidelity_pool(ctx, list(data.train.texts[:40]))
    assert len(pool) == len({t for row in data.train.texts[:40] for t in row}) and pool.labels.shape[1] == 32
    engine = FidelityEngine(EvaluationEngine(ctx.model, ctx.encoded, ctx.data.spec), ctx, pool)
    assert engine.reference.metrics[COSINE] == pytest.approx(100.0, abs=1e-3)
    worse = engine.evaluate(["L1.attn", "L2.ffn"])
    assert worse.metrics[COSINE] < 100.0 and worse.metrics[COSINE_P5] <= worse.metrics[COSINE]
    from axformer.tasks.metrics import compute_metrics

    pruned = load_model(str(path), data.spec)
    prune(pruned, ["L1.attn", "L2.ffn"])
    expected = compute_metrics((COSINE,), pool.labels, embeddings(pruned, ctx.tokenizer, [t[0] for t in pool.texts]))
    assert worse.metrics[COSINE] == pytest.approx(expected[COSINE], abs=1e-3)
    engine.close()
    stop = _CosineTooLow(90.0)  # mean loss (1 - cosine) may reach 0.1
    done = np.array([True, True, False, False])
    assert not stop.hopeless(PartialResult(done, np.array([0.2, 0.18, 0, 0]), np.zeros((4, 2))))  # 0.38/4 < 0.1
    assert stop.hopeless(PartialResult(done, np.array([0.3, 0.2, 0, 0]), np.zeros((4, 2))))


def test_optimize_compresses_an_embedding_model_end_to_end(tmp_path):
    """The speed goal on a similarity task: fidelity guarded, recovery by embedding distillation, a result in
    sentence-transformers' layout with its report; then the export's onnx/model.onnx encodes like PyTorch."""
    from axformer.export.artifact import ExportConfig, export_model
    from axformer.runtime.predictor import Predictor
    from axformer.search.config import OptimizeConfig, Recovery, Tolerance
    from axformer.search.optimize import optimize

    path = make_tiny_sentence_model(tmp_path / "st")
    data = similarity_task(tmp_path)
    cfg = OptimizeConfig(goal="speed", device="cpu", progress=False, latency_examples=5, groups=4,
                         tolerance=Tolerance(max_drop=5.0), recovery=Recovery(mode="distill", epochs=1.0))  # fmt: skip
    report = optimize(str(path), data, None, tmp_path / "run", cfg)
    out = tmp_path / "run"
    assert {"cosine", "cosine_p5"} <= set(report["search"]["thresholds"])
    fid = report["fidelity"]["training texts"]
    assert 0 < fid["cosine_p5"] <= fid["cosine"] <= 100.0 + 1e-6
    assert (out / "modules.json").is_file() and (out / "teacher_embeddings.npy").exists() is False
    ours = embeddings(load_model(out), load_tokenizer(out))
    theirs = st.SentenceTransformer(str(out), device="cpu").encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(theirs, ours, atol=1e-5)

    art = tmp_path / "artifact"
    export_model(out, art, ExportConfig(precision="fp32", device="cpu", max_examples=40))
    assert (art / "onnx" / "model.onnx").is_file() and not (art / "model.onnx").exists()
    assert (art / "modules.json").is_file() and (art / "1_Pooling" / "config.json").is_file()
    with Predictor(art) as p:
        np.testing.assert_allclose(p.encode(TEXTS), ours, atol=1e-4)
        cos = p.predict([(TEXTS[0], TEXTS[1])])[0, 0]
    assert cos == pytest.approx(float(ours[0] @ ours[1] / np.linalg.norm(ours[0]) / np.linalg.norm(ours[1])), abs=1e-4)
    int8 = tmp_path / "int8"
    export_model(out, int8, ExportConfig(precision="int8", device="cpu", max_examples=40, max_drop=100.0))
    q = Predictor(int8).encode(TEXTS)
    cosines = (q * ours).sum(1) / np.linalg.norm(q, axis=1) / np.linalg.norm(ours, axis=1)
    assert cosines.min() > 0.9


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in ("deberta-v2", "modernbert")])
def test_every_family_exports_an_embedding_graph(tmp_path, arch):
    from axformer.export.onnx_export import export_onnx
    from axformer.runtime.backends import OnnxModel

    path = make_tiny_sentence_model(tmp_path / "st", arch)
    net, tok = load_embedder(str(path)), load_tokenizer(path)
    prune(net, ["L0.attn.head1", "L1.ffn.group2of12"])
    export_onnx(net, tmp_path / "m.onnx")
    runner = OnnxModel(tmp_path / "m.onnx")
    assert runner.output_name == "sentence_embedding"
    np.testing.assert_allclose(embeddings(runner, tok), embeddings(net, tok), atol=1e-4)


def test_unlabelled_texts_only_run_every_stage(tmp_path):
    """``--task none --calibration-texts``: the original's embeddings are the labels, fidelity is the metric, and
    the pipeline runs through export, benchmark and report; the result reloads in sentence-transformers."""
    import random

    from axformer.pipeline.run import run_pipeline
    from tests.conftest import WORDS
    from tests.test_pipeline import _cfg

    rng = random.Random(3)
    texts = tmp_path / "texts.txt"
    lines = [" ".join(rng.choice(WORDS[5:60]) for _ in range(rng.randint(2, 9))) for _ in range(150)]
    lines += [" ".join(rng.choice(WORDS[5:60]) for _ in range(300)) for _ in range(10)]  # later windows distilled too
    texts.write_text("".join(t + "\n" for t in lines))
    model = make_tiny_sentence_model(tmp_path / "st")
    out = tmp_path / "run"
    cfg = _cfg(model, out, task="none", embedding=True)
    cfg.search.calibration_texts = str(texts)
    cfg.search.tolerance.max_drop, cfg.search.tolerance.max_loss_increase = 10.0, None
    cfg.export.max_drop = 10.0
    cfg.search.recovery.mode, cfg.search.recovery.epochs = "distill", 1.0
    result = run_pipeline(cfg, progress=lambda m: None)
    assert result.ran == ["analyze", "search", "export", "benchmark", "report"]
    record = json.loads((out / "3-search" / "axformer.json").read_text())["task"]
    assert record["name"] == "none" and record["source"]["kind"] == "texts"
    search = json.loads((out / "3-search" / "report.json").read_text())
    assert set(search["search"]["thresholds"]) == {"cosine", "cosine_p5"}
    assert search["search"]["thresholds"]["cosine"] == pytest.approx(90.0)  # 100 - the tolerance
    if search["recovery"] is not None:  # something was removed: distilled on the texts and their later windows
        assert search["recovery"]["budget"]["windows"] > 0
    bench = json.loads((out / "5-benchmark" / "benchmark.json").read_text())
    devs = [r["dev"]["metrics"]["cosine"] for r in bench["rows"]]
    assert all(0 < c <= 100.0 + 1e-6 for c in devs)
    assert (out / "4-export" / "onnx" / "model.onnx").is_file()
    theirs = st.SentenceTransformer(str(out / "3-search"), device="cpu").encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(theirs, embeddings(load_model(out / "3-search"), load_tokenizer(model)), atol=1e-5)


def test_finetuning_an_embedding_model_trains_the_cosine_and_keeps_its_layout(tmp_path):
    """``axformer finetune --embedding``: sentence-transformers' CosineSimilarityLoss on the pairs (no head is
    added); the dev loss falls and the result is still a sentence-transformers model."""
    from axformer.evaluation.scores import evaluate
    from axformer.training.finetune import FinetuneConfig, finetune

    path = make_tiny_sentence_model(tmp_path / "st")
    data = similarity_task(tmp_path)
    cfg = FinetuneConfig(epochs=4, learning_rate=3e-3, batch_size=16, max_seq_length=48, device="cpu")
    res = finetune(str(path), data, tmp_path / "tuned", cfg)
    before = evaluate(str(path), data, splits=("dev",), device="cpu").splits["dev"]
    after = res.evaluation.splits["dev"]
    assert after.loss < 0.5 * before.loss  # the cosines learn the scores' scale (word overlap ranks well untrained)
    assert (res.output / "modules.json").is_file() and (res.output / "1_Pooling" / "config.json").is_file()
    theirs = st.SentenceTransformer(str(res.output), device="cpu").encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(theirs, embeddings(load_model(res.output), load_tokenizer(path)), atol=1e-5)


def test_task_none_needs_an_embedding_model_and_texts(tmp_path, monkeypatch, capsys):
    from tests.test_cli import assert_clean_failure, run_cli

    model = make_tiny_sentence_model(tmp_path / "st")
    out = tmp_path / "run"
    code, _, err = run_cli(monkeypatch, capsys, "optimize", str(model), "--task", "none", "--embedding", "-o", str(out))
    assert_clean_failure(code, err, out, "--task none compresses an embedding model on unlabelled texts; expected")
    few = tmp_path / "few.txt"
    few.write_text("one text\nanother text\n")
    code, _, err = run_cli(monkeypatch, capsys, "optimize", str(model), "--task", "none", "--embedding",
                           "--calibration-texts", str(few), "-o", str(out))  # fmt: skip
    assert_clean_failure(code, err, out, "holds 2 distinct texts; fidelity-only compression needs at least 20")


def test_an_embedding_model_is_compressed_by_the_search_not_the_recipe(tmp_path, monkeypatch, capsys):
    """auto picks the search for an embedding model however many texts it has (86k unlabelled texts resolved to
    the recipe, which then failed with a traceback: the model records no held-out split); the recipe asked for
    by name is refused in one line before anything is written."""
    from transformers import BertConfig

    from axformer.pipeline.config import AUTO_FEWER_LAYERS_EXAMPLES, PipelineConfig
    from tests.test_cli import assert_clean_failure, run_cli

    cfg = PipelineConfig.build(preset="fastest-within-1", overrides={"model": "x"})
    cfg.search.resolve_strategy(10 * AUTO_FEWER_LAYERS_EXAMPLES, BertConfig(), embedding=True)
    assert cfg.search.strategy == "search" and cfg.search.student_layers is None
    model = make_tiny_sentence_model(tmp_path / "st")
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"{TEXTS[i % 5]} {i}\n" for i in range(40)))
    out = tmp_path / "run"
    code, _, err = run_cli(monkeypatch, capsys, "optimize", str(model), "--embedding", "--task", "none",
                           "--calibration-texts", str(texts), "--strategy", "fastformers", "--student-layers", "2",
                           "-o", str(out))  # fmt: skip
    assert_clean_failure(code, err, out, "--strategy fastformers: ")
    assert "records no held-out split (it is an embedding model axformer did not fine-tune)" in err


def test_the_benchmark_times_an_embedding_model_text_by_text(tmp_path):
    """Every row of a similarity task's benchmark (padded baseline, ONNX Runtime baselines, peak memory):
    dev Spearman of the pair cosines, and timing one text per request."""
    from axformer.benchmark.run import BenchmarkConfig, benchmark

    path = make_tiny_sentence_model(tmp_path / "st")
    data = similarity_task(tmp_path)
    net = load_model(str(path), data.spec)
    prune(net, ["L1.ffn"])
    save_model(net, load_tokenizer(path), tmp_path / "pruned")
    cfg = BenchmarkConfig(lengths=(16,), latency_examples=6, throughput_examples=40, fixed_requests=2, rounds=1,
                          instances=0, baseline_model=str(path))  # fmt: skip
    result = benchmark([str(tmp_path / "pruned")], tmp_path / "bench", data, config=cfg, progress=lambda m: None)
    rows = result["rows"]
    assert len(rows) >= 4 and all(set(r["dev"]["metrics"]) == {"spearman", "pearson"} for r in rows)
    assert all(r["peak_memory_mib"] is not None for r in rows)
    unpruned = [r for r in rows if r["path"] == str(path)]
    assert unpruned and unpruned[0]["dev"]["metrics"]["spearman"] == pytest.approx(
        evaluate_spearman(load_embedder(str(path)), load_tokenizer(path), data), abs=1e-3
    )


def evaluate_spearman(net, tok, data) -> float:
    from scipy import stats

    dev = data.dev["dev"]
    e1, e2 = embeddings(net, tok, [a for a, _ in dev.texts]), embeddings(net, tok, [b for _, b in dev.texts])
    cos = (e1 * e2).sum(1) / np.linalg.norm(e1, axis=1) / np.linalg.norm(e2, axis=1)
    return 100 * float(stats.spearmanr(dev.labels, cos)[0])


def test_a_distilled_student_is_one_more_step_and_distils_on_calibration_texts_but_no_dev_or_heldout_text(tmp_path):
    import random

    from axformer.search.config import FidelityDecision, OptimizeConfig, Recovery, Tolerance
    from axformer.search.optimize import optimize
    from axformer.tasks.splits import apply_split
    from tests.conftest import WORDS

    path = make_tiny_sentence_model(tmp_path / "st")
    data = similarity_task(tmp_path)
    rng = random.Random(5)
    fresh = [" ".join(rng.choice(WORDS[5:60]) for _ in range(rng.randint(2, 7))) for _ in range(60)]
    dev_texts = [t for pair in data.dev["dev"].texts for t in pair]
    calibration = tmp_path / "texts.txt"
    calibration.write_text("".join(t + "\n" for t in [*fresh, *dev_texts[:10], *fresh[:5]]))
    cfg = OptimizeConfig(goal="speed", device="cpu", progress=False, latency_examples=5, groups=4,
                         tolerance=Tolerance(max_drop=1.0), calibration_texts=str(calibration),
                         fidelity=FidelityDecision(min_cosine=99.99, min_cosine_p5=99.9),  # the search removes nothing
                         recovery=Recovery(mode="distill", epochs=1.0, student_layers="2"))  # fmt: skip
    report = optimize(str(path), data, None, tmp_path / "run", cfg)
    student = report["recovery"]["student"]
    assert len(student["layers"]) == 2 and student["layers"][0] == 0 and student["layers"][-1] == 2
    from axformer.models.record import ModelRecord

    split = ModelRecord.load(tmp_path / "run").split
    train, held = apply_split(data, split)
    seen = {t for rows in (data.dev["dev"].texts, train.texts, held.texts) for row in rows for t in row}
    expected = len({t for t in fresh if t not in seen})
    assert report["recovery"]["budget"]["calibration_texts"] == expected
    assert report["recovery"]["config"]["hard_weight"] == 1.0  # the gold pairs are trained on beside the texts
    text = (tmp_path / "run" / "report.md").read_text()
    assert "Student (--student-layers): the teacher's layers 0, 2 kept" in text
    assert f"plus {expected} unlabelled calibration texts" in text
    if student["kept"]:
        assert len(current_structure(load_model(tmp_path / "run")).present_layers) == 2


def test_distilling_on_single_texts_trains_on_gold_pairs_beside_them(tmp_path):
    """With unlabelled texts an embedder distils text by text; with a hard weight, half a batch of the gold-scored
    training pairs is trained on beside every batch (CosineSimilarityLoss), drawn reproducibly from the batch."""
    from axformer.distill import DistillConfig
    from axformer.distill.embedding import EmbeddingDistillObjective
    from axformer.inference import per_example_loss

    path = make_tiny_sentence_model(tmp_path / "st")
    teacher, tok = load_embedder(str(path)), load_tokenizer(path)
    student = load_embedder(str(path))
    prune(student, ["L1"])
    data = similarity_task(tmp_path)
    pairs = encode(tok, data.train.subset(np.arange(30)), 48, separate=True)
    singles = Split("s", [(t,) for t in TEXTS], np.zeros(len(TEXTS), np.float32))
    enc = encode(tok, singles, 48)
    cfg = DistillConfig(batch_size=8, hard_weight=1.0)
    objective = EmbeddingDistillObjective(teacher, cfg, pairs)
    objective.prepare(tmp_path, enc, torch.device("cpu"))
    assert objective.describe()["gold_pairs"] == {"pairs": 30, "per_step": 4}
    idx = np.array([0, 2, 3])
    batch = collate(enc, idx)
    with torch.no_grad():
        total, terms = objective.loss(student, dict(batch), idx)
        gold = objective.gold_batch(idx, "cpu")
        assert gold["input_ids"].shape[0] == 8 and int(gold["group_size"]) == 2  # 4 pairs, text by text
        scores = gold.pop("labels")
        expected = per_example_loss(student(**gold).logits, scores, True).mean()
    assert terms["hard"] == pytest.approx(float(expected), rel=1e-5)
    assert float(total) == pytest.approx(terms["embedding"] + terms["hard"], rel=1e-5)
    again = objective.gold_batch(idx, "cpu")["input_ids"]
    assert torch.equal(again, objective.gold_batch(idx, "cpu")["input_ids"])  # a resumed run draws the same
    draws = {tuple(objective.gold_batch(np.array([i]), "cpu")["labels"].tolist()) for i in range(5)}
    assert len(draws) > 1  # and every batch its own pairs
    plain = EmbeddingDistillObjective(teacher, DistillConfig(batch_size=8), pairs)
    plain.prepare(tmp_path, enc, torch.device("cpu"))
    with torch.no_grad():
        _, terms = plain.loss(student, dict(batch), idx)
    assert "hard" not in terms and "gold_pairs" not in plain.describe()


def test_recovery_of_an_embedder_weighs_gold_pairs_only_where_it_has_them(tmp_path):
    from axformer.search.config import Recovery

    scored = similarity_task(tmp_path).spec
    assert Recovery(mode="distill").distill_hard_weight(scored) == 1.0
    assert Recovery(mode="distill", hard_weight=0.0).distill_hard_weight(scored) == 0.0
    from axformer.models.labelled_texts import texts_task

    path = tmp_path / "texts.txt"
    path.write_text("".join(f"{TEXTS[i % 5]} {i}\n" for i in range(40)))
    texts = texts_task(path, make_tiny_sentence_model(tmp_path / "st")).spec  # labels are the original's embeddings
    assert Recovery(mode="distill").distill_hard_weight(texts) == 0.0
    from tests.conftest import write_sentiment_files

    train, dev = write_sentiment_files(tmp_path / "cls")
    classification = load_custom(train, dev, ("text",), "label", "classification").spec
    assert Recovery(mode="distill").distill_hard_weight(classification) == 0.0
    with pytest.raises(AxformerError, match="--recover-hard-weight -1"):
        Recovery(mode="distill", hard_weight=-1.0).validate()
    Recovery(mode="distill", hard_weight=1.0).check_for(scored, calibration_texts=True)  # pairs beside the texts
    for windows, calibration in ((2, False), (0, True)):  # a classifier's gold-label loss skips unlabelled inputs
        Recovery(mode="distill", hard_weight=1.0, windows=windows).check_for(classification, calibration)
    assert scored.has_gold_pairs and not texts.has_gold_pairs and not classification.has_gold_pairs
    with pytest.raises(AxformerError, match="whose texts have no gold labels"):  # --task none: none at all
        Recovery(mode="distill", hard_weight=1.0).check_for(texts, calibration_texts=True)


def test_the_texts_task_labels_with_the_original_on_the_default_device(tmp_path):
    from axformer.models.labelled_texts import texts_task

    model = make_tiny_sentence_model(tmp_path / "st")
    path = tmp_path / "texts.txt"
    path.write_text("".join(f"{TEXTS[i % 5]} {i}\n" for i in range(40)))
    data = texts_task(path, model, device="auto")
    assert len(data.train) + len(data.dev["dev"]) == 40 and len(data.dev["dev"]) == 4
    first = data.train.texts[0][0]
    np.testing.assert_allclose(
        data.train.labels[0], embeddings(load_embedder(str(model)), load_tokenizer(model), [first])[0], atol=1e-5
    )
