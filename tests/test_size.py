"""The smallest artifacts: quantized embedding tables, pruned vocabularies, and the bytes they are counted in."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from axformer.export.artifact import ExportConfig, export_model
from axformer.export.size import size_breakdown
from axformer.surgery.vocabulary import VocabularyConfig


def _logits(path, data, tokenizer_dir=None):
    from axformer.data.batching import encode
    from axformer.inference import run_model
    from axformer.models.loading import load_tokenizer
    from axformer.runtime.backends import load_runnable

    enc = encode(load_tokenizer(tokenizer_dir or path), data.dev["dev"], 32)
    return run_model(load_runnable(path, "cpu"), enc, False, 64, "cpu").logits


@pytest.mark.parametrize(
    ("embeddings", "fusion", "op", "bound"),
    [
        ("int8", True, "QEmbedLayerNormalization", 0.05),  # the fused lookup, quantized whole
        ("int8", False, "GatherQuant", 0.05),
        ("int4", True, "GatherBlockQuantized", 0.15),  # int4 tables are looked up unfused
    ],
)
def test_quantized_embedding_tables_match_the_fp32_artifact(tuned_tiny, tmp_path, embeddings, fusion, op, bound):
    """Logit bounds measured here on the trained tiny model: int8 tables 1e-2, int4 tables 6e-2."""
    model, data, _ = tuned_tiny
    ref_dir, out = tmp_path / "fp32", tmp_path / embeddings
    export_model(model, ref_dir, ExportConfig(precision="fp32", device="cpu", fusion=fusion), data)
    r = export_model(
        model,
        out,
        ExportConfig(precision="fp32", embeddings=embeddings, device="cpu", fusion=fusion, int4_block_size=16),
        data,
    )
    graph = onnx.load(str(out / "model.onnx")).graph
    ops = {n.op_type for n in graph.node}
    if op == "GatherQuant":  # a dynamically quantized Gather is a Gather of int8 data and a DequantizeLinear
        assert "DequantizeLinear" in ops and r["size"]["parts"]["embeddings"].get("int8", 0) > 0
    else:
        assert op in ops
    assert r["size"]["parts"]["embeddings"].get(embeddings, 0) > 0
    ref, got = _logits(ref_dir, data), _logits(out, data)
    assert np.abs(got - ref).max() <= bound
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.95
    assert r["size_bytes"] < (ref_dir / "model.onnx").stat().st_size


def test_the_smallest_artifact_loads_everywhere_and_is_scored(tuned_tiny, tmp_path):
    """int4 matrices and tables, a pruned vocabulary and trimmed positions: Predictor, ONNX Runtime directly,
    transformers' AutoConfig/AutoTokenizer and axformer evaluate all work on it."""
    import onnxruntime as ort
    from transformers import AutoConfig, AutoTokenizer

    from axformer.evaluation import evaluate
    from axformer.runtime import Predictor

    model, data, _ = tuned_tiny
    out = tmp_path / "small"
    r = export_model(
        model,
        out,
        ExportConfig(
            precision="int4",
            embeddings="int4",
            int4_attention=True,
            int4_block_size=16,
            vocabulary=VocabularyConfig(prune=True, trim_positions=True),
            device="cpu",
            max_drop=100,
        ),
        data,
    )
    vocab = r["compaction"]["vocabulary"]
    tok = AutoTokenizer.from_pretrained(out)
    cfg = AutoConfig.from_pretrained(out)
    # unseen tokens stay in the tokenizer, sharing the id of their nearest kept neighbour: every id has a row
    assert cfg.vocab_size == vocab["kept_size"] < vocab["original_size"] == len(tok) and vocab["unseen"] == "nearest"
    assert max(max(tok(t)["input_ids"]) for t in ["zebras quizzically vex", "a good movie"]) < cfg.vocab_size
    assert cfg.max_position_embeddings == 32 == r["compaction"]["positions"]["kept_rows"]
    assert {"MatMulNBits", "GatherBlockQuantized"} <= {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    texts = ["a good movie", "the plot was bad and boring"]
    logits = Predictor(out).predict(texts)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    enc = tok(texts, padding=True, return_tensors="np")
    names = {i.name for i in session.get_inputs()}
    direct = session.run(["logits"], {k: v.astype(np.int64) for k, v in enc.items() if k in names})[0]
    np.testing.assert_allclose(direct, logits, atol=1e-5)
    scored = evaluate(str(out), data, splits=("dev",), device="cpu")
    assert scored.splits["dev"].num_examples == len(data.dev["dev"])
    # pruning itself changes nothing on texts made of kept tokens (training texts): fp32 artifacts agree
    texts = [t[0] for t in data.train.texts[:4]]
    for name, vocabulary in (
        ("whole", VocabularyConfig()),
        ("pruned", VocabularyConfig(prune=True, trim_positions=True)),
    ):
        export_model(model, tmp_path / name, ExportConfig(precision="fp32", vocabulary=vocabulary, device="cpu"), data)
    np.testing.assert_allclose(
        Predictor(tmp_path / "pruned").predict(texts), Predictor(tmp_path / "whole").predict(texts), atol=1e-4
    )
    assert (
        Predictor(out).predict(texts).argmax(-1).tolist()
        == Predictor(tmp_path / "whole").predict(texts).argmax(-1).tolist()
    )


def test_the_size_breakdown_accounts_for_every_byte(tuned_tiny, tmp_path):
    """Every byte of an int4 artifact is in one part and format. Its int4 tables are the word table alone: the
    tables every token adds (positions, token types) would shift every token alike if rounded to int4, so they are
    stored int8, and the size search's byte model counts them so."""
    from onnx import numpy_helper

    from axformer.models.loading import load_model
    from axformer.search.config import ArtifactFormat
    from axformer.search.cost import artifact_bytes
    from axformer.surgery.fake_quant import embedding_tables

    model, data, _ = tuned_tiny
    r = export_model(
        model,
        tmp_path / "a",
        ExportConfig(precision="int4", embeddings="int4", int4_block_size=16, device="cpu", max_drop=100),
        data,
    )
    s = size_breakdown(tmp_path / "a" / "model.onnx")
    assert s == {k: v for k, v in r["size"].items() if k != "directory_bytes"}
    assert sum(s["part_bytes"].values()) + s["graph_bytes"] == s["file_bytes"] == r["size_bytes"]
    assert s["part_bytes"]["encoder"] > 0 and s["parts"]["embeddings"].get("int4", 0) > 0
    assert r["size"]["directory_bytes"] > s["file_bytes"]
    graph = onnx.load(str(tmp_path / "a" / "model.onnx")).graph
    net = load_model(model)
    cfg = net.config
    shapes = {i.name: (numpy_helper.to_array(i).dtype, i.dims[0]) for i in graph.initializer if len(i.dims) == 2}
    lookups = {n.op_type: [] for n in graph.node}
    for n in graph.node:
        if n.op_type in ("Gather", "GatherBlockQuantized") and n.input[0] in shapes:
            lookups[n.op_type].append(shapes[n.input[0]])
    assert [rows for _, rows in lookups["GatherBlockQuantized"]] == [cfg.vocab_size]  # the word table only
    # the others int8 (ONNX Runtime's dynamic quantizer stores a lookup table as uint8)
    assert sorted(lookups["Gather"]) == [(np.dtype(np.uint8), cfg.type_vocab_size),
                                         (np.dtype(np.uint8), cfg.max_position_embeddings)]  # fmt: skip
    tables = r["size"]["parts"]["embeddings"]
    assert tables["int4"] > 0 and tables["int8"] > 0
    # the byte model saves exactly what the written tables saved against fp32 (int4 word rows, int8 others)
    saved = artifact_bytes(net, ArtifactFormat(embeddings="fp32", block_size=16)) - artifact_bytes(
        net, ArtifactFormat(embeddings="int4", block_size=16)
    )
    table_params = sum(net.get_submodule(path).weight.numel() for path in embedding_tables(net).values())
    assert saved == 4 * table_params - tables["int4"] - tables["int8"]


def test_the_size_preset_counts_the_bytes_of_the_artifact_it_writes(tuned_tiny, tmp_path):
    """smallest-within-1 end to end on the tiny model: the search ranks and stops by the bytes of the int4,
    vocabulary-pruned artifact; the summary's bytes are the written file's, the search's prediction is close to
    them, and the report breaks them down next to the original and ONNX Runtime int8."""
    from axformer.pipeline.config import PipelineConfig
    from axformer.pipeline.run import run_pipeline
    from axformer.utils.io import read_json

    model, _, _ = tuned_tiny
    out = tmp_path / "small"
    cfg = PipelineConfig.build(
        preset="smallest-within-1",
        overrides={
            "model": str(model),
            "output": str(out),
            "analyze": {"scorers": ["gradient"], "device": "cpu"},
            "search": {
                "device": "cpu",
                "groups": 4,
                "latency_examples": 8,
                "target_size": 40.0,  # the tiny model is mostly embeddings: a target that needs pruning too
                "recovery": {"mode": None},
                "units": "coarse",
                "tolerance": {"max_drop": 5.0},
            },
            "export": {"device": "cpu", "int4_block_size": 16},
            "benchmark": {"rounds": 1, "lengths": [16, 64], "latency_examples": 8, "throughput_examples": 16,
                          "memory": False, "instances": 0},
        },
    )  # fmt: skip
    summary = run_pipeline(cfg, progress=lambda m: None).summary
    written = (out / "4-export" / "model.onnx").stat().st_size
    assert summary["artifact_bytes"] == written
    # the search's byte model is exact for whole layers and blocks (the units it removes with distillation,
    # and here): the weights it predicted are the weights written
    assert summary["artifact_weight_bytes_predicted"] == pytest.approx(summary["artifact_weight_bytes"], rel=0.05)
    search = read_json(out / "3-search" / "report.json")
    assert search["search"]["cost_model"]["quantity"] == "bytes" and search["removed"]
    assert summary["size_reduction_on_disk"] > 1 and summary["vocabulary_kept"] > 0
    # the benchmark reads the dev texts through the artifact's own (pruned) tokenizer: with the original's ids
    # this artifact scored 53% here
    assert summary["dev_optimized"] >= summary["dev_original"] - 5
    bench = read_json(out / "5-benchmark" / "benchmark.json")
    # the artifact keeps 32 positions: the fixed-length timing stops there instead of failing at 64
    assert all(set(r["fixed"]) == {"16"} for r in bench["rows"])
    page = (out / "report.md").read_text()
    assert "## Size on disk" in page and "ONNX Runtime int8 (unpruned)" in page and "Vocabulary:" in page


def test_artifact_bytes_follow_the_formats(tiny_bert):
    from axformer.models.loading import load_model
    from axformer.search.config import ArtifactFormat
    from axformer.search.cost import artifact_bytes, matrix_bytes
    from axformer.surgery.prune import count_parameters

    net = load_model(tiny_bert)
    assert artifact_bytes(net, ArtifactFormat()) == 4 * count_parameters(net)
    assert matrix_bytes(48, 32, "int4", 16) == 48 * 2 * (8 + 4)  # two blocks of 16 per row: 8 bytes + fp32 scale
    assert matrix_bytes(48, 32, "int8", 16) == 48 * 32 + 5 * 48
    small = artifact_bytes(net, ArtifactFormat("int4", "int4", 16, True), vocab_rows=50, max_length=16)
    assert (
        small
        < artifact_bytes(net, ArtifactFormat("int4", "int4", 16, True))
        < artifact_bytes(net, ArtifactFormat("int8", "int8"))
    )


def test_a_size_target_the_formats_meet_removes_nothing(tuned_tiny, tmp_path):
    """Ratios are against the fp32 original's bytes: int4 and a pruned vocabulary count towards the target, so
    the search removes structure only when they do not reach it."""
    from axformer.search.config import ArtifactFormat, OptimizeConfig, Tolerance
    from axformer.search.optimize import optimize

    model, data, _ = tuned_tiny
    fmt = ArtifactFormat("int4", "int4", 16, True, prune_vocabulary=True, trim_positions=True)
    common = {"goal": "size", "groups": 4, "device": "cpu", "progress": False, "latency_examples": 5, "artifact": fmt}
    easy, hard = (
        optimize(
            model,
            data,
            None,
            tmp_path / name,
            OptimizeConfig(**common, target_size=target, tolerance=Tolerance(max_drop=5.0)),
        )
        for name, target in (("easy", 3.0), ("hard", 40.0))
    )
    assert easy["removed"] == [] and easy["search"]["target_met"] and easy["search"]["predicted_ratio"] >= 3.0
    # the original's own weights: agreement with itself is not measured (100% by construction), but said
    assert easy["fidelity"] == {"note": "not measured: the shipped model is the original (nothing removed)"}
    assert "the shipped model is the original" in (tmp_path / "easy" / "report.md").read_text()
    assert hard["removed"] and hard["search"]["predicted_ratio"] > easy["search"]["predicted_ratio"]


def test_an_int4_artifact_is_distilled_on_its_grid_even_with_nothing_removed(tuned_tiny, tmp_path):
    """With --recover distill and int4 matrices and tables, the rounding is something to win back: the unpruned
    model is distilled quantization-aware (--quantization-aware), certified as it will be stored (its weights on the
    int4 grid); by default it is left alone."""
    import torch

    from axformer.models.loading import load_model
    from axformer.search.config import ArtifactFormat, OptimizeConfig, Recovery, Tolerance
    from axformer.search.optimize import optimize
    from axformer.surgery.fake_quant import fake_quantize, quantization_aware

    model, data, _ = tuned_tiny
    fmt = ArtifactFormat("int4", "int4", 16, True, table_block_size=32)
    common = {"goal": "size", "groups": 4, "device": "cpu", "progress": False, "latency_examples": 5,
              "artifact": fmt, "target_size": 2.0, "tolerance": Tolerance(max_drop=5.0)}  # fmt: skip
    rounded = optimize(
        model, data, None, tmp_path / "qat",
        OptimizeConfig(**common, recovery=Recovery(mode="distill", epochs=1, learning_rate=3e-3,
                                                   quantization_aware=True)),
    )  # fmt: skip
    assert rounded["removed"] == [] and rounded["recovery"]["config"]["qat_block_size"] == 16
    assert rounded["certification"]["recovery"] is not None  # the certificate judged the rounded model
    assert "note" not in rounded["fidelity"]  # nothing removed, but its weights moved: not the original
    assert (
        "Quantization-aware: matrices in blocks of 16 and embedding tables in blocks of 32"
        in (tmp_path / "qat" / "report.md").read_text()
    )
    net = load_model(tmp_path / "qat")
    for path in quantization_aware(load_model(tmp_path / "qat"), 4, 16, table_block_size=32):
        w = net.get_submodule(path).weight.data
        torch.testing.assert_close(fake_quantize(w, 4, 32 if "embeddings" in path else 16), w, rtol=0, atol=0)
    plain = optimize(
        model, data, None, tmp_path / "plain",
        OptimizeConfig(**common, recovery=Recovery(mode="distill", epochs=1)),
    )  # fmt: skip
    assert plain["removed"] == [] and plain.get("recovery") is None


def test_mixed_precision_plans_the_embedding_tables_like_matrices(tuned_tiny, tmp_path):
    """The word table and the pooler join the plan with their own measured sensitivity; with an unbounded
    tolerance every matrix and the word table end up in int4 (the matrices in the coarsest blocks), ranked per
    parameter for the size objective, and the tables every token adds in int8. The uniform int4 artifact keeps
    the head in int8, as the size search counts it."""
    model, data, _ = tuned_tiny
    r = export_model(
        model,
        tmp_path / "mixed",
        ExportConfig(precision="mixed", embeddings="int4", objective="size", int4_attention=True,
                     int4_block_size=16, device="cpu", max_drop=100),
        data,
    )  # fmt: skip
    components = r["mixed"]["components"]
    assert components["embeddings.word"] == "int4" and components["embeddings.position"] == "int8"
    assert components["embeddings.token_type"] == "int8"
    assert r["mixed"]["sensitivities_measured"] >= 3  # the tables' own sensitivities were measured
    assert any(k.endswith(".attn.q") for k in components)  # Q/K/V planned on their own (attention unfused)
    assert r["size"]["parts"]["embeddings"].get("int4", 0) > 0
    assert components["head.bert.pooler.dense"] == "int4/64"  # blocks of 16 -> the coarser rung's 64
    assert all(v == "int4/64" for k, v in components.items() if k.startswith("L"))
    assert r["size"]["parts"]["head"].get("int4", 0) > 0
    uniform = export_model(
        model,
        tmp_path / "int4",
        ExportConfig(precision="int4", embeddings="int4", int4_attention=True, int4_block_size=16, device="cpu",
                     max_drop=100),
        data,
    )  # fmt: skip
    assert uniform["size"]["parts"]["head"].get("int4", 0) == 0 and uniform["size"]["parts"]["head"]["int8"] > 0
