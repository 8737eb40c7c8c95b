"""Extractive question answering through the stages: task loading, the held-out split by article, span heads on
every architecture, fine-tuning and evaluation from the command line, and the errors users get."""

from __future__ import annotations

import json

import numpy as np
import pytest

from axformer.errors import AxformerError
from tests.conftest import ARCHS, NO_TOKEN_TYPES, make_tiny_model_dir, make_tiny_qa_model_dir, write_qa_files
from tests.test_cli import assert_clean_failure, run_cli


def _qa_task(tmp_path, **kw):
    from axformer.tasks.sources import load_custom

    train, dev = write_qa_files(tmp_path / "data", **kw)
    return load_custom(train, dev, (), "label", "extractive-qa", None, "toyqa", doc_stride=12), (train, dev)


def test_the_heldout_split_takes_whole_articles(tmp_path):
    from axformer.tasks.splits import apply_split, make_heldout_split

    data, _ = _qa_task(tmp_path)
    record = make_heldout_split(data.train, 0.25, seed=3)
    train, held = apply_split(data, record)
    assert len(held) > 0 and len(train) + len(held) == len(data.train)
    assert {e.article for e in held.labels}.isdisjoint({e.article for e in train.labels})
    assert {e.context for e in held.labels}.isdisjoint({e.context for e in train.labels})
    assert make_heldout_split(data.train, 0.25, seed=3).heldout_indices == record.heldout_indices  # seeded


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_carries_a_span_head(tmp_path, arch):
    """A classifier checkpoint takes a new span head for a QA task; a QA checkpoint loads as one without a task;
    both give (windows, tokens, 2) start/end logits and the start/end cross-entropy per window."""
    from axformer.data.batching import QAEncoded, encode
    from axformer.inference import run_model
    from axformer.models.loading import load_model, load_tokenizer

    data, _ = _qa_task(tmp_path, n_train=4, n_dev=2)
    for directory, new_head in ((make_tiny_model_dir(tmp_path / "cls", arch), True),
                                (make_tiny_qa_model_dir(tmp_path / "qa", arch), False)):  # fmt: skip
        net = load_model(directory, data.spec, new_head=new_head)
        assert type(net).__name__.endswith("ForQuestionAnswering")
        tok = load_tokenizer(directory)
        if arch in NO_TOKEN_TYPES:  # as these families' own tokenizers do (the tiny one is BERT's)
            tok.model_input_names = ["input_ids", "attention_mask"]
        enc = encode(tok, data.dev["dev"], 32)
        assert isinstance(enc, QAEncoded) and len(enc) > len(data.dev["dev"])  # several windows per question
        out = run_model(net, enc, False)
        assert out.logits.shape == (len(enc), int(enc.lengths.max()), 2)
        assert np.isfinite(out.losses).all() and (out.losses > 0).all()
    assert type(load_model(tmp_path / "qa")).__name__.endswith("ForQuestionAnswering")  # the task from the head


def test_finetune_and_evaluate_a_custom_qa_task(monkeypatch, capsys, tmp_path):
    """The command line fine-tunes a span head on the user's JSONL files and scores SQuAD's F1/EM; the result is a
    plain transformers QA checkpoint; training learns the toy task (an untrained head finds almost nothing)."""
    from transformers import AutoModelForQuestionAnswering

    from axformer.evaluation.scores import evaluate

    train, dev = write_qa_files(tmp_path / "data")
    base = make_tiny_model_dir(tmp_path / "base", "bert")
    out = tmp_path / "tuned"
    common = ["--task", "custom", "--problem", "extractive-qa", "--train", train, "--dev", dev, "--doc-stride", "12"]
    training = ["--max-seq-length", "32", "--epochs", "10", "--lr", "3e-3", "--batch-size", "16", "--new-head"]
    code, _, err = run_cli(monkeypatch, capsys, "finetune", base, "-o", out, *common, *training, "--device", "cpu")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    dev_metrics = metrics["splits"]["dev"]["metrics"] if "splits" in metrics else metrics["dev"]
    assert set(dev_metrics) == {"f1", "exact_match"}
    assert AutoModelForQuestionAnswering.from_pretrained(out) is not None
    tuned = evaluate(out, splits=("dev",), device="cpu").splits["dev"]
    assert tuned.metrics["f1"] == pytest.approx(dev_metrics["f1"])
    untrained = make_tiny_qa_model_dir(tmp_path / "untrained", "bert")
    (untrained / "axformer.json").write_text((out / "axformer.json").read_text())  # same task record, no training
    assert tuned.metrics["f1"] >= evaluate(untrained, splits=("dev",), device="cpu").splits["dev"].metrics["f1"] + 25
    code, stdout, err = run_cli(monkeypatch, capsys, "evaluate", out, "--split", "dev", "--device", "cpu")
    assert code == 0 and "exact_match" in stdout, err


