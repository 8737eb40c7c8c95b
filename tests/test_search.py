"""The search: AxFormer's exact trial order and rule, the tolerance of the constraint mode, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from axformer.evaluation.engine import CandidateResult
from axformer.search.accuracy import AccuracySearchConfig, accuracy_search
from axformer.search.config import AttentionSearch, Certification, Recovery, Tolerance
from axformer.search.trials import Trials
from axformer.surgery.structure import ModelStructure
from tests.conftest import tiny_speed_search

BASE = [1.0, 1.0, 1.0, 1.0]
SCRIPT = {  # candidate -> per-example held-out losses (anything else: [2, 2, 2, 2], rejected)
    "L1.attn.top30": [0.9, 0.9, 0.9, 1.1],  # mean .95 < 1, 3 of 4 not worse: accepted
    "L2.ffn": [1.0, 1.0, 1.0, 1.1],  # mean 1.025: rejected, but < 1.1 x .95: descend into groups
    "L2.ffn.group0of3": [0.9, 0.9, 0.9, 1.0],  # accepted (.925)
    "L2.attn": [3.0, 3.0, 3.0, 3.0],  # far above the slack: heads not tried
    "L1.ffn": [0.8, 0.8, 0.8, 1.0],  # accepted (.85)
    "L1.attn": [0.9, 0.9, 1.2, 1.2],  # 1.05 > 1.1 x .85: not refined
    "L0.attn": [0.1, 0.1, 1.1, 1.1],  # lower mean but only 2 of 4 not worse: rejected, descend
    "L0.attn.head0": [0.8, 0.8, 0.8, 0.9],  # accepted (.825)
}
EXPECTED_ORDER = [
    "L0.attn.top30",
    "L1.attn.top30",
    "L2.attn.top30",
    "L2.ffn",
    "L2.ffn.group0of3",
    "L2.ffn.group1of3",
    "L2.ffn.group2of3",
    "L2.attn",
    "L1.ffn",
    "L1.attn",
    "L0.ffn",
    "L0.attn",
    "L0.attn.head0",
    "L0.attn.head1",
]


class ScriptedEngine:
    """Stands in for the evaluation engine: fixed losses per candidate, and a record of what was evaluated."""

    def __init__(self):
        self.reference = self._result((), (), BASE)
        self.evaluated: list[str] = []

    @staticmethod
    def _result(removed, changes, losses):
        return CandidateResult(
            tuple(removed),
            tuple(changes),
            np.asarray(losses, dtype=np.float32),
            np.zeros((4, 2), np.float32),
            True,
            4,
            0,
            0.0,
            {"accuracy": 0.0},
        )

    def evaluate(self, removed=(), changes=(), stop=None, desc=None):
        name = "+".join([*removed, *(c.key for c in changes)])
        self.evaluated.append(name)
        return self._result(removed, [c.key for c in changes], SCRIPT.get(name, [2.0] * 4))

    def set_base(self, removed=(), changes=()):
        return self.reference


def _search(log=None):
    engine = ScriptedEngine()
    trials = Trials(engine, log, "accuracy")
    structure = ModelStructure.full(3, 2, 4, 24, 8)
    out = accuracy_search(trials, structure, AccuracySearchConfig(groups=3))
    return engine, trials, out


def test_accuracy_mode_follows_the_published_order_and_rule():
    engine, trials, out = _search()
    assert engine.evaluated == EXPECTED_ORDER
    assert out.removed == ["L2.ffn.group0of3", "L1.ffn", "L0.attn.head0"]
    assert list(out.attention) == [1] and out.attention[1]["k"] == 30 and not out.attention[1]["renormalize"]
    assert out.min_loss == pytest.approx(0.825)
    assert [d.accepted for d in trials.decisions].count(True) == 4


def test_accuracy_mode_resumes_from_its_log_without_re_evaluating(tmp_path):
    log = tmp_path / "search_log.jsonl"
    _, _, full = _search(log)
    lines = log.read_text().splitlines()
    assert len(lines) == len(EXPECTED_ORDER)
    # a SIGKILL mid-write: 6 complete rows and a torn seventh, which is dropped and re-evaluated
    log.write_text("\n".join(lines[:6]) + "\n" + lines[6][: len(lines[6]) // 2])
    engine, trials, again = _search(log)
    assert engine.evaluated == EXPECTED_ORDER[6:]
    assert [
        json.loads(l)["candidate"] for l in log.read_text().splitlines()
    ] == EXPECTED_ORDER  # appended rows start on their own line
    assert (again.removed, again.attention, again.min_loss) == (full.removed, full.attention, full.min_loss)
    engine, _, third = _search(log)  # complete log: nothing is evaluated
    assert engine.evaluated == [] and third.removed == full.removed


def test_log_of_another_run_is_refused(tmp_path):
    from axformer.errors import AxformerError

    log = tmp_path / "search_log.jsonl"
    log.write_text(
        json.dumps(
            {
                "trial": 0,
                "stage": "hard_attention",
                "candidate": "L5.ffn",
                "accepted": False,
                "mean_loss": 1.0,
                "complete": True,
            }
        )
        + "\n"
    )
    with pytest.raises(AxformerError, match="does not belong to this run"):
        _search(log)


def test_constraint_mode_never_breaks_the_tolerance(tuned_tiny, tmp_path):
    from axformer.search.optimize import optimize

    model, data, _ = tuned_tiny
    report = optimize(
        model,
        data,
        None,
        tmp_path / "speed",
        tiny_speed_search(),
    )
    # the bounds, derived here from the original model on the same held-out examples, not read off the report
    from axformer.evaluation import score
    from axformer.evaluation.context import load_context
    from axformer.inference import run_model

    # the deciding examples: the held-out split less its confirmation part (default 40%, seeded, stratified)
    ctx = load_context(model, data, None, 2000, 0, "cpu", confirm_fraction=0.4)
    original = score(data.spec, ctx.heldout.labels, run_model(ctx.model, ctx.encoded, False, 64, "cpu"))
    thresholds = {m: v - 3.0 for m, v in original.metrics.items()}
    max_loss = original.loss * 1.4
    assert set(thresholds) == {"accuracy", "f1", "mcc"}
    assert report["search"]["thresholds"] == pytest.approx(thresholds)
    assert report["search"]["max_loss"] == pytest.approx(max_loss)
    rows = [json.loads(l) for l in (tmp_path / "speed" / "search_log.jsonl").read_text().splitlines()]
    assert any(r["accepted"] for r in rows) and any(not r["accepted"] for r in rows)
    for r in rows:
        within = r["complete"] and r["mean_loss"] <= max_loss + 1e-9
        within = within and all(r["metrics"][m] >= t - 1e-9 for m, t in thresholds.items())
        assert r["accepted"] == within, r
    # the saved model, scored again from disk, holds every guarded metric
    from axformer.models.loading import load_model as reload

    final = score(
        data.spec, ctx.heldout.labels, run_model(reload(tmp_path / "speed").eval(), ctx.encoded, False, 64, "cpu")
    )
    assert all(final.metrics[m] >= t - 1e-9 for m, t in thresholds.items()) and final.loss <= max_loss + 1e-9
    assert report["results"]["optimized"]["parameters"] < report["results"]["original"]["parameters"]
    # the saved model is the searched one, physically pruned, and reloads with one call
    from axformer.models.loading import load_model
    from axformer.surgery.prune import count_parameters

    assert count_parameters(load_model(tmp_path / "speed")) == report["results"]["optimized"]["parameters"]
    assert (tmp_path / "speed" / "report.md").read_text().count("|") > 20


def _interrupt_trial(monkeypatch, n: int):
    """Make the n-th trial raise KeyboardInterrupt (Ctrl-C); returns the real Trials.run to restore."""
    from axformer.search import trials as trials_mod

    real_run = trials_mod.Trials.run
    calls = {"n": 0}

    def interrupted(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real_run(self, *a, **k)

    monkeypatch.setattr(trials_mod.Trials, "run", interrupted)
    return lambda: monkeypatch.setattr(trials_mod.Trials, "run", real_run)


def test_ctrl_c_saves_the_best_so_far_and_the_rerun_resumes(tuned_tiny, tmp_path, monkeypatch):
    from axformer.errors import AxformerError
    from axformer.models.loading import load_model
    from axformer.search.optimize import OptimizeConfig, optimize

    model, data, _ = tuned_tiny
    cfg = OptimizeConfig(
        goal="size", groups=4, device="cpu", progress=False, latency_examples=5, tolerance=Tolerance(max_drop=3.0)
    )
    straight = optimize(model, data, None, tmp_path / "straight", cfg)
    restore = _interrupt_trial(monkeypatch, 6)
    with pytest.raises(AxformerError, match="interrupted after"):
        optimize(model, data, None, tmp_path / "resumed", cfg)
    partial = tmp_path / "resumed.partial"
    assert (partial / "best_so_far" / "model.safetensors").is_file()
    load_model(partial / "best_so_far")
    restore()
    logged = [json.loads(l) for l in (partial / "search_log.jsonl").read_text().splitlines()]
    again = optimize(model, data, None, tmp_path / "resumed", cfg)
    assert again["search"]["from_log"] == 5
    # the search time counts the replayed trials' logged evaluation time, not only this invocation's
    assert (
        again["search"]["seconds"] >= again["search"]["seconds_this_run"] + sum(r["seconds"] for r in logged[:5]) - 1e-9
    )
    assert (again["removed"], again["attention"]) == (straight["removed"], straight["attention"])


def test_sigkill_and_rerun_give_the_uninterrupted_result(tuned_tiny, tmp_path):
    from axformer.search.optimize import OptimizeConfig, optimize

    model, data, (train, dev) = tuned_tiny
    straight = optimize(
        model,
        data,
        None,
        tmp_path / "straight",
        OptimizeConfig(
            goal="accuracy", groups=4, device="cpu", progress=False, latency_examples=5, attention=AttentionSearch(k=2)
        ),
    )
    args = [
        sys.executable,
        "-m",
        "axformer.cli",
        "optimize",
        str(model),
        "--goal",
        "accuracy",
        "--train",
        str(train),
        "--dev",
        str(dev),
        "--text-column",
        "text",
        "--task",
        "toy",
        "--groups",
        "4",
        "--device",
        "cpu",
        "-k",
        "2",
        "--latency-examples",
        "5",
        "--until-stage",
        "search",
        "--scorer",
        "none",
        "-o",
        str(tmp_path / "killed"),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "killed" / "3-search.partial" / "search_log.jsonl"
    # a deterministic kill point: the child SIGKILLs itself right after writing its third trial to the log
    child = (
        "import os, signal, sys\n"
        "import axformer.search.trials as trials\n"
        "real, written = trials.append_jsonl, []\n"
        "def append_then_die(path, row):\n"
        "    real(path, row)\n"
        "    written.append(row)\n"
        "    if len(written) == 3:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "trials.append_jsonl = append_then_die\n"
        f"sys.argv = ['axformer', *{args[3:]!r}]\n"
        "from axformer.cli import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len(log.read_text().splitlines()) == 3 and not (tmp_path / "killed" / "3-search").exists()
    rerun = subprocess.run(args, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = json.loads((tmp_path / "killed" / "3-search" / "report.json").read_text())
    assert resumed["search"]["from_log"] >= 3 and resumed["search"]["resumed"]
    assert resumed["search"]["from_log"] == 3
    # decisions exactly; losses and metrics to float tolerance (two processes may sum in another order)
    assert (resumed["removed"], resumed["attention"]) == (straight["removed"], straight["attention"])
    got, want = resumed["results"]["optimized"]["heldout"], straight["results"]["optimized"]["heldout"]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert got["metrics"] == pytest.approx(want["metrics"], abs=1e-6)


def _size_search_recovered_by_continue(model, data, out):
    """A size search on the tiny model, recovered by fine-tuning from the searched weights."""
    from axformer.search.optimize import OptimizeConfig, optimize

    cfg = OptimizeConfig(
        goal="size",
        groups=4,
        device="cpu",
        progress=False,
        latency_examples=5,
        tolerance=Tolerance(max_drop=3.0),
        recovery=Recovery(mode="continue", epochs=1, learning_rate=1e-3),
    )
    return optimize(model, data, None, out, cfg)


def test_refinetune_continue_recovers_from_the_searched_weights(tuned_tiny, tmp_path, recovery_always_pays):
    from axformer.models.loading import load_model
    from axformer.models.record import ModelRecord
    from axformer.surgery.prune import current_structure

    model, data, _ = tuned_tiny
    report = _size_search_recovered_by_continue(model, data, tmp_path / "rec")
    rec = report["recovery"]
    assert rec["mode"] == "continue" and "accuracy" in rec["heldout_before"]["metrics"]
    import torch

    from axformer.surgery.prune import prune

    net = load_model(tmp_path / "rec")
    searched = load_model(model)
    prune(searched, report["removed"])
    assert current_structure(net).to_dict() == current_structure(searched).to_dict()  # same structure ...
    assert not torch.equal(net.classifier.weight, searched.classifier.weight)  # ... re-trained weights
    assert [h["stage"] for h in ModelRecord.load(tmp_path / "rec").history][-2:] == ["optimize", "finetune"]
    assert not (tmp_path / "rec" / "recovered").exists() and "Recovery:" in (tmp_path / "rec" / "report.md").read_text()


def test_recovery_pays_only_when_it_scores_higher_on_the_deciding_examples():
    from axformer.search.recovery import recovery_pays

    def scored(mcc, loss):
        return {"main_metric": "mcc", "metrics": {"mcc": mcc, "accuracy": 70.0}, "loss": loss}

    assert recovery_pays(scored(27.0, 0.5), scored(28.0, 0.9))  # the main metric first
    assert not recovery_pays(scored(31.0, 0.7), scored(27.4, 0.5))  # CoLA, session 24: a better loss is not enough
    assert recovery_pays(scored(30.0, 0.6), scored(30.0, 0.5))  # a tie: the lower loss
    assert not recovery_pays(scored(30.0, 0.5), scored(30.0, 0.5))  # nothing gained: the searched weights stay


def test_a_recovery_that_does_not_pay_leaves_the_searched_model(tuned_tiny, tmp_path, monkeypatch):
    """The recovered weights are kept only if they beat the searched model on the deciding examples; otherwise
    the searched model, as the search left it, is what is certified, saved and reported."""
    import torch

    import axformer.search.recovery as recovery
    from axformer.models.loading import load_model
    from axformer.models.record import ModelRecord
    from axformer.surgery.prune import prune

    judged = []
    monkeypatch.setattr(recovery, "recovery_pays", lambda before, after: judged.append((before, after)) or False)
    model, data, _ = tuned_tiny
    report = _size_search_recovered_by_continue(model, data, tmp_path / "rec")
    rec = report["recovery"]
    assert report["removed"] and len(judged) == rec.get("attempts", 1) and rec["kept"] is False
    before, after = judged[0]
    assert before == rec["heldout_before"] and after == rec["heldout_after"] and after != before
    shipped, searched = load_model(tmp_path / "rec"), load_model(model)
    prune(searched, report["removed"])
    assert torch.equal(shipped.classifier.weight, searched.classifier.weight)  # the searched weights, untrained
    assert ModelRecord.load(tmp_path / "rec").history[-1]["stage"] == "optimize"
    cert = report["certification"]
    assert cert["recovery"] is None and not cert["recovery_reverted"]
    assert "no better, and was not kept" in (tmp_path / "rec" / "report.md").read_text()


def test_refinetune_pretrained_puts_the_structure_on_the_pretrained_checkpoint(
    tuned_tiny, tmp_path, monkeypatch, recovery_always_pays
):
    """AxFormer's recovery: the found structure, cut from the pre-trained weights, fine-tuned again."""
    from axformer.errors import AxformerError
    from axformer.models.loading import load_model
    from axformer.models.record import ModelRecord
    from axformer.search.optimize import OptimizeConfig, optimize
    from axformer.search.recovery import pretrained_origin
    from axformer.surgery.prune import current_structure, prune

    model, data, _ = tuned_tiny
    origin = pretrained_origin(ModelRecord.load(model))
    assert origin is not None
    started = []
    import axformer.search.recovery as recovery

    real = recovery.finetune

    def spy(start, *a, **k):
        started.append(load_model(start))
        return real(start, *a, **k)

    monkeypatch.setattr(recovery, "finetune", spy)
    cfg = OptimizeConfig(
        goal="size",
        groups=4,
        device="cpu",
        progress=False,
        latency_examples=5,
        tolerance=Tolerance(max_drop=3.0),
        recovery=Recovery(mode="pretrained", epochs=1, learning_rate=1e-3),
        # the recovery's mechanics, not the certificate (which may reject a 1-epoch recovery and ship the search)
        certificate=Certification(fraction=0.0),
    )
    report = optimize(model, data, None, tmp_path / "pre", cfg)
    assert (
        report["recovery"]["mode"] == "pretrained"
        and "pre-trained checkpoint" in (tmp_path / "pre" / "report.md").read_text()
    )
    # fine-tuning started from the pre-trained encoder weights, cut to the found structure
    expected = load_model(origin)
    prune(expected, report["removed"])
    import torch

    first = dict(started[0].named_parameters())
    for name, p in expected.named_parameters():
        if "classifier" not in name:
            assert torch.equal(first[name], p), name
    assert current_structure(load_model(tmp_path / "pre")).to_dict() == current_structure(expected).to_dict()
    assert [h["stage"] for h in ModelRecord.load(tmp_path / "pre").history][-3:] == [
        "optimize",
        "structure-on-pretrained",
        "finetune",
    ]
    # a model with no recorded pre-trained origin is refused before any search
    with pytest.raises(AxformerError, match="records no pre-trained checkpoint"):
        optimize(origin, data, None, tmp_path / "no", cfg)
    assert not (tmp_path / "no").exists()


