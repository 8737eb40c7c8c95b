"""The certificate: paired statistics against hand-computed values, backtracking, and a search whose promise
is judged on examples no decision used."""

from __future__ import annotations

import json

import numpy as np
import pytest

from axformer.evaluation.paired import paired_bootstrap, paired_standard_error, resampled_metrics
from axformer.search.certificate import AnswerChanges, Step, allowances, backtrack, certify
from axformer.search.trials import Trials
from axformer.tasks.metrics import compute_metrics


def test_paired_standard_error_matches_hand_computed_values():
    # d = candidate - original = [0, 1, 0, -1]: mean 0, sd (n-1) = sqrt(2/3), SE = sqrt(2/3) / 2
    assert paired_standard_error([1, 0, 1, 1], [1, 1, 1, 0]) == pytest.approx(np.sqrt(2 / 3) / 2)


def test_paired_bootstrap_of_an_accuracy_drop_matches_the_binomial_interval():
    """The candidate is wrong on 100 of 1000 examples the original gets right: the drop is exactly 10 points and
    its 95% interval is 10 +- 1.96 sqrt(0.09 / 1000) points, by hand."""
    labels = np.zeros(1000, dtype=np.int64)
    original = labels.copy()
    candidate = labels.copy()
    candidate[:100] = 1
    d = paired_bootstrap(["accuracy"], labels, original, candidate, resamples=4000, seed=1)["accuracy"]
    assert d.difference == pytest.approx(-10.0) and d.original == 100.0 and d.candidate == pytest.approx(90.0)
    half = 100 * 1.96 * np.sqrt(0.09 / 1000)
    assert d.low == pytest.approx(-10 - half, abs=0.3) and d.high == pytest.approx(-10 + half, abs=0.3)
    same = paired_bootstrap(["accuracy", "f1"], labels, original, original, resamples=200)
    assert all(x.low == x.high == x.difference == 0.0 for x in same.values())


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_vectorised_resample_metrics_equal_the_task_metrics(classes):
    rng = np.random.default_rng(classes)
    y = rng.integers(0, classes, (60, 7))  # short rows: some classes are absent from some resamples
    p = np.where(rng.random((60, 7)) < 0.6, y, rng.integers(0, classes, (60, 7)))
    names = ["accuracy", "f1_macro", "mcc"] + (["f1"] if classes == 2 else [])
    got = resampled_metrics(names, y, p)
    for m in names:
        want = np.array([compute_metrics([m], a, b)[m] for a, b in zip(y, p)])
        np.testing.assert_allclose(got[m], want, atol=1e-9)
    yr, pr = rng.normal(size=(20, 15)), rng.normal(size=(20, 15))
    got = resampled_metrics(["pearson", "spearman"], yr, pr)
    for m in ("pearson", "spearman"):
        np.testing.assert_allclose(got[m], [compute_metrics([m], a, b)[m] for a, b in zip(yr, pr)], atol=1e-9)


def test_certificate_rules_and_allowances():
    labels = np.zeros(400, dtype=np.int64)
    candidate = labels.copy()
    candidate[:2] = 1  # a 0.5-point drop
    est = certify(["accuracy"], "accuracy", labels, labels, candidate, {"accuracy": 1.0}, "estimate", 500,
                  classification=True)  # fmt: skip
    assert est.passed and est.main.difference == pytest.approx(-0.5)
    # its interval reaches past a 0.6-point allowance: the bound rule refuses what the estimate accepts
    assert certify(["accuracy"], "accuracy", labels, labels, candidate, {"accuracy": 0.6}, "estimate", 500).passed
    assert not certify(["accuracy"], "accuracy", labels, labels, candidate, {"accuracy": 0.6}, "bound", 500).passed

    assert est.answers == AnswerChanges(changed=2, fixed=0, broken=2)

    class Cfg:
        goal = "speed"
        tolerance = type("T", (), {"max_drop": 1.0, "max_rel_drop": 2.0, "guard": "all"})()

    assert allowances(Cfg, {"accuracy": 90.0, "f1": 20.0}, "accuracy") == {"accuracy": 1.0, "f1": 0.4}
    Cfg.tolerance.guard = "main"
    assert allowances(Cfg, {"accuracy": 90.0, "f1": 20.0}, "accuracy") == {"accuracy": 1.0}
    Cfg.goal = "accuracy"
    assert allowances(Cfg, {"accuracy": 90.0}, "accuracy") == {"accuracy": 0.0}


