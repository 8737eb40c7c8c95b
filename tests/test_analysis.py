"""Significance analysis: the engine is exact, early stopping changes no decision, every scorer equals a naive
computation.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from axformer.analysis.ablation import ablation_candidates, run_ablation
from axformer.analysis.gradient import gradient_importance
from axformer.analysis.quantization import encoder_linears, run_quant_sensitivity
from axformer.analysis.similarity import layer_similarity
from axformer.data.batching import Encoded
from axformer.evaluation.engine import EvaluationEngine
from axformer.inference import run_model
from axformer.models.loading import load_model
from axformer.search.acceptance import AxFormerAcceptance, MetricTolerance
from axformer.surgery.fake_quant import fake_quantize
from axformer.surgery.masks import SoftMask
from axformer.surgery.prune import prune
from axformer.tasks.spec import get_task
from tests.conftest import TINY, make_tiny_model_dir, write_sentiment_files
from tests.test_cli import assert_clean_failure, run_cli, task_args
from tests.test_surgery import random_components

SPEC = get_task("sst2")
L = TINY["layers"]


def random_encoded(n: int = 70, seed: int = 0) -> Encoded:
    rng = np.random.default_rng(seed)
    ids = [rng.integers(5, 150, rng.integers(3, 24)) for _ in range(n)]
    return Encoded(ids, None, rng.integers(0, 2, n), 0)


def naive(model, enc, removed=(), batch_size=16):
    """A plain full forward pass of the masked model (no engine)."""
    with SoftMask(model) as mask:
        mask.set(removed)
        return run_model(model, enc, False, batch_size)


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_engine_equals_full_forward(tiny_arch_dir, prefix_cache):
    arch, path = tiny_arch_dir
    model = load_model(path).eval()
    enc = random_encoded()
    engine = EvaluationEngine(model, enc, SPEC, batch_size=16, prefix_cache=prefix_cache)
    rng = random.Random(1)
    candidates = [
        [],
        ["L0"],
        ["L2.attn.head1"],
        ["L1.ffn"],
        ["L1"],
        ["L2"],
        random_components(rng),
        random_components(rng),
    ]
    for cand in candidates:
        got = engine.evaluate(cand)
        ref = naive(model, enc, cand)
        np.testing.assert_allclose(got.losses, ref.losses, rtol=0, atol=1e-6)
        np.testing.assert_allclose(got.logits, ref.logits, rtol=0, atol=1e-6)
    engine.close()


def test_prefix_cache_runs_fewer_layers_and_follows_the_base(tiny_bert):
    model = load_model(tiny_bert).eval()
    enc = random_encoded()
    cached = EvaluationEngine(model, enc, SPEC, batch_size=16)
    batches = len(cached.batches)
    before = cached.layer_runs
    cached.evaluate(["L2.attn.head0"])
    assert cached.layer_runs - before == batches  # only the top layer ran
    # a new base below the cached layers invalidates them; results stay exact
    for base, cand in (
        (["L0.ffn"], ["L1.attn.head2"]),
        (["L0.ffn", "L2.ffn.group3of12"], ["L1"]),
        ([], ["L2.attn"]),
        (["L1"], ["L0.attn.head3"]),
    ):
        cached.set_base(base)
        got = cached.evaluate(cand)
        np.testing.assert_allclose(got.losses, naive(model, enc, base + cand).losses, rtol=0, atol=1e-6)
    cached.close()


def test_engine_on_a_physically_pruned_model(tiny_arch_dir):
    arch, path = tiny_arch_dir
    model = load_model(path).eval()
    prune(model, ["L1", "L0.attn.head2", "L2.ffn.group1of12"])
    enc = random_encoded()
    engine = EvaluationEngine(model, enc, SPEC, batch_size=16)
    for cand in (["L2.attn.head0"], ["L0.ffn"], ["L2"], ["L1.attn"]):  # L1.attn: already gone, a no-op
        np.testing.assert_allclose(engine.evaluate(cand).losses, naive(model, enc, cand).losses, rtol=0, atol=1e-6)
    engine.close()


def test_early_stopping_changes_no_decision(tiny_bert):
    model = load_model(tiny_bert).eval()
    enc = random_encoded(120)
    engine = EvaluationEngine(model, enc, SPEC, batch_size=8)
    ref = engine.reference
    names = ablation_candidates(engine.structure, groups=4)
    stopped_early = 0
    for min_loss_factor, fraction in ((1.0, 0.5), (1.02, 0.3), (0.99, 0.5), (1.1, 0.1)):
        rule = AxFormerAcceptance(ref.losses, ref.mean_loss * min_loss_factor, fraction)
        for name in names:
            full = engine.evaluate([name])
            fast = engine.evaluate([name], stop=rule)
            assert rule.accepts(full) == rule.accepts(fast), name
            if fast.complete:
                np.testing.assert_array_equal(fast.losses, full.losses)
            else:
                stopped_early += 1
                assert fast.evaluated < len(enc) and not rule.accepts(full)
    assert stopped_early > 0
    # the metric-tolerance rule (constraint mode) too, with and without a loss bound
    for max_loss in (None, ref.mean_loss * 1.05):
        rule = MetricTolerance({"accuracy": ref.metrics["accuracy"] - 2.0}, enc.labels, max_loss=max_loss)
        for name in names:
            assert rule.accepts(engine.evaluate([name])) == rule.accepts(engine.evaluate([name], stop=rule))
    engine.close()


def test_metric_tolerance_guards_every_metric_and_the_loss():
    """A collapse towards the majority class can keep F1 in tolerance; the accuracy guard must catch it."""
    labels = np.array([1] * 7 + [0] * 3)

    class R:
        complete = True

        def __init__(self, metrics, mean_loss=0.5):
            self.metrics, self.mean_loss = metrics, mean_loss

    both = MetricTolerance({"f1": 81.0, "accuracy": 73.0}, labels)
    main_only = MetricTolerance({"f1": 81.0}, labels)
    collapsed = R({"f1": 81.8, "accuracy": 70.0})
    assert main_only.accepts(collapsed) and not both.accepts(collapsed)
    assert both.accepts(R({"f1": 81.0, "accuracy": 73.0}))
    bounded = MetricTolerance({"f1": 81.0}, labels, max_loss=0.55)
    assert bounded.accepts(R({"f1": 90.0}, 0.55)) and not bounded.accepts(R({"f1": 90.0}, 0.56))
    assert "mean held-out loss <= 0.5500" in bounded.describe()


def test_axformer_acceptance_rule():
    base = np.array([0.5, 0.5, 0.5, 0.5])
    rule = AxFormerAcceptance(base, min_loss=0.5, fraction=0.5)

    class R:
        complete = True

        def __init__(self, losses):
            self.losses = np.asarray(losses)
            self.mean_loss = float(self.losses.mean())

    assert rule.accepts(R([0.4, 0.4, 0.5, 0.6]))  # lower mean, 3 of 4 not worse
    assert not rule.accepts(R([0.1, 0.1, 0.6, 0.6]))  # lower mean but only 2 of 4 (not more than half) not worse
    assert not rule.accepts(R([0.5, 0.5, 0.5, 0.5]))  # not strictly lower
    rule.accepted(R([0.4, 0.4, 0.5, 0.6]).mean_loss)
    assert rule.min_loss == pytest.approx(0.475) and not rule.accepts(R([0.45, 0.45, 0.5, 0.5]))


def test_ablation_rows_equal_naive(tiny_arch_dir):
    arch, path = tiny_arch_dir
    model = load_model(path).eval()
    enc = random_encoded()
    engine = EvaluationEngine(model, enc, SPEC, batch_size=16)
    names = ablation_candidates(engine.structure, groups=12)
    assert len(names) == L * (3 + TINY["heads"] + 12)
    rows = run_ablation(engine, names, progress=False)
    base = naive(model, enc)
    for name in random.Random(0).sample(names, 12):
        row, losses = rows[name]
        ref = naive(model, enc, [name])
        np.testing.assert_allclose(losses, ref.losses, rtol=0, atol=1e-6)
        assert row.delta_loss == pytest.approx(ref.mean_loss - base.mean_loss, abs=1e-6)
        assert row.not_worse_fraction == pytest.approx(float((ref.losses <= base.losses).mean()))
        acc = 100 * float((ref.logits.argmax(-1) == enc.labels).mean())
        assert row.metric == pytest.approx(acc)
    engine.close()


def _gate_loss(model, enc, kind, layer, index, value):
    """Summed loss of one batch holding every example, with one gate set to ``value`` (finite differences)."""
    with SoftMask(model) as mask, torch.no_grad():
        gates = {
            "head": mask.head_gates,
            "neuron": mask.neuron_gates,
            "attn": mask.attn_gates,
            "ffn": mask.ffn_gates,
            "layer": mask.layer_gates,
        }[kind]
        g = gates[layer]
        if g.ndim:
            g[index] = value
        else:
            g.fill_(value)
        mask._active = set(mask.layer_gates)
        return float(run_model(model, enc, False, batch_size=len(enc)).losses.astype(np.float64).sum())


def test_gradient_importance_equals_finite_differences(tiny_arch_dir):
    arch, path = tiny_arch_dir
    model = load_model(path).eval()
    enc = random_encoded(24)
    engine = EvaluationEngine(model, enc, SPEC, batch_size=len(enc))  # one batch: importance = |dL/dgate|
    imp = gradient_importance(engine, groups=4, progress=False)
    eps = 1e-2
    for kind, layer, index, got in (
        ("head", 1, 2, imp.heads[1, 2]),
        ("head", 2, 0, imp.heads[2, 0]),
        ("neuron", 0, 5, imp.neurons[0, 5]),
        ("attn", 2, None, imp.attn[2]),
        ("ffn", 1, None, imp.ffn[1]),
        ("layer", 0, None, imp.layer[0]),
    ):
        fd = abs(
            _gate_loss(model, enc, kind, layer, index, 1 + eps) - _gate_loss(model, enc, kind, layer, index, 1 - eps)
        ) / (2 * eps)
        assert got == pytest.approx(fd, rel=0.03, abs=2e-3), (kind, layer, index)
    assert imp.groups[0].sum() == pytest.approx(np.nansum(imp.neurons[0]))
    engine.close()


def test_gradient_importance_marks_removed_units_absent(tiny_bert):
    model = load_model(tiny_bert).eval()
    engine = EvaluationEngine(model, random_encoded(24), SPEC, batch_size=8)
    engine.set_base(["L1", "L0.attn.head3"])
    imp = gradient_importance(engine, groups=4, normalize_heads=True, progress=False)
    assert np.isnan(imp.heads[1]).all() and np.isnan(imp.layer[1]) and np.isnan(imp.heads[0, 3])
    np.testing.assert_allclose(np.nansum(imp.heads[0] ** 2), 1.0)
    for p in model.parameters():
        assert p.requires_grad  # restored
    engine.close()


def test_layer_similarity_equals_hidden_states(tiny_bert):
    model = load_model(tiny_bert).eval()
    enc = random_encoded(30)
    engine = EvaluationEngine(model, enc, SPEC, batch_size=7)
    sim = layer_similarity(engine)
    # naive: hidden states of every layer from transformers itself, cosine over real tokens
    from axformer.data.batching import collate

    batch = collate(enc, np.arange(len(enc)), with_labels=False)
    attn_out = {}
    handles = [
        layer.attention.register_forward_hook(lambda m, a, o, i=i: attn_out.__setitem__(i, o[0]))
        for i, layer in enumerate(model.bert.encoder.layer)
    ]
    with torch.no_grad():
        hs = model(**batch, output_hidden_states=True).hidden_states
    for h in handles:
        h.remove()
    keep = batch["attention_mask"].bool()
    cos = torch.nn.functional.cosine_similarity
    for i in range(L):
        x, a, y = hs[i][keep], attn_out[i][keep], hs[i + 1][keep]
        assert sim.layer[i] == pytest.approx(float((1 - cos(x, y, dim=-1)).mean()), abs=1e-5)
        assert sim.attn[i] == pytest.approx(float((1 - cos(x, a, dim=-1)).mean()), abs=1e-5)
        assert sim.ffn[i] == pytest.approx(float((1 - cos(a, y, dim=-1)).mean()), abs=1e-5)
    engine.close()


def test_fake_quantize_matches_a_direct_computation():
    w = torch.randn(6, 70)
    q8 = fake_quantize(w, 8)
    scale = w.abs().amax(1, keepdim=True) / 127
    torch.testing.assert_close(q8, torch.clamp(torch.round(w / scale), -127, 127) * scale)
    q4 = fake_quantize(w, 4, block_size=32)  # ONNX Runtime's rule: the signed peak is level -8 (test_fake_quant)
    for start in (0, 32, 64):
        block = w[:, start : start + 32]
        peak = block.gather(1, block.abs().argmax(1, keepdim=True))
        s = peak / -8
        torch.testing.assert_close(q4[:, start : start + 32], torch.clamp(torch.round(block / s), -8, 7) * s)
    assert (q8 - w).abs().max() <= scale.max() / 2 + 1e-6
    assert len(torch.unique(q4[0, :32])) <= 15


def test_quant_sensitivity_equals_naive_and_restores_weights(tiny_arch_dir):
    arch, path = tiny_arch_dir
    model = load_model(path).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    enc = random_encoded()
    engine = EvaluationEngine(model, enc, SPEC, batch_size=16)
    rows = run_quant_sensitivity(engine, bits=(4,), progress=False)
    linears = encoder_linears(engine)
    assert len(rows) == len(linears) == L * (4 if arch == "modernbert" else 6)  # fused QKV counts once
    layer, name, module_path = linears[-1]
    lin = model.get_submodule(module_path)
    original = lin.weight.data.clone()
    lin.weight.data = fake_quantize(original, 4, 32)
    expected = run_model(model, enc, False, 16).mean_loss
    lin.weight.data = original
    assert rows[f"{name}@int4"].mean_loss == pytest.approx(expected, abs=1e-6)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    engine.close()


def _analyze_args(model, out, train, dev, *extra):
    return task_args("analyze", model, out, train, dev, "--groups", "4", *extra)


def test_analyze_command_writes_report_and_resumes(monkeypatch, capsys, tmp_path):
    model = make_tiny_model_dir(tmp_path / "m", "bert", labels=["neg", "pos"])
    train, dev = write_sentiment_files(tmp_path / "data", n_train=120)
    out = tmp_path / "analysis"
    code, stdout, err = run_cli(monkeypatch, capsys, *_analyze_args(model, out, train, dev))
    assert code == 0, err
    sig = json.loads((out / "significance.json").read_text())
    assert {"ablation", "gradient", "similarity", "quantization"} <= set(sig)
    assert len(sig["ablation"]["rows"]) == L * (3 + TINY["heads"] + 4)
    assert sig["split"]["used"] == 18 and sig["warnings"]  # 15% of 120; not fine-tuned by axformer
    for f in (
        "summary.md",
        "heatmap_heads.png",
        "heatmap_ffn_groups.png",
        "blocks.png",
        "gradient_heads.png",
        "gradient_ffn_groups.png",
        "layer_scores.png",
        "ablation_losses.npz",
    ):
        assert (out / f).is_file(), f
    summary = (out / "summary.md").read_text()
    assert "![gradient_heads.png](gradient_heads.png)" in summary and "![layer_scores.png](layer_scores.png)" in summary
    losses = np.load(out / "ablation_losses.npz")
    assert losses["losses"].shape == (len(sig["ablation"]["rows"]), 18)
    assert not (tmp_path / "analysis.partial").exists()

    # an interrupted run keeps its logged rows in the partial directory; the rerun does not measure them again
    out2 = tmp_path / "again"
    work = tmp_path / "again.partial"
    first = sig["ablation"]["rows"][0]
    from axformer.analysis.analyze import AnalyzeConfig, analyze
    from axformer.tasks.sources import load_custom

    data = load_custom(train, dev, ("text",), "label", "classification", None, "custom")
    config = AnalyzeConfig(scorers=("ablation",), groups=4, device="cpu", progress=False)

    class Interrupt(Exception):
        pass

    calls = {"n": 0}
    import axformer.analysis.analyze as analyze_mod

    real = analyze_mod.run_ablation

    def interrupted(engine, comps, done, on_row, progress):
        def stop_after_two(row, losses):
            on_row(row, losses)
            calls["n"] += 1
            if calls["n"] == 2:
                raise Interrupt

        return real(engine, comps, done, stop_after_two, progress)

    monkeypatch.setattr(analyze_mod, "run_ablation", interrupted)
    with pytest.raises(Interrupt):
        analyze(model, data, None, out2, config)
    assert work.is_dir() and not out2.exists()
    monkeypatch.setattr(analyze_mod, "run_ablation", real)
    sig2 = analyze(model, data, None, out2, config)
    assert sig2["ablation"]["resumed_rows"] == 2 and sig2["resumed"]
    assert sig2["ablation"]["rows"][0]["delta_loss"] == pytest.approx(first["delta_loss"], abs=1e-7)


def test_analyze_bad_scorer(monkeypatch, capsys, tiny_bert, tmp_path):
    train, dev = write_sentiment_files(tmp_path / "data")
    out = tmp_path / "a"
    code, _, err = run_cli(
        monkeypatch, capsys, *_analyze_args(tiny_bert, out, train, dev, "--scorers", "ablation,magic")
    )
    assert_clean_failure(code, err, out, r"unknown scorer 'magic'")


def test_analyze_minilm_on_sst2_subset(minilm_sst2, tmp_path):
    """End to end on the real model and data: a small stratified held-out sample, fast scorers."""
    from axformer.analysis.analyze import AnalyzeConfig, analyze

    tuned, _, data = minilm_sst2
    sig = analyze(
        tuned,
        data,
        None,
        tmp_path / "an",
        AnalyzeConfig(scorers=("ablation", "similarity"), max_examples=16, device="cpu", progress=False),
    )
    assert sig["split"]["used"] == 16 and len(sig["ablation"]["rows"]) == 6 * (3 + 12 + 12)
    assert not sig["warnings"]  # the split is the one recorded at fine-tuning
    assert (tmp_path / "an" / "heatmap_heads.png").stat().st_size > 5000


def test_gradient_only_analysis_draws_gradient_maps_with_pruned_cells_blank(tmp_path):
    """Without an ablation (the pipeline's default scorers) the report still gets heatmaps: from the gradient scores;
    heads already removed (NaN) are left blank rather than drawn as zero importance."""
    from axformer.analysis.report import SCORE_FILES, summary_markdown, write_heatmaps

    heads = np.arange(8, dtype=float).reshape(2, 4)
    heads[1, 2] = np.nan
    sig = {
        "gradient": {
            "heads": heads.tolist(),
            "groups": [[1.0, 2.0], [3.0, np.nan]],
            "attn": [1.0, 2.0],
            "ffn": [0.5, 0.1],
            "layer": [3.0, 40.0],
            "normalized_heads": True,
        },
        "similarity": {"layer": [0.1, 0.2], "attn": [0.05, 0.1], "ffn": [0.02, 0.3]},
    }
    paths = write_heatmaps(sig, tmp_path)
    assert sorted(p.name for p in paths) == sorted(SCORE_FILES.values())
    assert all(p.stat().st_size > 5000 for p in paths)
    sig.update(
        {
            "model": "m",
            "task": {"display_name": "T", "main_metric": "accuracy"},
            "reference": {"mean_loss": 0.5, "metrics": {"accuracy": 90.0}},
            "split": {"used": 10, "full_size": 10, "fraction": 0.1, "seed": 0},
            "structure": {"layers": [{}, {}]},
            "timings": {},
        }
    )
    md = summary_markdown(sig)
    assert all(f"![{f}]({f})" in md for f in SCORE_FILES.values()) and "| L1 |" in md
