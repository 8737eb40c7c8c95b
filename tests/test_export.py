"""Export artifacts (layout, validation, precision plans) and the runtime that serves them."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from axformer.errors import AxformerError
from axformer.export.artifact import WHOLE_CHECK, ExportConfig, export_model
from tests.test_cli import assert_clean_failure, run_cli


def test_export_writes_the_optimum_layout_and_validates(tiny_task, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from axformer.runtime import Predictor

    model, data, _ = tiny_task
    out = tmp_path / "onnx"
    report = export_model(model, out, ExportConfig(precision="fp32", device="cpu"), data)
    for f in ("model.onnx", "config.json", "tokenizer.json", "axformer.json", "export.json"):
        assert (out / f).is_file(), f
    assert AutoConfig.from_pretrained(out).num_labels == 2 and AutoTokenizer.from_pretrained(out) is not None
    v = report["validation"]
    assert abs(v["drop"]) < 1e-9 and v["onnx"]["num_examples"] == v["pytorch"]["num_examples"] > 0
    assert report["fusion"]["fused_operators"].get("Attention") == 3
    assert json.loads((out / "export.json").read_text())["size_bytes"] == (out / "model.onnx").stat().st_size
    texts = ["a good movie", "the plot was bad and boring", "good"]
    onnx_logits = Predictor(out).predict(texts)
    torch_logits = Predictor(model).predict(texts)
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4)


def test_unchecked_export_runs_no_model_and_writes_the_same_graph(tiny_task, tmp_path, monkeypatch):
    """The benchmark's baselines are exported without the check (their dev rows are their check): no PyTorch or
    ONNX Runtime pass over held-out examples, the same artifact; a checked export without a confirmation part
    scores the reference once, not twice; a precision that must be chosen by checking refuses ``check=False``."""
    import axformer.export.artifact as artifact

    model, data, _ = tiny_task
    calls: list[str] = []
    real = artifact.run_model
    monkeypatch.setattr(artifact, "run_model", lambda m, *a, **k: calls.append(type(m).__name__) or real(m, *a, **k))
    checked = export_model(model, tmp_path / "checked", ExportConfig(precision="int8", device="cpu"), data)
    assert checked["validation"]["checked_on"] == "heldout"
    assert calls.count("OnnxModel") == 1 and len(calls) == 2, calls  # the reference once, the artifact once
    calls.clear()
    unchecked = export_model(
        model, tmp_path / "unchecked", ExportConfig(precision="int8", device="cpu", check=False), data
    )
    assert calls == [] and unchecked["validation"] is None
    a, b = (onnx.load(str(tmp_path / d / "model.onnx")) for d in ("checked", "unchecked"))
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    for x, y in zip(a.graph.initializer, b.graph.initializer, strict=True):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(x), onnx.numpy_helper.to_array(y))
    for bad in (
        ExportConfig("auto", check=False),
        ExportConfig("int8", check=False, fallback=True),
        ExportConfig("int8", check=False, max_changed_answers=0.0),  # "none may change" needs the check too
    ):
        with pytest.raises(AxformerError, match="without its check"):
            bad.validate()


def test_export_fails_loudly_beyond_max_drop(tiny_task, tmp_path, monkeypatch):
    """A broken quantizer (here: one that zeroes every weight) must not yield an artifact."""
    import axformer.export.artifact as artifact

    def broken(source, target, *args, **kwargs):
        m = onnx.load(str(source))
        for init in m.graph.initializer:
            if len(init.dims) == 2 and init.data_type == onnx.TensorProto.FLOAT:
                arr = np.zeros(tuple(init.dims), np.float32)
                init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
        onnx.save(m, str(target))
        return target

    monkeypatch.setattr(artifact, "quantize_int8", broken)
    model, data, _ = tiny_task
    # a tiny fine-tuned model is needed for a metric that can drop: label = the word good/bad
    from axformer.training.finetune import FinetuneConfig, finetune

    tuned = finetune(
        model,
        data,
        tmp_path / "tuned",
        FinetuneConfig(
            epochs=4, learning_rate=3e-3, batch_size=16, max_seq_length=32, device="cpu", eval_max_examples=None
        ),
    ).output
    with pytest.raises(
        AxformerError, match="loses .* points of held-out accuracy .* more than --max-drop 1.0; nothing written"
    ):
        export_model(tuned, tmp_path / "bad", ExportConfig(precision="int8", device="cpu"), data)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.partial").exists()


def test_export_falls_back_to_a_precision_that_holds_and_says_so(tuned_tiny, tmp_path, monkeypatch):
    """In the pipeline an export never ends with nothing: a broken int8 artifact gives way to mixed precision,
    then fp32, judged against the reference model on the confirmation part, and export.json says what happened."""
    import axformer.export.artifact as artifact

    def broken(source, target, *args, **kwargs):
        m = onnx.load(str(source))
        for init in m.graph.initializer:
            if len(init.dims) == 2 and init.data_type == onnx.TensorProto.FLOAT:
                init.CopyFrom(onnx.numpy_helper.from_array(np.zeros(tuple(init.dims), np.float32), init.name))
        onnx.save(m, str(target))
        return target

    monkeypatch.setattr(artifact, "quantize_int8", broken)
    model, data, _ = tuned_tiny
    cfg = ExportConfig(precision="int8", device="cpu", fallback=True, confirm_fraction=0.4, reference_model=str(model))
    r = export_model(model, tmp_path / "art", cfg, data)
    fb = r["fallback"]
    assert fb["asked"] == "int8" and fb["tried"][0]["drop"] > 1.0 and r["precision"] == fb["chosen"] != "int8"
    assert [t["precision"] for t in fb["tried"]][:2] == ["int8", "mixed"]
    # the model is its reference: what was asked (int8) and fp32 are checked on every held-out example, the mixed
    # plan (chosen on the deciding examples) on the confirmation part only
    on = {t["precision"]: t["checked_on"] for t in fb["tried"]}
    assert on["int8"] == WHOLE_CHECK and on["mixed"] == "confirmation" and on.get("fp32", WHOLE_CHECK) == WHOLE_CHECK
    assert r["validation"]["drop"] <= 1.0 and r["validation"]["checked_on"] == fb["tried"][-1]["checked_on"]
    assert r["validation"]["reference_model"] == str(model) and (tmp_path / "art" / "model.onnx").is_file()
    assert json.loads((tmp_path / "art" / "export.json").read_text())["precision"] == r["precision"]


def test_an_unchanged_models_artifact_is_checked_on_every_held_out_example(tuned_tiny, tmp_path):
    """No decision shaped the artifact of a model that is its reference (the search removed nothing) at the
    precision asked for, so the deciding examples may check it too: the reference is scored on all of them; a
    model that differs from its reference by one weight, or a mixed plan, is checked on the confirmation part."""
    import shutil
    from dataclasses import replace

    from safetensors.torch import load_file, save_file

    model, data, _ = tuned_tiny

    def config(reference) -> ExportConfig:
        return ExportConfig(
            precision="int8", device="cpu", max_drop=100.0, confirm_fraction=0.4, reference_model=str(reference)
        )

    v = export_model(model, tmp_path / "same", config(model), data)["validation"]
    split = v["split"]
    assert v["checked_on"] == WHOLE_CHECK
    assert v["pytorch"]["num_examples"] == v["onnx"]["num_examples"] == split["used"] + split["confirmation"]["used"]
    other = tmp_path / "other"
    shutil.copytree(model, other)
    weights = load_file(other / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 0.01
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    v = export_model(model, tmp_path / "changed", config(other), data)["validation"]
    assert v["checked_on"] == "confirmation" and v["pytorch"]["num_examples"] == split["confirmation"]["used"]
    mixed = export_model(model, tmp_path / "mixed", replace(config(model), precision="mixed"), data)
    assert mixed["validation"]["checked_on"] == "confirmation"


def test_an_artifact_that_changes_answers_gives_way_when_none_may_change(tuned_tiny, tmp_path, monkeypatch):
    """The accuracy goal's export (max_changed_answers 0): an int8 artifact that answers otherwise than the
    exported model on any check example falls back (here int8 is made to flip answers by scaling its weights;
    its metric drop is allowed, its changed answers are not), the share is recorded per artifact, and the fp32
    artifact, the model's own function, ships."""
    import axformer.export.artifact as artifact

    def flipping(source, target, *args, **kwargs):
        m = onnx.load(str(source))
        for init in m.graph.initializer:
            if len(init.dims) == 2 and init.data_type == onnx.TensorProto.FLOAT:
                w = onnx.numpy_helper.to_array(init)
                init.CopyFrom(onnx.numpy_helper.from_array((w * -1.0).astype(np.float32), init.name))
        onnx.save(m, str(target))
        return target

    monkeypatch.setattr(artifact, "quantize_int8", flipping)
    monkeypatch.setattr(artifact, "apply_plan", lambda source, target, *a, **k: flipping(source, target))
    model, data, _ = tuned_tiny
    cfg = ExportConfig(precision="int8", device="cpu", fallback=True, max_drop=100.0, max_changed_answers=0.0)
    r = export_model(model, tmp_path / "art", cfg, data)
    fb = r["fallback"]
    assert "changed more than 0% of the exported model's answers" in fb["note"] and r["precision"] == "fp32"
    changed = r["changed_answers"]
    assert changed["int8.onnx"] > 0 and r["validation"]["drop"] == pytest.approx(0.0, abs=1e-9)
    # without the limit, the same int8 artifact ships (its drop is within --max-drop 100)
    loose = export_model(model, tmp_path / "loose", ExportConfig(precision="int8", device="cpu", max_drop=100.0), data)
    assert loose["precision"] == "int8" and "changed_answers" not in loose