@pytest.fixture(scope="module")
def tuned_qa(tmp_path_factory):
    """A tiny BERT span head fine-tuned on the toy QA task (learnable: the word after good / bad)."""
    from axformer.tasks.sources import load_custom
    from axformer.training.finetune import FinetuneConfig, finetune

    root = tmp_path_factory.mktemp("qa")
    train, dev = write_qa_files(root / "data")
    data = load_custom(train, dev, (), "label", "extractive-qa", None, "toyqa", doc_stride=12)
    base = make_tiny_model_dir(root / "base", "bert")
    config = FinetuneConfig(epochs=10, learning_rate=3e-3, batch_size=16, max_seq_length=32, device="cpu",
                            new_head=True)  # fmt: skip
    finetune(base, data, root / "tuned", config)
    return root / "tuned", data


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_qa_artifact_has_optimums_outputs_and_scores_like_pytorch(tuned_qa, tmp_path, precision):
    """start_logits/end_logits [batch, sequence] (ORTModelForQuestionAnswering's layout), the same logits as the
    PyTorch model (fp32 to 1e-4), and the same SQuAD scores through axformer evaluate."""
    import onnx

    from axformer.data.batching import encode
    from axformer.evaluation.scores import evaluate
    from axformer.export.artifact import ExportConfig, export_model
    from axformer.inference import run_model
    from axformer.models.loading import load_model, load_tokenizer
    from axformer.runtime.backends import load_runnable

    model, data = tuned_qa
    out = tmp_path / precision
    r = export_model(model, out, ExportConfig(precision=precision, device="cpu", max_drop=100), data)
    graph = onnx.load(str(out / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["start_logits", "end_logits"]
    assert all(o.type.tensor_type.shape.dim[1].dim_param for o in graph.output)  # dynamic sequence length
    enc = encode(load_tokenizer(model), data.dev["dev"], 32)
    ref = run_model(load_model(model, data.spec), enc, False).logits
    got = run_model(load_runnable(out), enc, False).logits
    assert np.abs(got - ref).max() <= (1e-4 if precision == "fp32" else 0.25)
    torch_f1 = evaluate(model, splits=("dev",), device="cpu").splits["dev"].metrics
    onnx_f1 = evaluate(out, splits=("dev",), device="cpu").splits["dev"].metrics
    if precision == "fp32":
        assert onnx_f1 == pytest.approx(torch_f1)
    assert r["validation"]["onnx"]["metrics"].keys() == {"f1", "exact_match"}
    # a service's view: questions and contexts in, answer texts and scores out, the same from both backends
    from axformer.runtime.predictor import Predictor

    dev = data.dev["dev"]
    questions, contexts = [e.question for e in dev.labels], [e.context for e in dev.labels]
    with Predictor(out) as served, Predictor(model) as eager:
        got_answers, ref_answers = served.answer(questions, contexts), eager.answer(questions, contexts)
    assert all(isinstance(t, str) and np.isfinite(sc) for t, sc in got_answers)
    if precision == "fp32":
        assert [t for t, _ in got_answers] == [t for t, _ in ref_answers]
    with pytest.raises(AxformerError, match="questions and 1 contexts"):
        Predictor(out).answer(questions, contexts[:1])


def test_masked_equals_physically_pruned_span_logits(tuned_qa, tmp_path):
    """A QA head through surgery: the engine's soft masks and physical removal give the same start/end logits, the
    pruned model saves and reloads as a QA model with them, and its ONNX artifact computes them too."""
    import copy

    import torch

    from axformer.data.batching import collate, encode
    from axformer.models.loading import load_model, load_tokenizer, save_model
    from axformer.surgery.masks import SoftMask
    from axformer.surgery.prune import prune

    model, data = tuned_qa
    net = load_model(model, data.spec).eval()
    tok = load_tokenizer(model)
    batch = collate(encode(tok, data.dev["dev"], 32), np.arange(8), "cpu", with_labels=False)
    removed = ["L0.attn.head1", "L1.ffn", "L2.attn.head0", "L2.ffn.group0of4"]
    with torch.inference_mode():
        with SoftMask(net) as mask:
            mask.set(removed)
            masked = net(**batch).logits
        pruned = copy.deepcopy(net)
        prune(pruned, removed)
        torch.testing.assert_close(pruned(**batch).logits, masked, rtol=0, atol=1e-5)
        assert masked.shape[-1] == 2
        save_model(pruned, tok, tmp_path / "pruned")
        again = load_model(tmp_path / "pruned", data.spec).eval()
        torch.testing.assert_close(again(**batch).logits, masked, rtol=0, atol=1e-5)
    # ONNX parity of the pruned span model: its artifact gives the same start/end logits on every window
    from axformer.export.artifact import ExportConfig, export_model
    from axformer.inference import run_model
    from axformer.runtime.backends import load_runnable

    export_model(
        tmp_path / "pruned", tmp_path / "onnx", ExportConfig(precision="fp32", device="cpu", max_drop=100), data
    )
    enc = encode(tok, data.dev["dev"], 32)
    ref = run_model(again, enc, False).logits
    got = run_model(load_runnable(tmp_path / "onnx"), enc, False).logits
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-4


def test_analyze_scores_a_qa_model_by_its_f1(monkeypatch, capsys, tuned_qa, tmp_path):
    model, _ = tuned_qa
    out = tmp_path / "analysis"
    code, _, err = run_cli(monkeypatch, capsys, "analyze", model, "-o", out, "--scorers", "ablation,gradient",
                           "--device", "cpu")  # fmt: skip
    assert code == 0, err
    sig = json.loads((out / "significance.json").read_text())
    rows = sig["ablation"]["rows"] if isinstance(sig["ablation"], dict) else sig["ablation"]
    assert rows and all(np.isfinite(r["delta_loss"]) and 0 <= r["metric"] <= 100 for r in rows)


def test_benchmark_scores_and_times_a_qa_artifact_against_the_baselines(tuned_qa, tmp_path):
    from axformer.benchmark.run import DYNAMIC, ORT_INT8, BenchmarkConfig, benchmark
    from axformer.export.artifact import ExportConfig, export_model

    model, data = tuned_qa
    export_model(model, tmp_path / "int8", ExportConfig(precision="int8", device="cpu", max_drop=100), data)
    config = BenchmarkConfig(baseline_model=str(model), lengths=(), latency_examples=8, throughput_examples=16,
                             rounds=1, warmup=0, instances=0, memory=False)  # fmt: skip
    result = benchmark([str(tmp_path / "int8")], tmp_path / "bench", data, config=config, progress=lambda m: None)
    rows = {r["name"]: r for r in result["rows"]}
    assert {DYNAMIC, ORT_INT8} <= set(rows) and len(rows) == 5
    for r in rows.values():
        assert set(r["dev"]["metrics"]) == {"f1", "exact_match"} and r["timing"]["latency_p50_ms"] > 0
    assert rows[DYNAMIC]["dev"]["metrics"]["f1"] >= 30  # the tuned model, scored on the dev questions


def test_span_distillation_loss_matches_a_direct_computation():
    """Start and end are each a distribution over the window's real tokens: padding gets no probability and a
    teacher row wider than the batch is cut to it."""
    import torch
    import torch.nn.functional as F

    from axformer.distill.losses import soft_cross_entropy

    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 2, generator=g), torch.randn(2, 7, 2, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    t = 2.0
    want = []
    for b, n in ((0, 5), (1, 3)):
        for k in range(2):
            p = F.softmax(teacher[b, :n, k] / t, dim=0)
            want.append(-(p * F.log_softmax(student[b, :n, k] / t, dim=0)).sum())
    expected = torch.stack(want).mean() * t * t
    torch.testing.assert_close(soft_cross_entropy(student, teacher, t, mask), expected)


def test_distillation_moves_a_smaller_qa_student_to_its_teacher(tuned_qa, tmp_path):
    from axformer.distill import DistillConfig, distill
    from axformer.models.loading import load_model

    teacher, data = tuned_qa
    cfg = DistillConfig(epochs=4, learning_rate=3e-3, batch_size=16, device="cpu", eval_max_examples=None)
    res = distill(teacher, tmp_path / "student", student_layers="0,2", data=data, config=cfg)
    student = load_model(res.output, data.spec)
    assert type(student).__name__.endswith("ForQuestionAnswering") and student.config.num_hidden_layers == 2
    assert set(res.evaluation.splits["heldout"].metrics) == {"f1", "exact_match"}
    assert res.evaluation.splits["dev"].metrics["f1"] >= 30  # the teacher's answers, learned by two layers
    with pytest.raises(AxformerError, match="question answering distils on its training questions"):
        distill(teacher, tmp_path / "s2", student_layers="1", data=data, config=cfg, extra_texts=[("a", "b")])


def test_optimize_runs_every_stage_on_a_qa_model_and_certifies_on_unseen_articles(tuned_qa, tmp_path):
    """The pipeline end to end on a span model: search guarding F1 and EM, recovery by distillation, the certificate
    on confirmation articles no decision used (per-question paired bootstrap), int8 export, benchmark, report."""
    import copy

    from axformer.pipeline.config import PipelineConfig
    from axformer.pipeline.run import run_pipeline
    from tests.test_pipeline import LIGHT

    model, _ = tuned_qa
    over = copy.deepcopy(LIGHT)
    over["search"]["recovery"] = {"mode": "distill", "epochs": 1, "learning_rate": 3e-3}
    over["export"]["precision"] = "int8"
    over.update({"model": str(model), "output": str(tmp_path / "run")})
    for section in ("analyze", "search", "export"):
        over[section]["device"] = "cpu"
    result = run_pipeline(PipelineConfig.build(overrides=over), progress=lambda m: None)
    assert result.ran == ["analyze", "search", "export", "benchmark", "report"]
    report = json.loads((tmp_path / "run" / "3-search" / "report.json").read_text())
    cert = report["certification"]["certificate"]
    assert set(cert["differences"]) == {"f1", "exact_match"} and cert["examples"] > 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["artifact"].endswith("4-export")
    assert "not measured for question answering" in report["fidelity"]["note"]
    page = (tmp_path / "run" / "report.md").read_text()
    assert "dev f1" in page and "dev exact_match" in page


def test_the_confirmation_part_takes_whole_articles(tuned_qa):
    from axformer.evaluation.context import load_context

    model, data = tuned_qa
    ctx = load_context(model, data, confirm_fraction=0.5, device="cpu", stage="optimize")
    decided = {e.article for e in ctx.heldout.labels}
    confirmed = {e.article for e in ctx.confirmation.labels}
    assert decided and confirmed and decided.isdisjoint(confirmed)


def test_qa_artifacts_take_every_size_format(tuned_qa, tmp_path):
    """What the size goal writes works for a span model too. A pruned vocabulary (kept from the questions and
    contexts of the fine-tuning articles) answers exactly as the whole one on texts of kept words; int4 matrices
    with int4 embedding tables give start/end logits close to the fp32 artifact's at a quarter of its weight bytes,
    and axformer evaluate scores it."""
    from axformer.data.batching import encode
    from axformer.evaluation.scores import evaluate
    from axformer.export.artifact import ExportConfig, export_model
    from axformer.inference import run_model
    from axformer.models.loading import load_tokenizer
    from axformer.runtime.backends import load_runnable
    from axformer.runtime.predictor import Predictor
    from axformer.surgery.vocabulary import VocabularyConfig

    model, data = tuned_qa
    dev = data.dev["dev"]
    questions, contexts = [e.question for e in dev.labels], [e.context for e in dev.labels]

    def export(name: str, **kw):
        return tmp_path / name, export_model(
            model, tmp_path / name, ExportConfig(device="cpu", max_drop=100, **kw), data
        )

    def logits(path):
        return run_model(load_runnable(path), encode(load_tokenizer(path), dev, 32), False).logits

    fp32, full = export("fp32", precision="fp32")
    pruned, r = export("vocabulary", precision="fp32", vocabulary=VocabularyConfig(prune=True, trim_positions=True))
    assert r["compaction"]["vocabulary"]["kept_size"] < len(load_tokenizer(model))
    with Predictor(fp32) as whole, Predictor(pruned) as kept:
        ref, got = whole.answer(questions, contexts), kept.answer(questions, contexts)
    assert [text for text, _ in got] == [text for text, _ in ref]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in ref], rtol=0, atol=1e-4)
    small, r = export(
        "int4", precision="int4", embeddings="int4", int4_attention=True, int4_block_size=32, int4_table_block_size=32
    )
    assert r["precision"] == "int4"
    weights = r["size"]["file_bytes"] - r["size"]["graph_bytes"]  # a tiny model's graph outweighs its weights
    assert weights < (full["size"]["file_bytes"] - full["size"]["graph_bytes"]) / 4
    assert np.abs(logits(small) - logits(fp32)).max() <= 0.5
    assert evaluate(small, splits=("dev",), device="cpu").splits["dev"].metrics.keys() == {"f1", "exact_match"}