def test_backtracking_undoes_the_latest_steps_until_the_scripted_certificate_passes():
    steps = [Step(["L5.ffn"]), Step(["L4.attn"]), Step(["L3"]), Step(["L2.ffn"])]
    tried = []

    def certify_state(kept):
        names = [s.name for s in kept]
        tried.append(names)
        labels = np.zeros(100, dtype=np.int64)
        candidate = labels.copy()
        candidate[: 2 * len(kept)] = 1  # each kept step costs 2 points on the confirmation split
        return certify(["accuracy"], "accuracy", labels, labels, candidate, {"accuracy": 4.5}, "estimate", 200)

    result = backtrack(steps, certify_state)
    assert [s.name for s in result.kept] == ["L5.ffn", "L4.attn"]
    assert [s.name for s in result.undone] == ["L2.ffn", "L3"]  # latest first
    assert tried == [["L5.ffn", "L4.attn", "L3", "L2.ffn"], ["L5.ffn", "L4.attn", "L3"], ["L5.ffn", "L4.attn"]]
    assert [c.passed for c in result.certificates] == [False, False, True]
    # nothing kept always passes: the unchanged model is the original
    assert backtrack([Step(["L0"])], lambda kept: certify_state(kept * 3)).certificates[-1].passed


def test_the_certificate_uses_only_examples_the_decisions_never_saw(tuned_tiny, tmp_path):
    from axformer.search.config import Tolerance
    from axformer.search.optimize import OptimizeConfig, optimize

    model, data, _ = tuned_tiny
    calibration = tmp_path / "production.txt"
    dev_text = data.dev["dev"].texts[0][0]
    calibration.write_text(f"a good day\na bad day\n{dev_text}\n")
    cfg = OptimizeConfig(goal="speed", groups=4, device="cpu", progress=False, latency_examples=5,
                         tolerance=Tolerance(max_drop=3.0, max_loss_increase=40.0),
                         calibration_texts=str(calibration))  # fmt: skip
    report = optimize(model, data, None, tmp_path / "run", cfg)
    fid = report["fidelity"]
    assert fid["removed_dev_texts"] == 1 and fid["calibration texts"]["texts"] == 2
    assert 0 <= fid["training texts"]["agreement"] <= 100 and fid["training texts"]["texts"] > 0
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    decision, confirmation = set(split["decision_positions"]), set(split["confirmation_positions"])
    assert decision and confirmation and not decision & confirmation
    rows = [json.loads(line) for line in (tmp_path / "run" / "search_log.jsonl").read_text().splitlines()]
    assert rows and all(r["examples_sha256"] == split["decision_sha256"] for r in rows)
    assert report["split"]["used"] == len(decision)
    cert = report["certification"]
    assert cert["certificate"]["examples"] == len(confirmation) == report["split"]["confirmation"]["used"]
    assert cert["decision_examples"] == len(decision)
    # decision, confirmation and dev figures side by side, for both models
    for name in ("original", "optimized"):
        assert {"heldout", "confirmation", "dev"} <= set(report["results"][name])
    main = cert["certificate"]["differences"]["accuracy"]
    conf = report["results"]
    assert main["candidate"] - main["original"] == pytest.approx(
        conf["optimized"]["confirmation"]["metrics"]["accuracy"]
        - conf["original"]["confirmation"]["metrics"]["accuracy"]
    )
    assert cert["certificate"]["passed"] and "Certificate (passed)" in (tmp_path / "run" / "report.md").read_text()
    # the changed answers, counted on the same confirmation examples, add up to the measured accuracy difference
    a = cert["certificate"]["answers"]
    assert a["fixed"] + a["broken"] <= a["changed"] <= len(confirmation)
    assert 100 * (a["fixed"] - a["broken"]) / len(confirmation) == pytest.approx(main["candidate"] - main["original"])
    assert (
        f"It answers {a['changed']} of the {len(confirmation)} confirmation examples differently"
        in (tmp_path / "run" / "report.md").read_text()
    )