def test_int8_mixed_and_fp16_exports_write_quantized_graphs(tiny_task, tmp_path):
    model, data, _ = tiny_task
    r8 = export_model(model, tmp_path / "int8", ExportConfig(precision="int8", device="cpu", max_drop=100), data)
    g = onnx.load(str(tmp_path / "int8" / "model.onnx")).graph
    assert any(n.op_type in ("QAttention", "MatMulInteger", "DynamicQuantizeMatMul") for n in g.node)
    assert r8["validation"]["onnx"]["num_examples"] > 0
    rm = export_model(
        model, tmp_path / "mixed", ExportConfig(precision="mixed", device="cpu", max_drop=100, int4_block_size=16), data
    )
    # with an unbounded tolerance every MatMul goes to int4: a tiny random model's 3 layers x 3 MatMuls, its pooler
    # and (unnamed, ranked last) its output projection
    components = rm["mixed"]["components"]
    assert sum(1 for k, v in components.items() if k.startswith("L") and v == "int4") == 9
    assert components["head.bert.pooler.dense"] == "int4" and sum(v == "int4" for v in components.values()) == 11
    assert any(n.op_type == "MatMulNBits" for n in onnx.load(str(tmp_path / "mixed" / "model.onnx")).graph.node)
    # fp16 (meant for CUDA) keeps fp32 inputs/outputs, holds fp16 weights, and is validated like the others
    r16 = export_model(model, tmp_path / "fp16", ExportConfig(precision="fp16", device="cpu"), data)
    g16 = onnx.load(str(tmp_path / "fp16" / "model.onnx")).graph
    assert (
        any(i.data_type == onnx.TensorProto.FLOAT16 for i in g16.initializer) and abs(r16["validation"]["drop"]) <= 1.0
    )