def test_speed_goal_resumes_with_its_saved_latency_calibration(tuned_tiny, tmp_path, monkeypatch):
    """Latency measurements never repeat exactly, so a resumed speed search must reuse the calibration it ranked
    with.
    """
    from axformer.errors import AxformerError
    from axformer.search.optimize import OptimizeConfig, optimize

    model, data, _ = tuned_tiny
    cfg = OptimizeConfig(
        goal="speed", groups=4, device="cpu", progress=False, latency_examples=5, tolerance=Tolerance(max_drop=3.0)
    )
    restore = _interrupt_trial(monkeypatch, 5)
    with pytest.raises(AxformerError, match="interrupted after"):
        optimize(model, data, None, tmp_path / "s", cfg)
    saved = json.loads((tmp_path / "s.partial" / "cost_model.json").read_text())
    restore()
    report = optimize(model, data, None, tmp_path / "s", cfg)
    assert report["search"]["from_log"] == 4
    assert report["search"]["cost_model"] == saved


def test_sign_matching_is_tried_where_top_k_is_rejected():
    """With both modes, a layer tries sign-matching attention only after its top-K trial is rejected."""
    engine = ScriptedEngine()
    SCRIPT_SIGN = {
        "L0.attn.sign30": [0.95, 0.95, 0.95, 1.0]
    }  # accepted (mean .9625); L1.attn.top30 (.95) then passes too
    real = ScriptedEngine.evaluate

    def evaluate(self, removed=(), changes=(), stop=None, desc=None):
        name = "+".join([*removed, *(c.key for c in changes)])
        if name in SCRIPT_SIGN:
            self.evaluated.append(name)
            return self._result(removed, [c.key for c in changes], SCRIPT_SIGN[name])
        return real(self, removed, changes, stop, desc)

    engine.evaluate = evaluate.__get__(engine)
    trials = Trials(engine, None, "accuracy")
    structure = ModelStructure.full(3, 2, 4, 24, 8)
    out = accuracy_search(trials, structure, AccuracySearchConfig(groups=3, attention_modes=("topk", "sign")))
    assert engine.evaluated[:5] == [
        "L0.attn.top30",
        "L0.attn.sign30",
        "L1.attn.top30",
        "L2.attn.top30",
        "L2.attn.sign30",
    ]
    assert out.attention[0]["mode"] == "sign" and out.attention[1]["mode"] == "topk"