def test_smallest_within_1_runs_on_a_qa_model(tuned_qa, tmp_path):
    """The size preset end to end on a span model: the search counts the artifact's bytes, the export writes int4
    with a pruned vocabulary (or falls back and says so), and the summary's bytes are the file's."""
    import copy

    from axformer.pipeline.config import PipelineConfig
    from axformer.pipeline.run import run_pipeline
    from tests.test_pipeline import LIGHT

    model, _ = tuned_qa
    over = copy.deepcopy(LIGHT)
    del over["search"]["goal"], over["export"]["precision"]
    over["search"]["recovery"] = {"mode": "distill", "epochs": 1, "learning_rate": 3e-3}
    over.update({"model": str(model), "output": str(tmp_path / "run")})
    for section in ("analyze", "search", "export"):
        over[section]["device"] = "cpu"
    result = run_pipeline(PipelineConfig.build(preset="smallest-within-1", overrides=over), progress=lambda m: None)
    assert result.ran == ["analyze", "search", "export", "benchmark", "report"]
    export = json.loads((tmp_path / "run" / "4-export" / "export.json").read_text())
    assert export["precision"] in ("int4", "mixed", "fp32") and "vocabulary" in export["compaction"]
    assert export["size_bytes"] == (tmp_path / "run" / "4-export" / "model.onnx").stat().st_size