def test_excluded_nodes_stay_fp32_in_int8_and_mixed_exports(tiny_task, tmp_path):
    """--exclude-node keeps its nodes fp32 in every precision that quantizes (int8 used to write them int8: the plan
    left them out, and a MatMul the plan does not name is int8)."""
    model, data, _ = tiny_task
    fp32 = export_model(model, tmp_path / "fp32", ExportConfig(precision="fp32", device="cpu", max_drop=100), data)
    assert fp32["precision"] == "fp32"
    names = [n.name for n in onnx.load(str(tmp_path / "fp32" / "model.onnx")).graph.node if n.op_type == "MatMul"]
    kept = names[:2]
    for precision in ("int8", "mixed"):
        cfg = ExportConfig(precision=precision, device="cpu", max_drop=100, int4_block_size=16, exclude_nodes=kept)
        export_model(model, tmp_path / precision, cfg, data)
        nodes = {n.name: n.op_type for n in onnx.load(str(tmp_path / precision / "model.onnx")).graph.node}
        assert all(nodes.get(k) == "MatMul" for k in kept), (precision, {k: nodes.get(k) for k in kept})
        assert sum(op in ("MatMulInteger", "MatMulNBits") for op in nodes.values()) == len(names) - len(kept)


@pytest.mark.parametrize(("precision", "bound"), [("fp32", 1e-5), ("int8", 0.05), ("mixed", 0.05), ("fp16", 5e-3)])
def test_exports_stay_close_to_pytorch_on_a_trained_model(tuned_tiny, tmp_path, precision, bound):
    """At the default tolerance, on a model that learned its task: logits within a bound per precision (measured
    here: fp32 2e-7, int8 2.5e-3, mixed 2.3e-3, fp16 2e-4) and the same predictions."""
    from axformer.data.batching import encode
    from axformer.inference import run_model
    from axformer.models.loading import load_model, load_tokenizer
    from axformer.runtime.backends import load_runnable

    model, data, _ = tuned_tiny
    r = export_model(
        model, tmp_path / precision, ExportConfig(precision=precision, device="cpu", int4_block_size=16), data
    )
    assert r["validation"]["max_drop"] == 1.0 and r["validation"]["drop"] <= 1.0
    enc = encode(load_tokenizer(model), data.dev["dev"], 32)
    ref = run_model(load_model(model).eval(), enc, False, 64, "cpu").logits
    out = run_model(load_runnable(tmp_path / precision, "cpu"), enc, False, 64, "cpu").logits
    assert np.abs(out - ref).max() <= bound
    assert (out.argmax(-1) == ref.argmax(-1)).mean() >= 0.95
    if precision == "mixed":
        assert "int4" in r["mixed"]["components"].values()  # the plan really used 4-bit matrices