@pytest.mark.parametrize("saving_ms", [-0.5, 0.5])
def test_speed_search_tries_approximate_attention_only_where_measured_faster(saving_ms, monkeypatch):
    from axformer.search.constraint import ConstraintSearchConfig, constraint_search
    from axformer.search.cost import CostModel

    class Tolerant(ScriptedEngine):  # every candidate keeps the metric: the tolerance is never the reason to stop
        spec = type("S", (), {"main_metric": "accuracy"})()
        encoded = type("E", (), {"labels": np.zeros(4, dtype=np.int64)})()
        regression = False

        def evaluate(self, removed=(), changes=(), stop=None, desc=None):
            name = "+".join([*removed, *(c.key for c in changes)])
            self.evaluated.append(name)
            # pruning anything is refused (metric 0), approximate attention keeps the metric
            ok = bool(changes)
            return CandidateResult(
                tuple(removed),
                tuple(changes),
                np.ones(4, np.float32),
                np.zeros((4, 2), np.float32),
                True,
                4,
                0,
                0.0,
                {"accuracy": 100.0 if ok else 0.0},
            )

    engine = Tolerant()
    engine.reference = CandidateResult(
        (), (), np.ones(4, np.float32), np.zeros((4, 2), np.float32), True, 4, 0, 0.0, {"accuracy": 100.0}
    )
    import axformer.search.constraint as cs

    structure = ModelStructure.full(2, 2, 4, 6, 8)
    attention = {
        m: {"dense_ms": 10.0, "approx_ms": 10.0 - 2 * saving_ms, "k": 30, "saving_ms_per_layer": saving_ms}
        for m in ("topk", "sign")
    }
    cost = CostModel(
        "latency", [1e-3, 1e-3, 1e-4, 1e-5], 128, [{"variant": "unchanged", "measured_ms": 3.0}], attention
    )
    fake_importance = type("I", (), {})()
    # patched for this test only (the ranking helpers are module globals every later test uses)
    monkeypatch.setattr(cs, "gradient_importance", lambda *a, **k: fake_importance)
    monkeypatch.setattr(cs, "_significance", lambda imp, name, structure, groups: 1.0)
    trials = Trials(engine, None, "accuracy")
    out = constraint_search(trials, structure, cost, ConstraintSearchConfig(attention_modes=("topk", "sign"), groups=2))
    tried = [n for n in engine.evaluated if ".attn.top" in n or ".attn.sign" in n]
    if saving_ms < 0:
        assert (
            tried == []
            and out.attention == {}
            and len(out.attention_notes) == 2
            and "slower than dense" in out.attention_notes[0]
        )
    else:
        assert tried == [
            "L1.attn.top30r",
            "L0.attn.top30r",
        ]  # top-K accepted in both layers: sign has nothing left to try
        assert set(out.attention) == {0, 1} and out.attention[0]["kernel"] == "gather" and out.predicted_ratio > 1