def test_qa_input_errors_are_one_line(monkeypatch, capsys, tmp_path):
    train, dev = write_qa_files(tmp_path / "data", n_train=4, n_dev=2)
    base = make_tiny_model_dir(tmp_path / "base", "bert")
    bad = tmp_path / "bad.jsonl"
    row = json.loads(train.read_text().splitlines()[0])
    row["answers"]["answer_start"] = [row["answers"]["answer_start"][0] + 1]
    bad.write_text(json.dumps(row) + "\n")
    out = tmp_path / "out"
    qa = ["--task", "custom", "--problem", "extractive-qa", "--dev", dev, "--device", "cpu"]
    code, _, err = run_cli(monkeypatch, capsys, "finetune", base, "-o", out, *qa, "--train", bad)
    assert_clean_failure(code, err, out, r"bad\.jsonl: line 1: question '.*': answer '.*' does not occur")
    code, _, err = run_cli(monkeypatch, capsys, "finetune", base, "-o", out, *qa, "--train", train, "--doc-stride", "0")
    assert_clean_failure(code, err, out, "--doc-stride 0; expected a positive")
    code, _, err = run_cli(monkeypatch, capsys, "finetune", base, "-o", out, "--task", "sst2", "--doc-stride", "64")
    assert_clean_failure(code, err, out, "--doc-stride applies to question answering")
    code, _, err = run_cli(monkeypatch, capsys, "finetune", base, "-o", out, "--task", "squad", "--data-dir", tmp_path)
    assert_clean_failure(code, err, out, r"no SQuAD data under .*squad/train-v1\.1\.json")


def test_a_span_head_does_not_serve_a_classification_task(tmp_path):
    from axformer.models.loading import load_model
    from axformer.tasks.spec import get_task

    qa = make_tiny_qa_model_dir(tmp_path / "qa", "bert")
    with pytest.raises(AxformerError, match="has a question answering .span. head but task SST-2 needs a classif"):
        load_model(qa, get_task("sst2"))
    cls = make_tiny_model_dir(tmp_path / "cls", "bert")
    with pytest.raises(AxformerError, match="has a classification head but task SQuAD needs a question answering"):
        load_model(cls, get_task("squad"))


def test_tasks_lists_squad_with_its_metrics(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "tasks")
    line = next(l for l in out.splitlines() if "squad" in l)
    assert code == 0 and "f1, exact_match" in line and "answer span" in line