def test_auto_precision_picks_the_measured_faster_artifact(tiny_task, tmp_path):
    model, data, _ = tiny_task
    r = export_model(model, tmp_path / "auto", ExportConfig(precision="auto", device="cpu", max_drop=100), data)
    c = r["auto"]["candidates"]
    assert set(c) == {"fp32", "int8"} and r["precision"] == r["auto"]["chosen"]
    assert c[r["precision"]]["latency_p50_ms"] == min(v["latency_p50_ms"] for v in c.values())
    g = onnx.load(str(tmp_path / "auto" / "model.onnx")).graph
    assert any(n.op_type in ("QAttention", "MatMulInteger") for n in g.node) == (r["precision"] == "int8")


def test_mixed_precision_plan_keeps_the_longest_passing_prefix(tmp_path):
    """Scripted scores: the metric falls by one point per int4 matrix; fp32 fallbacks when int8 alone fails."""
    from axformer.export.precision import plan_mixed_precision
    from axformer.export.quantize import WeightNode

    nodes = [WeightNode(f"mm{i}", "MatMul", f"w{i}", (4, 4), f"L{i}.ffn.up") for i in range(6)] + [
        WeightNode("att", "Attention", "wa", (4, 12), "L0.attn.qkv")
    ]
    sens4 = {f"L{i}.ffn.up@int4": float(6 - i) for i in range(6)}  # mm5 least sensitive
    plans = []

    def fake_apply(source, target, plan, block_size, table_block_size=None, calibration=None, keep_fp32=()):
        plans.append(dict(plan))
        target.write_bytes(b"x" * (1 + sum(p == "int8" for p in plan.values())))
        return target

    import axformer.export.precision as precision

    orig = precision.apply_plan
    precision.apply_plan = fake_apply
    try:

        def score(_path):
            p = plans[-1]
            return 90.0 - sum(v == "int4" for v in p.values())

        result = plan_mixed_precision(
            tmp_path / "f.onnx", nodes, lambda bits, comps: sens4, score, threshold=87.0, work=tmp_path
        )
        assert sorted(n for n, v in result.plan.items() if v == "int4") == [
            "mm3",
            "mm4",
            "mm5",
        ]  # the 3 least sensitive
        assert result.plan["att"] == "int8" and result.metric == 87.0
        # int8 alone fails: the most int8-sensitive matrices return to fp32 first
        sens8 = {**{f"L{i}.ffn.up@int8": float(i) for i in range(6)}, **{f"L0.attn.{k}@int8": 0.0 for k in "qkv"}}
        plans.clear()

        def score8(_path):
            p = plans[-1]
            return 80.0 + 2 * sum(v == "fp32" for v in p.values()) - sum(v == "int4" for v in p.values())

        result = plan_mixed_precision(
            tmp_path / "f.onnx",
            nodes,
            lambda bits, comps: sens8 if bits == 8 else sens4,
            score8,
            threshold=84.0,
            work=tmp_path,
        )
        # 1 fp32 matrix gives 82, 2 give 84: the two most int8-sensitive; then any int4 would cost a point
        assert sorted(n for n, v in result.plan.items() if v == "fp32") == ["mm4", "mm5"]
        assert "int4" not in result.plan.values() and result.metric == 84.0
    finally:
        precision.apply_plan = orig