def test_the_search_shows_progress_and_its_bound_holds(tuned_tiny, tmp_path, capsys):
    """The pipeline's search stage used to print nothing for minutes: it shows trials, accepted and the metric."""
    from axformer.models.loading import load_model
    from axformer.search.accuracy import AccuracySearchConfig
    from axformer.search.accuracy import trial_bound as accuracy_bound
    from axformer.search.constraint import ConstraintSearchConfig
    from axformer.search.constraint import trial_bound as constraint_bound
    from axformer.search.optimize import OptimizeConfig, optimize
    from axformer.surgery.prune import current_structure

    model, data, _ = tuned_tiny
    structure = current_structure(load_model(model))
    for goal in ("accuracy", "speed"):
        capsys.readouterr()
        cfg = OptimizeConfig(
            goal=goal,
            groups=4,
            device="cpu",
            latency_examples=5,
            attention=AttentionSearch(k=2),
            tolerance=Tolerance(max_loss_increase=40.0),
        )
        report = optimize(model, data, None, tmp_path / goal, cfg)
        err = capsys.readouterr().err
        assert f"search ({goal})" in err and "trial" in err and "accepted" in err, err
        bound = (
            accuracy_bound(structure, AccuracySearchConfig(k=2, groups=4))
            if goal == "accuracy"
            else constraint_bound(structure, ConstraintSearchConfig(groups=4, attention_modes=("topk", "sign")))
        )
        assert 0 < report["search"]["trials"] <= bound