def test_confirm_fraction_out_of_range_is_refused(monkeypatch, capsys, tiny_bert, tmp_path):
    from tests.conftest import write_sentiment_files
    from tests.test_cli import assert_clean_failure, run_cli

    train, dev = write_sentiment_files(tmp_path / "data")
    out = tmp_path / "out"
    args = ["optimize", tiny_bert, "-o", out, "--train", train, "--dev", dev, "--text-column", "text"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--confirm-fraction", "1.2")
    assert_clean_failure(code, err, out, r"--confirm-fraction 1\.2; expected a value from 0 \(off\) to below 1")
    code, _, err = run_cli(monkeypatch, capsys, *args, "--certify", "maybe")
    assert_clean_failure(code, err, out, r"--certify 'maybe'; expected one of estimate, bound")


def _result(losses):
    from axformer.evaluation.engine import CandidateResult

    losses = np.asarray(losses, dtype=np.float32)
    return CandidateResult((), (), losses, np.zeros((len(losses), 2), np.float32), True, len(losses), 0, 0.0, {})


def test_paired_accuracy_rule_matches_hand_computed_thresholds():
    from axformer.search.acceptance import PairedImprovement

    rule = PairedImprovement(np.ones(4, np.float32), min_loss=1.0, alpha=0.05, trials=1)
    assert rule.z == pytest.approx(1.6448536, abs=1e-6)
    assert rule.accepts(_result([0.5, 0.5, 0.5, 0.5]))  # a consistent improvement: d = 0.5, SE 0
    # d = [0.1, -0.1, 0.5, 0]: mean 0.125, SE = sqrt(0.2075 / 3) / 2 = 0.1315; 0.125 < 1.645 x 0.1315
    noisy = _result([0.9, 1.1, 0.5, 1.0])
    assert not rule.accepts(noisy)
    assert PairedImprovement(np.ones(4, np.float32), 1.0, alpha=0.6, trials=1).accepts(noisy)  # z = -0.25
    # a hundred trials: Bonferroni makes the bar z(0.05 / 100) = 3.29
    assert PairedImprovement(np.ones(4, np.float32), 1.0, 0.05, 100).z == pytest.approx(3.2905267, abs=1e-6)
    # never below the best loss so far, whatever the test says
    assert not PairedImprovement(np.ones(4, np.float32), min_loss=0.4).accepts(_result([0.5, 0.5, 0.5, 0.5]))
    # after an accepted step, the bar is that step's losses; replayed from a log (no losses), they are
    # re-evaluated once, when the next fresh candidate is judged
    rule.accepted(0.5, np.full(4, 0.5, np.float32))
    assert not rule.accepts(_result([0.45, 0.5, 0.5, 0.5]))  # a real improvement on the original, not on 0.5
    calls = []
    rule.current = lambda: calls.append(1) or (np.full(4, 0.6, np.float32), np.zeros((4, 2), np.float32))
    rule.accepted(0.6)
    assert rule.accepts(_result([0.4, 0.4, 0.4, 0.4])) and rule.accepts(_result([0.4, 0.4, 0.4, 0.4]))
    assert calls == [1]


def test_accuracy_search_with_the_paired_rule_keeps_only_real_improvements():
    """Scripted losses: L1.ffn improves every example; L0.ffn lowers the mean loss further and leaves most
    examples no worse, but with a spread that makes its improvement over the original noise (mean 0.24, SE 0.13,
    below z = 2.64 for 12 trials). The published rule keeps both; the paired rule keeps only the real one.
    Then L0.ffn instead rides on L1.ffn's gain (0.01 below it, with noise): a clear improvement on the original,
    none on the model it changes; the paired rule refuses it too."""
    from axformer.search.accuracy import AccuracySearchConfig, accuracy_search
    from axformer.surgery.structure import ModelStructure

    n = 40
    base = np.full(n, 1.0, np.float32)
    lucky = np.where(np.arange(n) < 21, 0.0, 1.6).astype(np.float32)  # mean 0.76, 21 of 40 not worse
    script = {"L1.ffn": base - 0.2, "L0.ffn": lucky}

    class Engine:  # scripted losses only: the paired rule's test on answers is tested on its own (below)
        spec = type("S", (), {"main_metric": "mse", "is_regression": True, "is_qa": False, "is_embedding": False})()

        def __init__(self):
            self.reference = _result(base)

        def evaluate(self, removed=(), changes=(), stop=None, desc=None):
            return _result(script.get("+".join(removed), base + 0.5))

        def set_base(self, removed=(), changes=()):
            return self.reference

    structure = ModelStructure.full(2, 2, 4, 6, 8)
    for rule, kept in (("axformer", ["L1.ffn", "L0.ffn"]), ("paired", ["L1.ffn"])):
        cfg = AccuracySearchConfig(groups=2, attention_modes=(), rule=rule)
        out = accuracy_search(Trials(Engine(), None, "accuracy"), structure, cfg)
        assert out.removed == kept, rule
        assert out.rule.startswith(rule)
    script["L0.ffn"] = (base - 0.21 + np.where(np.arange(n) % 2, 0.05, -0.05)).astype(np.float32)
    for rule, kept in (("axformer", ["L1.ffn", "L0.ffn"]), ("paired", ["L1.ffn"])):
        cfg = AccuracySearchConfig(groups=2, attention_modes=(), rule=rule)
        assert accuracy_search(Trials(Engine(), None, "accuracy"), structure, cfg).removed == kept, rule


def test_paired_rule_tests_answers_by_the_exact_sign_test():
    """Classification: a loss improvement must also fix significantly more answers than it breaks. Hand-computed:
    11 fixed, 0 broken: P = 0.5^11 = 4.88e-4 < 0.05 / 100; 10 fixed, 0 broken: 9.77e-4 > 5e-4; 14 fixed and 2
    broken: P(X >= 14 | 16, 0.5) = 137 / 65536 = 2.09e-3. A change that only makes the model more confident (the
    same answers, lower loss on every example) is refused."""
    from axformer.evaluation.engine import CandidateResult
    from axformer.search.acceptance import PairedImprovement

    n = 40
    labels = np.ones(n, np.int64)
    wrong = np.tile([[1.0, 0.0]], (n, 1)).astype(np.float32)  # the current model: every answer wrong

    def candidate(fixed: int, base=wrong):
        logits = base.copy()
        logits[:fixed] = [0.0, 1.0]
        return CandidateResult((), (), np.full(n, 0.5, np.float32), logits, True, n, 0, 0.0, {})

    def rule(trials=100, base=wrong):
        return PairedImprovement(np.ones(n, np.float32), 1.0, 0.05, trials, labels=labels, baseline_logits=base)

    assert rule().answers_p_value(candidate(11).logits) == pytest.approx(0.5**11)
    assert rule().accepts(candidate(11))
    assert not rule().accepts(candidate(10))  # 9.77e-4 is above 0.05 / 100
    assert rule(trials=50).accepts(candidate(10))  # ... and below 0.05 / 50
    assert not rule().accepts(candidate(0))  # lower loss everywhere, the same answers: not more accurate
    half = wrong.copy()
    half[14:16] = [0.0, 1.0]  # the current model gets examples 14 and 15 right; the candidate breaks them
    mixed = candidate(14, base=half)
    mixed.logits[14:16] = [1.0, 0.0]
    assert rule(base=half).answers_p_value(mixed.logits) == pytest.approx(137 / 65536)
    # an accepted candidate's answers become the bar; replayed from a log, the current state is re-evaluated
    r = rule(trials=1)
    first = candidate(11)
    assert r.accepts(first)
    r.accepted(first.mean_loss, first.losses)
    assert np.array_equal(r.baseline_logits, first.logits)
    assert not r.accepts(candidate(11))  # the same answers again fix nothing (and the loss is not lower)


def test_an_unknown_accuracy_rule_is_refused(monkeypatch, capsys, tiny_bert, tmp_path):
    from tests.conftest import write_sentiment_files
    from tests.test_cli import assert_clean_failure, run_cli

    train, dev = write_sentiment_files(tmp_path / "data")
    out = tmp_path / "out"
    args = ["optimize", tiny_bert, "-o", out, "--train", train, "--dev", dev, "--text-column", "text"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--goal", "accuracy", "--rule", "vibes")
    assert_clean_failure(code, err, out, r"--rule 'vibes'; expected one of paired, axformer")


def test_decisions_on_unrepresentative_examples_are_warned_about(tmp_path):
    """Short training phrases decide, long sentences are reported on (SST-2's case): the search says so."""
    from axformer.evaluation.context import load_context, representativeness_warnings
    from axformer.tasks.sources import load_custom
    from tests.conftest import make_tiny_model_dir

    (tmp_path / "train.csv").write_text(
        "text,label\n" + "".join(f"{'good' if i % 2 else 'bad'},{i % 2}\n" for i in range(80))
    )
    long = " ".join(["the movie was"] * 8)
    (tmp_path / "dev.csv").write_text(
        "text,label\n" + "".join(f"{long} {'good' if i % 4 else 'bad'},{int(i % 4 > 0)}\n" for i in range(40))
    )
    data = load_custom(tmp_path / "train.csv", tmp_path / "dev.csv", ("text",), "label", "classification", None, "t")
    ctx = load_context(make_tiny_model_dir(tmp_path / "m", "bert"), data, device="cpu")
    warnings = representativeness_warnings(ctx)
    assert any("tokens long (median)" in w for w in warnings)
    assert any("label balance" in w and "0.25" in w for w in warnings)  # 50/50 decides, 25/75 is reported


def test_calibration_texts_are_read_in_every_layout_and_never_include_dev_texts(tmp_path):
    from axformer.errors import AxformerError
    from axformer.tasks.calibration import load_calibration_texts, unseen_by_dev, without

    (tmp_path / "a.txt").write_text("good film\n\nbad film\n")
    assert load_calibration_texts(tmp_path / "a.txt", 1) == [("good film",), ("bad film",)]
    (tmp_path / "p.txt").write_text("a\tb\nc\td\n")
    assert load_calibration_texts(tmp_path / "p.txt", 2) == [("a", "b"), ("c", "d")]
    (tmp_path / "c.csv").write_text("id,sentence\n1,hello\n2,world\n")
    assert load_calibration_texts(tmp_path / "c.csv", 1, ("sentence",)) == [("hello",), ("world",)]
    # a TSV is read unquoted, as GLUE writes them: a text may start with a quote it never closes
    (tmp_path / "g.tsv").write_text('id\ts1\ts2\n1\t"Then he left.\tHe came back.\n2\tThe "beef" ?\tno\n')
    assert load_calibration_texts(tmp_path / "g.tsv", 2, ("s1", "s2")) == [
        ('"Then he left.', "He came back."),
        ('The "beef" ?', "no"),
    ]
    (tmp_path / "q.csv").write_text('id,sentence\n1,"hello, world"\n')  # a CSV's quotes still group a field
    assert load_calibration_texts(tmp_path / "q.csv", 1, ("sentence",)) == [("hello, world",)]
    (tmp_path / "j.jsonl").write_text('{"q": "x", "r": "y"}\n')
    assert load_calibration_texts(tmp_path / "j.jsonl", 2, ("q", "r")) == [("x", "y")]
    assert without([("a",), ("dev text",), ("b",)], {("dev text",)}) == ([("a",), ("b",)], 1)
    # a pair that holds one sentence of a dev pair, in either place, is a dev text too
    pairs = [("x", "dev a"), ("dev b ", "y"), ("x", "y")]
    assert without(pairs, {("dev a", "dev b")}) == ([("x", "y")], 2)
    # the training part is the model's own: a training question sharing its article with a dev question stays
    # (only an exact dev input goes); calibration inputs go on any shared text
    dev = {("q dev", "article")}
    training = [("q1", "article"), ("q dev", "article")]
    assert unseen_by_dev(training, [("q2", "article"), ("c", "d")], dev) == [("q1", "article"), ("c", "d")]
    bad = [
        (tmp_path / "missing.txt", 1, None, r"missing\.txt does not exist"),
        (tmp_path / "p.txt", 1, None, None),  # a tab in a single-text task is part of the text: fine
        (tmp_path / "a.txt", 2, None, r"a\.txt:1 has 1 tab-separated field\(s\); expected 2"),
        (tmp_path / "c.csv", 1, ("text",), r"c\.csv has no column 'text'; its columns are id, sentence"),
        (tmp_path / "c.csv", 1, None, r"give --calibration-column 1 time"),
        (tmp_path / "j.jsonl", 2, ("q", "s"), r"j\.jsonl:1 has no field 's'"),
    ]
    (tmp_path / "empty.txt").write_text("\n  \n")
    bad.append((tmp_path / "empty.txt", 1, None, r"empty\.txt holds no text"))
    for path, fields, columns, pattern in bad:
        if pattern is None:
            load_calibration_texts(path, fields, columns)
            continue
        with pytest.raises(AxformerError, match=pattern):
            load_calibration_texts(path, fields, columns)


@pytest.mark.parametrize(
    ("content", "extra", "pattern"),
    [
        (None, [], r"--calibration-texts .*nope\.txt does not exist"),
        ("\n\n", [], r"holds no text"),
        ("id,x\n1,a\n", ["--calibration-column", "text"], r"has no column 'text'; its columns are id, x"),
    ],
)
def test_calibration_texts_bad_input_is_one_line_exit_2(
    monkeypatch, capsys, tuned_tiny, tmp_path, content, extra, pattern
):
    from tests.test_cli import assert_clean_failure, run_cli

    model, _, (train, dev) = tuned_tiny
    path = tmp_path / ("nope.txt" if content is None else "cal.csv" if extra else "cal.txt")
    if content is not None:
        path.write_text(content)
    out = tmp_path / "out"
    code, _, err = run_cli(
        monkeypatch, capsys, "optimize", model, "-o", out, "--goal", "speed", "--until-stage", "search",
        "--scorer", "none", "--calibration-texts", path, *extra, "--device", "cpu",
    )  # fmt: skip
    assert_clean_failure(code, err, out, pattern)


def test_fidelity_decisions_guard_agreement_with_the_original_on_unlabelled_texts(tuned_tiny, tmp_path):
    from axformer.search.config import FidelityDecision, Tolerance
    from axformer.search.optimize import OptimizeConfig, optimize

    model, data, _ = tuned_tiny
    cfg = OptimizeConfig(goal="speed", groups=4, device="cpu", progress=False, latency_examples=5,
                         tolerance=Tolerance(max_drop=3.0), fidelity=FidelityDecision(texts=200))  # fmt: skip
    report = optimize(model, data, None, tmp_path / "run", cfg)
    assert report["search"]["thresholds"]["agreement"] == pytest.approx(97.0)  # 100 - the tolerance
    rows = [json.loads(line) for line in (tmp_path / "run" / "search_log.jsonl").read_text().splitlines()]
    complete = [r for r in rows if r["complete"]]
    assert complete and all("agreement" in r["metrics"] for r in complete)
    assert all(r["metrics"]["agreement"] >= 97.0 for r in rows if r["accepted"])


def test_the_fidelity_pool_stops_only_when_agreement_can_no_longer_pass():
    from axformer.evaluation.engine import PartialResult
    from axformer.evaluation.fidelity import _TooManyChanged

    answers = np.zeros(10, dtype=np.int64)
    stop = _TooManyChanged(80.0, answers)  # at most 2 of 10 answers may change
    logits = np.zeros((10, 2), np.float32)
    logits[:3, 1] = 1.0  # the first three changed
    done = np.zeros(10, dtype=bool)
    done[:2] = True  # two changed so far: 8 of 10 still possible
    assert not stop.hopeless(PartialResult(done, np.zeros(10), logits))
    done[:3] = True  # three changed: at most 7 of 10
    assert stop.hopeless(PartialResult(done, np.zeros(10), logits))


def test_a_trained_model_is_certified_like_the_searched_state(tuned_tiny):
    """After recovery the certificate is taken on a trained model (certify_model); on the original's own weights
    it must give what the search's certificate gives for an empty state: no difference, passed."""
    import copy

    from axformer.evaluation.context import load_context
    from axformer.search.certificate import certify_model, certify_search
    from axformer.search.config import OptimizeConfig

    model, data, _ = tuned_tiny
    cfg = OptimizeConfig(goal="speed", device="cpu")
    ctx = load_context(model, data, None, 2000, 0, "cpu", confirm_fraction=0.4)
    trained = certify_model(ctx, cfg, copy.deepcopy(ctx.model))
    searched, state = certify_search(ctx, cfg, [])
    assert trained.passed and trained.main.difference == 0.0 and state == {"removed": [], "attention": {}}
    assert trained.main.original == pytest.approx(searched.certificate.main.original)
    assert trained.examples == searched.certificate.examples == len(ctx.confirmation)


@pytest.mark.parametrize("outcome", ["recovered", "retried", "searched", "not_kept", "retry_not_kept"])
def test_with_recovery_the_recovered_model_is_certified_before_any_backtracking(monkeypatch, tmp_path, outcome):
    """Pruning that recovery wins back is not undone before recovery had its chance: the recovered model is
    certified first; when it fails, the state less its latest step is recovered once more; when that fails too,
    the searched model backtracked on its own ships. A recovery that scored no higher than the searched model on
    the deciding examples was not kept: the searched model is certified and backtracked as without recovery."""
    from types import SimpleNamespace

    import axformer.search.optimize as optimize_module
    from axformer.search.certificate import Certification, Step
    from axformer.search.config import OptimizeConfig, Recovery

    calls = []
    verdicts = {"recovered": [True], "retried": [False, True], "searched": [False, False], "not_kept": [],
                "retry_not_kept": [False]}[outcome]  # fmt: skip
    kept = {"not_kept": [False], "retry_not_kept": [True, False]}.get(outcome, [True, True])

    def fake_certify_search(ctx, config, steps, backtrack_failing=True):
        calls.append(("certify_search", backtrack_failing))
        kept = steps if not backtrack_failing else steps[:1]  # the scripted backtrack keeps the first step only
        cert = SimpleNamespace(passed=True)
        report = Certification(certificate=cert, searched=cert, undone=[s.name for s in steps[len(kept) :]],
                               states_tried=1 + len(steps) - len(kept), decision_examples=10)  # fmt: skip
        return report, {"removed": [n for s in kept for n in s.removed], "attention": {}}

    def fake_recover(model, ctx, work, config, state, calibration=None):
        calls.append(("recover", tuple(state["removed"])))
        if kept.pop(0):
            return ("recovered", tuple(state["removed"])), {"mode": "distill", "kept": True}
        return ("searched", tuple(state["removed"])), {"mode": "distill", "kept": False}

    monkeypatch.setattr(optimize_module, "certify_search", fake_certify_search)
    monkeypatch.setattr(
        optimize_module,
        "certify_model",
        lambda *a: calls.append("certify_model") or SimpleNamespace(passed=verdicts.pop(0)),
    )
    monkeypatch.setattr(optimize_module, "recover", fake_recover)
    monkeypatch.setattr(optimize_module, "save_candidate", lambda m, c, state, *a: ("saved", tuple(state["removed"])))
    steps = [Step(removed=["L1"]), Step(removed=["L2"]), Step(removed=["L3"])]
    config = OptimizeConfig(goal="speed", recovery=Recovery(mode="distill"))
    state = {"removed": ["L1", "L2", "L3"], "attention": {}}
    certification, shipped_state, shipped, _ = optimize_module._certify_and_recover(
        "m", SimpleNamespace(confirmation=[0]), tmp_path, config, SimpleNamespace(steps=steps), dict(state)
    )
    if outcome == "not_kept":  # never certified as a recovered model; the searched one backtracked ships
        assert calls == [("recover", ("L1", "L2", "L3")), ("certify_search", True)]
        assert shipped == ("saved", ("L1",)) and certification.recovery is None
        assert not certification.shipped_recovered and certification.shipped_undone == ["L2", "L3"]
        return
    assert calls[:2] == [("recover", ("L1", "L2", "L3")), "certify_model"]  # the whole searched state first
    if outcome == "retry_not_kept":  # the retry's unrecovered state is not certified as a recovered one
        assert calls[2:] == [("certify_search", True), ("recover", ("L1", "L2"))]
        assert shipped == ("saved", ("L1",)) and certification.retry is None
        assert not certification.shipped_recovered and certification.shipped_undone == ["L2", "L3"]
    elif outcome == "recovered":
        assert shipped == ("recovered", ("L1", "L2", "L3")) and shipped_state == state
        assert calls[2] == ("certify_search", False) and certification.shipped_undone == []
    elif outcome == "retried":  # the latest step undone, recovered again, passed
        assert calls[2:] == [("certify_search", True), ("recover", ("L1", "L2")), "certify_model"]
        assert shipped == ("recovered", ("L1", "L2")) and shipped_state["removed"] == ["L1", "L2"]
        assert certification.shipped_recovered and certification.shipped_undone == ["L3"]
    else:  # both recoveries failed: the searched model backtracked on its own (the first step only) ships
        assert shipped == ("saved", ("L1",)) and shipped_state["removed"] == ["L1"]
        assert not certification.shipped_recovered and certification.shipped_undone == ["L2", "L3"]


def _decision_file(path, rows):
    path.write_text("text,label\n" + "".join(f"{t},{l}\n" for t, l in rows))
    return path


def test_decisions_and_the_certificate_use_the_users_decision_data(tuned_tiny, tmp_path, monkeypatch):
    """--decision-data replaces the held-out split: every deciding and confirming example comes from the file (the
    confirming ones never reach a decision), and the report names it."""
    from axformer.evaluation.context import load_context, vocabulary_texts
    from axformer.search.config import Certification, OptimizeConfig, Tolerance
    from axformer.search.optimize import optimize

    model, data, _ = tuned_tiny
    rows = [
        (f"a long review of the film that was quite {w} in the end", l) for w, l in (("good", "pos"), ("bad", "neg"))
    ] * 30
    rows = [(f"{t} number {i}", l) for i, (t, l) in enumerate(rows)]
    path = _decision_file(tmp_path / "decide.csv", rows)
    ctx = load_context(model, data, None, None, 0, "cpu", confirm_fraction=0.5, decision_data=path)
    texts = {(t,) for t, _ in rows}
    assert set(ctx.heldout.texts) | set(ctx.confirmation.texts) == texts
    assert not set(ctx.heldout.texts) & set(ctx.confirmation.texts)
    assert ctx.describe_split()["decision_data"] == str(path)
    # a pruned vocabulary is built from the training part only: every decision example is unseen text to it
    assert not (set(ctx.heldout.texts) | set(ctx.confirmation.texts)) & set(vocabulary_texts(ctx))
    import axformer.search.recovery as recovery_module
    from axformer.search.config import Recovery

    selections = []
    real_distill = recovery_module.distill

    def spy_distill(*args, config, **kwargs):
        selections.append((config.selection_data, config.selection_positions))
        return real_distill(*args, config=config, **kwargs)

    monkeypatch.setattr(recovery_module, "distill", spy_distill)
    report = optimize(
        model, data, None, tmp_path / "out",
        OptimizeConfig(goal="size", groups=4, device="cpu", progress=False, latency_examples=5,
                       tolerance=Tolerance(max_drop=5.0), certificate=Certification(fraction=0.5),
                       decision_data=str(path), recovery=Recovery(mode="distill", epochs=1.0)),
    )  # fmt: skip
    assert report["split"]["decision_data"] == str(path)
    # the recovery's checkpoint is chosen on the file's deciding part (positions into the file, not the split)
    assert selections and all(
        data_path == str(path) and sorted(p) == sorted(int(i) for i in ctx.decision_pool) for data_path, p in selections
    )
    assert report["certification"]["certificate"]["examples"] == len(ctx.confirmation)
    assert report["certification"]["decision_examples"] == len(ctx.heldout)


def test_decision_data_that_shares_dev_examples_or_lacks_columns_is_refused(tuned_tiny, tmp_path, monkeypatch, capsys):
    from tests.test_cli import assert_clean_failure, run_cli

    model, data, (train, dev) = tuned_tiny
    dev_rows = [line.split(",") for line in dev.read_text().splitlines()[1:4]]
    leaky = _decision_file(tmp_path / "leaky.csv", [(t, l) for t, l in dev_rows] + [("a fresh good text", "pos")])
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("sentence,label\nsome good text,pos\n")
    missing = tmp_path / "absent.csv"
    for path, pattern in (
        (leaky, r"--decision-data .*leaky.csv shares 3 of its 4 examples with the dev set"),
        (wrong, r"wrong.csv.*'text'"),
        (missing, r"--decision-data .*absent.csv does not exist"),
    ):
        out = tmp_path / f"out-{path.stem}"
        code, _, err = run_cli(monkeypatch, capsys, "optimize", model, "--goal", "size", "--decision-data", path,
                               "--device", "cpu", "-o", out)  # fmt: skip
        assert_clean_failure(code, err, out, pattern)


def test_the_fidelity_pool_follows_the_accepted_state(tuned_tiny):
    """After the search accepts a change, a candidate's agreement is the accumulated model's: the pool engine
    must take the same base as the decision engine (it once kept the original, so each change was judged
    alone and their sum was never guarded)."""
    from axformer.evaluation.context import load_context
    from axformer.evaluation.engine import EvaluationEngine
    from axformer.evaluation.fidelity import AGREEMENT, FidelityEngine, fidelity_pool

    model, data, _ = tuned_tiny
    ctx = load_context(model, data, device="cpu")
    pool = fidelity_pool(ctx, list(ctx.data.train.texts[:200]))

    def engine():
        return FidelityEngine(EvaluationEngine(ctx.model, ctx.encoded, ctx.data.spec), ctx, pool)

    stepwise = engine()
    base = stepwise.set_base(["L0.ffn"])
    after = stepwise.evaluate(["L1.ffn"])
    stepwise.close()
    at_once = engine()
    together = at_once.evaluate(["L0.ffn", "L1.ffn"])
    base_alone = at_once.evaluate(["L0.ffn"])
    at_once.close()
    assert after.metrics[AGREEMENT] == pytest.approx(together.metrics[AGREEMENT])
    assert base.metrics[AGREEMENT] == pytest.approx(base_alone.metrics[AGREEMENT])
    assert after.metrics["accuracy"] == pytest.approx(together.metrics["accuracy"])