def test_size_ladder_rounds_further_and_stops_at_the_byte_target(tmp_path, monkeypatch):
    """Scripted: every matrix costs 4 bytes in int8, 3 in int4/16, 2.5 in int4 (blocks of 32), 2 in int4/128; each
    int4 matrix costs a point, a coarse one two. The size objective climbs the finer and coarser rungs as far as the
    tolerance allows; with a byte target every rung stops at the shortest prefix reaching it."""
    import axformer.export.precision as precision
    from axformer.export.precision import plan_mixed_precision
    from axformer.export.quantize import WeightNode

    nodes = [WeightNode(f"mm{i}", "MatMul", f"w{i}", (4, 4), f"L{i}.ffn.up") for i in range(6)]
    sens4 = {f"L{i}.ffn.up@int4": float(6 - i) for i in range(6)}  # mm5 least sensitive
    cost = {"int8": 4.0, "int4/16": 3.0, "int4": 2.5, "int4/128": 2.0}
    loss = {"int8": 0.0, "int4/16": 0.5, "int4": 1.0, "int4/128": 2.0}
    plans = []

    def fake_apply(source, target, plan, block_size, table_block_size=None, calibration=None, keep_fp32=()):
        plans.append(dict(plan))
        target.write_bytes(b"x" * int(2 * sum(cost[p] for p in plan.values())))
        return target

    monkeypatch.setattr(precision, "apply_plan", fake_apply)

    def score(_path):
        return 90.0 - sum(loss[v] for v in plans[-1].values())

    def plan(threshold, target=None):
        return plan_mixed_precision(
            tmp_path / "f.onnx", nodes, lambda bits, comps: sens4, score, threshold, tmp_path,
            objective="size", target_bytes=target,
        )  # fmt: skip

    # 4.5 points: four int4 (least sensitive first), then of the two left in int8 the less sensitive goes to
    # int4/16 for half a point; coarser blocks cost a point more each: none fits
    r = plan(85.5)
    assert r.plan == {"mm0": "int8", "mm1": "int4/16", "mm2": "int4", "mm3": "int4", "mm4": "int4", "mm5": "int4"}
    assert r.metric == 85.5 and r.size_bytes == int(2 * (4 + 3 + 4 * 2.5))
    assert [p.step for p in r.probes][0] == "int8->fp32" and {"int8->int4", "int8->int4/16"} <= {
        p.step for p in r.probes
    }
    # unbounded: everything in the coarsest blocks
    assert set(plan(0.0).plan.values()) == {"int4/128"}
    # a target of 44 bytes (all int8: 48) needs two int4 matrices (42), not the four the tolerance allows
    r = plan(85.5, target=44)
    assert sorted(n for n, v in r.plan.items() if v == "int4") == ["mm4", "mm5"] and r.size_bytes == 42
    assert set(r.plan.values()) == {"int8", "int4"} and r.target_bytes == 44
    # a target reached by int8 alone rounds nothing to int4
    assert set(plan(85.5, target=48).plan.values()) == {"int8"}