def test_coarse_units_search_removes_only_layers_and_blocks(tuned_tiny, tmp_path):
    """--units coarse (and auto with distillation): no trial of a single head or FFN group; the report says so."""
    from axformer.search.config import Recovery
    from axformer.search.constraint import COARSE_PHASES, ConstraintSearchConfig, trial_bound
    from axformer.search.optimize import OptimizeConfig, optimize
    from axformer.surgery.structure import ModelStructure

    assert OptimizeConfig(recovery=Recovery(mode="distill")).coarse_units_only
    assert not OptimizeConfig(recovery=Recovery(mode="continue")).coarse_units_only
    assert not OptimizeConfig(units="all", recovery=Recovery(mode="distill")).coarse_units_only
    assert OptimizeConfig(units="coarse").coarse_units_only
    structure = ModelStructure.full(2, 2, 4, 6, 8)
    # two layers, two blocks each: 2 + 4 coarse units; the fine phase adds 2 x (2 heads + 4 FFN groups)
    assert trial_bound(structure, ConstraintSearchConfig(groups=4, phases=COARSE_PHASES)) == 6
    assert trial_bound(structure, ConstraintSearchConfig(groups=4)) == 6 + 12
    model, data, _ = tuned_tiny
    cfg = OptimizeConfig(goal="size", units="coarse", groups=4, device="cpu", progress=False,
                         tolerance=Tolerance(max_drop=30.0))  # fmt: skip
    report = optimize(model, data, None, tmp_path / "coarse", cfg)
    rows = [json.loads(l) for l in (tmp_path / "coarse" / "search_log.jsonl").read_text().splitlines()]
    assert rows and not [r for r in rows if ".head" in r["candidate"] or ".group" in r["candidate"]]
    assert report["search"]["units"] == "coarse"
    assert "Units searched: whole layers and blocks only" in (tmp_path / "coarse" / "report.md").read_text()


def test_a_layer_that_would_overshoot_the_target_is_left_to_the_blocks(monkeypatch):
    """Three layers of cost 2.2 each (two blocks and 0.2 of overhead): one layer removed is 1.5x, two would be 3x.
    With a 1.8x target the second layer overshoots by more than 10%, so a block is taken instead (1.94x)."""
    import axformer.search.constraint as cs
    from axformer.search.constraint import ConstraintSearchConfig, constraint_search

    class KeepsEverything(ScriptedEngine):
        spec = type("S", (), {"main_metric": "accuracy"})()
        encoded = type("E", (), {"labels": np.zeros(4, dtype=np.int64)})()
        regression = False

        def evaluate(self, removed=(), changes=(), stop=None, desc=None):
            self.evaluated.append("+".join(removed))
            return self._result(removed, changes, BASE)

    class BlockCost:
        attention: dict = {}
        baseline = None  # ratios against the unpruned structure

        def predict(self, s):
            return sum(bool(s.layers[i].heads) + bool(s.layers[i].neurons) + 0.2 for i in s.present_layers)

        def attention_saving(self, mode):
            return 0.0

    engine = KeepsEverything()
    monkeypatch.setattr(cs, "gradient_importance", lambda *a, **k: None)
    monkeypatch.setattr(cs, "_significance", lambda imp, name, structure, groups: 1.0)
    structure = ModelStructure.full(3, 2, 4, 6, 8)
    cfg = ConstraintSearchConfig(target=1.8, groups=2, phases=cs.COARSE_PHASES)
    out = constraint_search(Trials(engine, None, "accuracy"), structure, BlockCost(), cfg)
    assert len(out.removed) == 2 and out.removed[0] in ("L0", "L1", "L2") and "." in out.removed[1]
    assert out.predicted_ratio == pytest.approx(6.6 / 3.4) and out.target_met
    # without a finer phase left, the layer is taken: overshooting is better than missing the target
    cfg = ConstraintSearchConfig(target=1.8, groups=2, phases=(("layer",),))
    out = constraint_search(Trials(KeepsEverything(), None, "accuracy"), structure, BlockCost(), cfg)
    assert len(out.removed) == 2 and all("." not in n for n in out.removed)