def test_apply_plan_writes_each_int4_matrix_in_its_own_block_size(tiny_task, tmp_path):
    from axformer.export.onnx_export import export_onnx
    from axformer.export.quantize import apply_plan, weight_nodes
    from axformer.models.loading import load_model

    model, _, _ = tiny_task
    raw = export_onnx(load_model(model), tmp_path / "raw.onnx")
    matmuls = [n.node for n in weight_nodes(onnx.load(str(raw))) if n.op_type == "MatMul"][:3]
    plan = {matmuls[0]: "int4", matmuls[1]: "int4/16", matmuls[2]: "int4/64"}
    out = apply_plan(raw, tmp_path / "mixed.onnx", plan, block_size=32)
    blocks = {
        n.name: next(a.i for a in n.attribute if a.name == "block_size")
        for n in onnx.load(str(out)).graph.node
        if n.op_type == "MatMulNBits"
    }
    assert sorted(blocks.values()) == [16, 32, 64]
    assert not list(tmp_path.glob("*stage*"))  # the per-block intermediate files are removed


def test_export_cli_bad_input(monkeypatch, capsys, tiny_task, tmp_path):
    model, _, (train, dev) = tiny_task
    out = tmp_path / "out"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "export",
        model,
        "-o",
        out,
        "--precision",
        "int3",
        "--train",
        train,
        "--dev",
        dev,
        "--text-column",
        "text",
    )
    assert_clean_failure(code, err, out, r"--precision 'int3'; expected one of fp32, int8, int4, fp16, mixed")
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "export",
        tmp_path / "nope",
        "-o",
        out,
        "--train",
        train,
        "--dev",
        dev,
        "--text-column",
        "text",
    )
    assert_clean_failure(code, err, out, r"nope does not exist")


def test_int8_minilm_keeps_sst2_heldout_accuracy(minilm_sst2, tmp_path):
    """Real model and data: dynamic int8 with per-channel weights stays within a point on the held-out split.

    2,000 examples: held out by sentence, SST-2's held-out split has whole unseen sentences, on which this weakly
    tuned model (1,600 sentences, one epoch) has many borderline answers; 400 examples (5 answers net = 1.25
    points) could not resolve one point."""
    tuned, _, data = minilm_sst2
    r = export_model(tuned, tmp_path / "int8", ExportConfig(precision="int8", max_examples=2000, device="cpu"), data)
    assert r["fusion"]["fused_operators"]["Attention"] == 6
    assert abs(r["validation"]["drop"]) <= 1.0
    assert r["size_bytes"] < 0.75 * sum(f.stat().st_size for f in tuned.glob("*.safetensors"))


def test_int8_weights_take_7_bits_where_the_kernel_saturates():
    """ONNX Runtime's uint8 x int8 kernel saturates on AVX2/AVX-512 without VNNI: reduce_range there only."""
    from axformer.export.quantize import saturates_u8s8

    assert saturates_u8s8("processor\t: 0\nflags\t\t: fpu sse avx avx2 fma\n")
    assert saturates_u8s8("flags\t\t: avx2 avx512f avx512bw\n")
    assert not saturates_u8s8("flags\t\t: avx2 avx512f avx512_vnni\n")
    assert not saturates_u8s8("flags\t\t: avx2 avx_vnni\n")
    assert not saturates_u8s8("Features\t: fp asimd\n")  # ARM: no x86 kernel, nothing to reduce