def test_the_cost_model_can_time_variants_as_the_int8_artifact_runs(tuned_tiny, tmp_path, monkeypatch):
    """--latency-runtime onnxruntime-int8: every variant the latency model is fitted on is exported, fused and
    quantised, and timed in an ONNX Runtime session (not in PyTorch); the search records where it timed, says so
    in its report, and a bad name is refused."""
    import axformer.export.deployed as deployed
    from axformer.errors import AxformerError
    from axformer.search.optimize import OptimizeConfig, optimize

    model, data, _ = tuned_tiny
    graphs = []
    real = deployed.int8_graph

    def spy(m, directory, name="model"):
        graphs.append(real(m, directory, name))
        return graphs[-1]

    monkeypatch.setattr(deployed, "int8_graph", spy)
    cfg = OptimizeConfig(goal="speed", groups=4, device="cpu", progress=False, latency_examples=10,
                         latency_runtime="onnxruntime-int8", tolerance=Tolerance(max_drop=3.0))  # fmt: skip
    optimize(model, data, None, tmp_path / "speed", cfg)
    cost = json.loads((tmp_path / "speed" / "cost_model.json").read_text())
    assert cost["runtime"] == "onnxruntime-int8" and cost["attention"] is None
    assert len(graphs) == len(cost["calibration"]) == 6 and all(p.name.endswith("-int8.onnx") for p in graphs)
    assert all(c["measured_ms"] > 0 for c in cost["calibration"])
    assert "over ONNX Runtime int8 of the original" in (tmp_path / "speed" / "report.md").read_text()
    with pytest.raises(AxformerError, match="--latency-runtime 'ort'; expected one of pytorch, onnxruntime-int8"):
        OptimizeConfig(goal="speed", latency_runtime="ort").validate()
