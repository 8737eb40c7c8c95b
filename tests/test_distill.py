"""Distillation: losses against direct computations, derived students, and training that moves the student to the
teacher.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from axformer.distill.losses import attention_mse, hidden_mse, soft_cross_entropy
from axformer.distill.students import layer_map, parse_layers, prune_by_importance
from axformer.errors import AxformerError
from axformer.models.loading import load_model
from axformer.models.record import ModelRecord
from axformer.search.config import Recovery
from axformer.surgery.adapters import get_adapter
from axformer.surgery.prune import current_structure
from axformer.surgery.structure import ModelStructure
from axformer.tasks.splits import apply_split
from axformer.utils.io import read_json
from tests.conftest import make_tiny_model_dir, tiny_speed_search


def test_soft_cross_entropy_is_tempered_cross_entropy_times_t_squared():
    s = torch.tensor([[1.0, -0.5, 2.0], [0.3, 0.2, -1.0]])
    t = torch.tensor([[0.5, 0.0, 1.0], [2.0, -1.0, 0.0]])
    T = 2.0
    expected = 0.0
    for row_s, row_t in zip(s.tolist(), t.tolist()):
        zs = sum(math.exp(v / T) for v in row_s)
        zt = sum(math.exp(v / T) for v in row_t)
        expected += -sum(math.exp(b / T) / zt * math.log(math.exp(a / T) / zs) for a, b in zip(row_s, row_t))
    assert soft_cross_entropy(s, t, T).item() == pytest.approx(expected / 2 * T * T, rel=1e-6)
    # a regression head matches the teacher's prediction by squared error
    assert soft_cross_entropy(torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [0.0]])).item() == pytest.approx(
        (1 + 9) / 2
    )


def test_hidden_mse_ignores_padding():
    s = torch.zeros(2, 3, 4)
    t = torch.ones(2, 3, 4)
    t[1, 2] = 100.0  # a padded position: must not count
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert hidden_mse(s, t, mask).item() == pytest.approx(1.0)
    s2 = torch.randn(2, 3, 4)
    direct = ((s2 - t)[mask.bool()] ** 2).mean()
    assert hidden_mse(s2, t, mask).item() == pytest.approx(direct.item(), rel=1e-6)


def test_attention_mse_per_head_and_head_averaged():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 0]])
    a, b = torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 3)
    direct = ((a - b)[:, :, :2, :2] ** 2).mean()
    assert attention_mse(a, b, mask).item() == pytest.approx(direct.item(), rel=1e-6)
    c = torch.rand(1, 4, 3, 3)  # teacher with more heads: compare the head-averaged maps
    direct = ((a.mean(1) - c.mean(1))[:, :2, :2] ** 2).mean()
    assert attention_mse(a, c, mask).item() == pytest.approx(direct.item(), rel=1e-6)


def test_layer_selection_spreads_evenly_and_checks_input():
    assert parse_layers("3", [0, 1, 2, 3, 4, 5]) == [0, 2, 5]
    assert parse_layers("0,2,4", [0, 1, 2, 3, 4, 5]) == [0, 2, 4]
    assert parse_layers("1", [0, 1, 2]) == [0]
    assert parse_layers("5,", [0, 1, 2, 3, 4, 5]) == [5]  # one layer by index: a bare number is a count
    with pytest.raises(AxformerError, match="not in the teacher"):
        parse_layers("0,7", [0, 1, 2])
    with pytest.raises(AxformerError, match="expected a layer count"):
        parse_layers("three", [0, 1, 2])


def test_derived_student_computes_the_teachers_layers(tmp_path):
    """Before training, each kept layer of the student does exactly what that layer does in the teacher."""
    from axformer.distill.students import derive_student

    path = make_tiny_model_dir(tmp_path / "t", "bert")
    teacher = load_model(path).eval()
    student = derive_student(load_model(path).eval(), [0, 2])
    assert layer_map(student, teacher) == [0, 1, 3]
    a = get_adapter(teacher)
    t_layers, s_layers = a.layers(teacher), a.layers(student)
    assert len(s_layers) == 2
    captured = {}

    def keep(i):
        def hook(module, args, kwargs, output):
            captured[i] = (
                args[0] if args else kwargs["hidden_states"],
                output[0] if isinstance(output, tuple) else output,
            )

        return hook

    handles = [t_layers[i].register_forward_hook(keep(i), with_kwargs=True) for i in range(3)]
    ids = torch.tensor([[2, 10, 11, 12, 3, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    with torch.no_grad():
        teacher(**batch)
    for h in handles:
        h.remove()

    def feed(teacher_layer):
        def pre(module, args, kwargs):
            if args:
                return (captured[teacher_layer][0], *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": captured[teacher_layer][0]}

        return pre

    outputs = {}
    for j, orig in enumerate([0, 2]):
        pre = s_layers[j].register_forward_pre_hook(feed(orig), with_kwargs=True)
        post = s_layers[j].register_forward_hook(
            lambda m, a, k, o, j=j: outputs.__setitem__(j, o[0] if isinstance(o, tuple) else o), with_kwargs=True
        )
        with torch.no_grad():
            student(**batch)
        pre.remove()
        post.remove()
        torch.testing.assert_close(outputs[j], captured[orig][1], atol=1e-6, rtol=1e-6)


def test_importance_budgets_keep_the_best_units():
    st = ModelStructure.full(2, 4, 8, 6, 32)
    heads = np.array([[0.1, 0.9, 0.1, 0.1], [5.0, 4.0, 0.1, 3.0]])
    neurons = np.array([[1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]], dtype=float)
    uniform = prune_by_importance(st, heads, neurons, 2, 3, "uniform")
    assert [l.heads for l in uniform.layers] == [[0, 1], [0, 1]]
    assert [l.neurons for l in uniform.layers] == [[3, 4, 5], [0, 1, 2]]
    # global: layer 1's normalised head scores dominate, same total (4 heads)
    glob = prune_by_importance(st, heads, neurons, 2, None, "global")
    assert sum(len(l.heads) for l in glob.layers) == 4
    assert glob.layers[1].heads == [0, 1, 3] and glob.layers[0].heads == [1]
    with pytest.raises(AxformerError, match="--heads 9"):
        prune_by_importance(st, heads, neurons, 9, None)


def _teacher_gap(student_dir, teacher_dir, data) -> float:
    """Soft cross-entropy of the student to the teacher on the dev texts (lower: closer)."""
    from axformer.data.batching import encode
    from axformer.inference import run_model
    from axformer.models.loading import load_tokenizer

    enc = encode(load_tokenizer(teacher_dir), data.dev["dev"], 32)
    t = run_model(load_model(teacher_dir), enc, False).logits
    s = run_model(load_model(student_dir), enc, False).logits
    return soft_cross_entropy(torch.from_numpy(s), torch.from_numpy(t)).item()


def test_distillation_moves_a_derived_student_to_its_teacher(tuned_tiny, tmp_path):
    from axformer.distill import DistillConfig, distill
    from axformer.distill.students import derive_student
    from axformer.models.loading import load_tokenizer, save_model
    from axformer.models.record import ModelRecord

    teacher, data, _ = tuned_tiny
    start = tmp_path / "start"
    save_model(derive_student(load_model(teacher), [0]), load_tokenizer(teacher), start)
    ModelRecord.load(teacher).save(start)
    before = _teacher_gap(start, teacher, data)
    cfg = DistillConfig(
        epochs=3, learning_rate=3e-3, batch_size=16, max_seq_length=32, device="cpu", eval_max_examples=None
    )
    res = distill(teacher, tmp_path / "student", student_layers="1", data=data, config=cfg)
    after = _teacher_gap(res.output, teacher, data)
    assert after < before
    reloaded = load_model(res.output)
    assert len(get_adapter(reloaded).layers(reloaded)) == 1
    stage = ModelRecord.load(res.output).history[-1]
    assert stage["stage"] == "distill" and stage["student_layers"] == [0] and stage["objective"]["layer_map"] == [0, 1]
    assert res.evaluation.splits["heldout"].main > 60
    assert not (tmp_path / "student" / "teacher_logits.npy").exists()


def test_teacher_outputs_are_kept_between_distillations_of_the_same_teacher_and_texts(
    tuned_tiny, tmp_path, monkeypatch
):
    """The search's recovery retry distils from the same original on the same texts: the second run reads the
    teacher's kept outputs (the teacher is never run) and trains the very same student; a teacher with other
    weights, or other inputs, is a different key."""
    import axformer.distill.objective as objective
    from axformer.data.batching import encode
    from axformer.distill import DistillConfig, distill
    from axformer.models.loading import load_tokenizer

    teacher, data, _ = tuned_tiny
    kept = tmp_path / "kept"
    cfg = {"epochs": 1, "learning_rate": 3e-3, "batch_size": 16, "max_seq_length": 32, "device": "cpu", "seed": 0}
    first = distill(teacher, tmp_path / "a", student_layers="1", data=data,
                    config=DistillConfig(**cfg, teacher_cache_dir=str(kept)))  # fmt: skip
    assert len(list(kept.glob("teacher-*.npy"))) == 1
    assert not (tmp_path / "a" / "teacher_logits.npy").exists()  # the run's own copy is still temporary

    def never(*a, **k):
        raise AssertionError("the teacher ran although its outputs were kept")

    monkeypatch.setattr(objective, "run_model", never)
    second = distill(teacher, tmp_path / "b", student_layers="1", data=data,
                     config=DistillConfig(**cfg, teacher_cache_dir=str(kept)))  # fmt: skip
    a, b = load_model(first.output).state_dict(), load_model(second.output).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    net = load_model(teacher)
    enc = encode(load_tokenizer(teacher), data.dev["dev"], 32)
    key = objective.teacher_key(net, enc, False)
    assert key == objective.teacher_key(load_model(teacher), enc, False)
    assert key != objective.teacher_key(net, enc, True)
    shorter = type(enc)(enc.input_ids[:-1], enc.token_type_ids, enc.labels[:-1], enc.pad_token_id)
    assert key != objective.teacher_key(net, shorter, False)
    with torch.no_grad():
        next(net.parameters()).add_(1e-3)
    assert key != objective.teacher_key(net, enc, False)


def test_hidden_and_attention_losses_train_a_narrower_student(tuned_tiny, tmp_path):
    """A student of another width (a learned projection) and fewer heads, with every loss term on."""
    from transformers import AutoModelForSequenceClassification, BertConfig

    from axformer.distill import DistillConfig, distill
    from tests.conftest import tiny_tokenizer

    teacher, data, _ = tuned_tiny
    torch.manual_seed(1)
    cfg = BertConfig(
        vocab_size=200,
        hidden_size=16,
        num_attention_heads=2,
        num_hidden_layers=2,
        intermediate_size=24,
        max_position_embeddings=64,
        num_labels=2,
        id2label={0: "neg", 1: "pos"},
        label2id={"neg": 0, "pos": 1},
    )
    sdir = tmp_path / "narrow"
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(sdir)
    tiny_tokenizer(sdir).save_pretrained(sdir)
    dcfg = DistillConfig(
        epochs=2,
        learning_rate=3e-3,
        batch_size=16,
        max_seq_length=32,
        device="cpu",
        eval_max_examples=None,
        hard_weight=0.5,
        hidden_weight=1.0,
        attention_weight=1.0,
    )
    res = distill(teacher, tmp_path / "out", student=sdir, data=data, config=dcfg)
    terms = [e["train_terms"] for e in res.log]
    assert set(terms[0]) == {"soft", "hard", "hidden", "attention"}
    assert terms[-1]["hidden"] < terms[0]["hidden"] and terms[-1]["soft"] < terms[0]["soft"]
    from axformer.models.record import ModelRecord

    assert ModelRecord.load(res.output).history[-1]["objective"]["projection"] is True
    assert current_structure(load_model(res.output)).num_layers == 2


def test_gold_label_term_reads_only_the_labelled_rows():
    """Rows after ``labelled`` (windows, perturbed copies, calibration texts) carry placeholder labels: the hard
    term is the task loss of the labelled rows of the batch over the batch size, nothing for a batch without."""
    from axformer.distill.objective import DistillConfig, DistillObjective
    from axformer.inference import per_example_loss

    torch.manual_seed(0)
    from transformers import AutoModelForSequenceClassification

    from tests.conftest import tiny_config

    teacher, student = (AutoModelForSequenceClassification.from_config(tiny_config("bert")) for _ in range(2))
    config = DistillConfig(hard_weight=1.0)
    objective = DistillObjective(teacher, student, config, regression=False, layer_map=[0, 1, 2], labelled=2)
    ids = torch.randint(5, 90, (4, 7))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 0, 0])}
    with torch.no_grad():
        logits = student(input_ids=ids, attention_mask=batch["attention_mask"]).logits
        _, terms = objective.loss(student, dict(batch), np.array([3, 0, 5, 1]))
        expected = (per_example_loss(logits[[1, 3]], torch.tensor([1, 0]), False).sum() / 4).item()
        assert terms["hard"] == pytest.approx(expected, rel=1e-5)
        _, terms = objective.loss(student, dict(batch), np.array([2, 3, 4, 5]))
        assert terms["hard"] == 0.0


def test_student_with_another_vocabulary_is_refused(tuned_tiny, tmp_path):
    from transformers import BertTokenizerFast

    from axformer.distill import distill

    teacher, data, _ = tuned_tiny
    sdir = make_tiny_model_dir(tmp_path / "other", "bert", labels=["neg", "pos"])
    vocab = sdir / "vocab2.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(sdir)
    with pytest.raises(AxformerError, match="different vocabulary"):
        distill(teacher, tmp_path / "out", student=sdir, data=data)
    assert not (tmp_path / "out").exists()


def test_fastformers_recipe_runs_every_stage_and_resumes(tuned_tiny, tmp_path):
    from axformer.distill import DistillConfig
    from axformer.distill.recipe import RecipeConfig, fastformers_recipe
    from axformer.utils.io import read_json

    teacher, data, _ = tuned_tiny
    cfg = RecipeConfig(
        student_layers="2",
        heads=2,
        ffn=24,
        export="fp32",
        distill=DistillConfig(
            epochs=1, learning_rate=3e-3, batch_size=16, max_seq_length=32, device="cpu", eval_max_examples=None
        ),
    )
    out = tmp_path / "ff"
    report = fastformers_recipe(teacher, out, cfg, data)
    assert [s["stage"] for s in report["stages"]] == [
        "teacher",
        "1-distilled",
        "2-pruned",
        "3-distilled-again",
        "4-export-fp32",
    ]
    final = load_model(out)  # the final PyTorch model reloads from the top of the output directory
    st = current_structure(final)
    assert [(len(l.heads), len(l.neurons)) for l in st.layers if l is not None] == [(2, 24), (2, 24)]
    assert report["stages"][1]["parameters"] > report["stages"][3]["parameters"] == report["stages"][2]["parameters"]
    assert (out / "stages" / "4-export-fp32" / "model.onnx").exists() and "| 3-distilled-again |" in (
        out / "recipe.md"
    ).read_text()
    # the pruned stage kept the heads with the highest (normalised) gradient importance
    imp = np.array(read_json(out / "stages" / "2-pruned" / "importance.json")["heads"], dtype=float)
    for layer in st.present_layers:
        kept = st.layers[layer].heads
        assert min(imp[layer, kept]) >= max(np.delete(imp[layer], kept))
    # an interrupted recipe redoes only the missing stages
    times = read_json(out / "stages" / "times.json")
    import shutil

    shutil.rmtree(out / "stages" / "3-distilled-again")
    shutil.rmtree(out / "stages" / "4-export-fp32")
    (out / "recipe.json").unlink()
    fastformers_recipe(teacher, out, cfg, data)
    again = read_json(out / "stages" / "times.json")
    assert again["1-distilled"] == times["1-distilled"] and again["2-pruned"] == times["2-pruned"]
    with pytest.raises(AxformerError, match="finished recipe"):
        fastformers_recipe(teacher, out, cfg, data)


@pytest.mark.parametrize("holds", [True, False])
def test_recipe_tries_a_smaller_student_first_and_keeps_it_only_when_it_holds(holds, tuned_tiny, tmp_path):
    """A smaller student tried first (``trials``) is distilled, judged on the deciding examples (never the
    confirmation ones) and by the caller's certificate; kept, it is the recipe's model and the recipe's own sizes
    are never trained; refused, they are, as if nothing had been tried. A resumed recipe keeps the verdict."""
    from axformer.distill import DistillConfig
    from axformer.distill.ladder import StudentRung
    from axformer.distill.recipe import RecipeConfig, fastformers_recipe
    from axformer.tasks.splits import partition

    teacher, data, _ = tuned_tiny
    checked: list[Path] = []

    def certify(student: Path, work: Path) -> dict:
        checked.append(student)
        return {"passed": holds, "drop": 0.0 if holds else 7.5, "checked_on": "confirmation"}

    cfg = RecipeConfig(
        student_layers="2", heads=2, export=None, confirm_fraction=0.5, trial_max_drop=100.0,
        trials=[StudentRung(layers="1", learning_rate=1e-3, hard_weight=1.0)],
        distill=DistillConfig(epochs=1, learning_rate=3e-3, batch_size=16, max_seq_length=32, device="cpu"),
    )  # fmt: skip
    out = tmp_path / "ff"
    report = fastformers_recipe(teacher, out, cfg, data, certify=certify)
    trial = out / "stages" / "trial-layers-1"
    assert checked == [trial / "1-distilled"]  # the student was checked once, as trained
    (verdict,) = report["trials"]
    heldout = apply_split(data, ModelRecord.load(teacher).split)[1]
    assert verdict["tried"] and verdict["deciding"]["examples"] == len(partition(heldout, 0.5)[0])
    assert verdict["accepted"] is holds and verdict["certificate"]["drop"] == (0.0 if holds else 7.5)
    # the rung trained with its own settings
    history = ModelRecord.load(trial / "1-distilled").history[-1]
    assert history["config"]["learning_rate"] == 1e-3 and history["config"]["hard_weight"] == 1.0
    layers = current_structure(load_model(out)).present_layers
    names = [s["stage"] for s in report["stages"]]
    if holds:
        assert report["student"] == "trial-layers-1" and names == ["teacher", "trial-layers-1/1-distilled"]
        assert len(layers) == 1 and not (out / "stages" / "1-distilled").exists()
    else:
        assert report["student"] is None and names == ["teacher", "1-distilled", "2-pruned", "3-distilled-again"]
        assert len(layers) == 2
        own = ModelRecord.load(out / "stages" / "1-distilled").history[-1]["config"]
        assert own["learning_rate"] == 3e-3 and own["hard_weight"] == 0.0  # the recipe's own settings
    md = (out / "recipe.md").read_text()
    assert "Smaller students tried first" in md and ("| kept |" if holds else "| refused |") in md
    (out / "recipe.json").unlink()  # resumed: the verdict stands, the certificate is not read again
    again = fastformers_recipe(teacher, out, cfg, data, certify=certify)
    assert len(checked) == 1 and again["trials"][0]["accepted"] is holds


def test_the_plan_tries_a_smaller_student_only_when_it_and_the_recipes_own_fit():
    """plan_ladder: a rung is kept when it trains its full epochs and the recipe's own student still fits after
    it (the teacher's outputs paid once, by the first distillation that runs); otherwise it is dropped, with why."""
    import axformer.distill.budget as budget
    from axformer.distill import DistillConfig
    from axformer.distill.budget import RecipePlan, StagePlan, plan_ladder
    from axformer.distill.ladder import StudentRung
    from axformer.distill.recipe import RecipeConfig

    shared = []

    def fake_plan(model, data, config, budget_seconds, device, downstream=None, judged=False, teacher=None):
        shared.append(id(teacher))
        if judged:  # the rung: 100 s of teacher outputs, 200 s of training per epoch, a 50 s judgement
            stages = [StagePlan("1-distilled", 100 + 200 * 3, 3, "", 100 + 200 * 3), StagePlan("judge", 50)]
            return RecipePlan(budget_seconds, 0.1, 0.1, 10, 3.0, stages, 100.0)
        epochs = min(3.0, (budget_seconds - 100 - 60) / 300)
        stages = [StagePlan("1-distilled", 100 + 300 * epochs, epochs, "", 100 + 300 * epochs),
                  StagePlan("summaries", 60)]  # fmt: skip
        return RecipePlan(budget_seconds, 0.1, 0.1, 10, epochs, stages, 100.0)

    cfg = RecipeConfig(student_layers="2", trials=[StudentRung(layers="1")], distill=DistillConfig(epochs=3))
    real = budget.plan_recipe
    budget.plan_recipe = fake_plan
    try:
        roomy = plan_ladder("m", None, cfg, 3000.0, "cpu")
        tight = plan_ladder("m", None, cfg, 1500.0, "cpu")
        squeezed = plan_ladder("m", None, cfg, 800.0, "cpu")
    finally:
        budget.plan_recipe = real
    assert [s.stage for s in roomy.stages] == [
        "trial-layers-1/1-distilled", "trial-layers-1/judge", "1-distilled", "summaries"
    ] and roomy.tries("trial-layers-1") and not roomy.skipped  # fmt: skip
    assert roomy.stages[2].seconds == 900 and roomy.stages[2].training_seconds == 900  # outputs paid by the rung
    assert roomy.seconds == 700 + 50 + 900 + 60
    # 750 s for the rung and 960 for the recipe's own after it: over 1500
    assert not tight.tries("trial-layers-1") and "over the 25.0 min budget" in tight.skipped["trial-layers-1"]
    assert [s.stage for s in tight.stages] == ["1-distilled", "summaries"] and tight.stages[0].seconds == 1000
    assert "not tried: trial-layers-1" in tight.table()
    assert "gets 2.13 of 3 epochs" in squeezed.skipped["trial-layers-1"]
    assert shared[0] == shared[1] != id(None)  # one plan's calls share the teacher's timings


def test_student_rungs_parse_and_refuse_bad_specs(tuned_tiny, tmp_path, monkeypatch, capsys):
    from axformer.distill.ladder import StudentRung, parse_rung
    from tests.test_cli import assert_clean_failure, run_cli

    assert parse_rung("3") == StudentRung(layers="3")
    assert parse_rung("0,2,5:8:768") == StudentRung(layers="0,2,5", heads=8, ffn=768)
    assert parse_rung("-:6") == StudentRung(heads=6)
    assert parse_rung("0,2,5:8").label == "trial-layers-0_2_5-heads-8"
    for bad, why in (("", "expected LAYERS"), ("3:x", "heads 'x' is not a number"), ("1:2:3:4", "expected"),
                     ("3:0", "keeps 0 heads")):  # fmt: skip
        with pytest.raises(AxformerError, match=why):
            parse_rung(bad)
    teacher, _, _ = tuned_tiny
    for args, why in (
        (["--try-student", "3:x"], "--try-student '3:x': heads"),
        (["--strategy", "search", "--try-student", "1"], "use it with --strategy fastformers"),
    ):
        code, _, err = run_cli(monkeypatch, capsys, "optimize", teacher, "-o", tmp_path / "o", *args)
        assert_clean_failure(code, err, tmp_path / "o", why)


def test_recipe_decides_on_the_deciding_part_only(tuned_tiny, tmp_path, monkeypatch):
    """With a confirmation fraction, both distillations choose their checkpoint and the pruning its heads on the
    deciding part of the held-out split: the examples the export certifies on are seen by no decision."""
    import axformer.distill.recipe as recipe_module
    from axformer.distill import DistillConfig
    from axformer.distill.recipe import RecipeConfig, fastformers_recipe
    from axformer.models.record import ModelRecord
    from axformer.tasks.splits import apply_split, partition

    teacher, data, _ = tuned_tiny
    heldout = apply_split(data, ModelRecord.load(teacher).split)[1]
    deciding, confirmation = partition(heldout, 0.4)
    selections, importance_fractions = [], []
    real_distill, real_context = recipe_module.distill, recipe_module.load_context

    def spy_distill(*args, config, **kwargs):
        selections.append(config.selection_positions)
        return real_distill(*args, config=config, **kwargs)

    def spy_context(*args, **kwargs):
        importance_fractions.append((kwargs.get("confirm_fraction"), kwargs.get("decision_data")))
        return real_context(*args, **kwargs)

    monkeypatch.setattr(recipe_module, "distill", spy_distill)
    monkeypatch.setattr(recipe_module, "load_context", spy_context)
    cfg = RecipeConfig(
        student_layers="1", heads=2, export=None, confirm_fraction=0.4,
        distill=DistillConfig(epochs=1, learning_rate=3e-3, batch_size=16, max_seq_length=32, device="cpu"),
    )  # fmt: skip
    fastformers_recipe(teacher, tmp_path / "ff", cfg, data)
    assert len(selections) == 2 and all(sorted(s) == sorted(int(i) for i in deciding) for s in selections)
    assert not set(selections[0]) & {int(i) for i in confirmation}
    assert importance_fractions == [(0.4, None)]  # load_context then draws the importance examples from the rest
    with pytest.raises(AxformerError, match="--confirm-fraction 1"):
        RecipeConfig(heads=2, confirm_fraction=1.0).validate()
    # --decision-data: the file's deciding part selects both checkpoints and the heads, its other part is the
    # export's check, and the held-out split decides nothing
    from axformer.evaluation.context import read_decision_data

    path = tmp_path / "decide.csv"
    path.write_text(
        "text,label\n" + "".join(f"a whole review number {i} {w},{w}\n" for i in range(40) for w in ("pos", "neg"))
    )
    file_deciding, file_confirmation = partition(read_decision_data(path, data), 0.4)
    selections.clear(), importance_fractions.clear()
    fastformers_recipe(teacher, tmp_path / "ff2", replace(cfg, decision_data=str(path), export="fp32"), data)
    assert len(selections) == 2 and all(sorted(s) == sorted(int(i) for i in file_deciding) for s in selections)
    assert importance_fractions == [(0.4, str(path))]
    export = read_json(tmp_path / "ff2" / "stages" / "4-export-fp32" / "export.json")
    check = export["validation"]
    assert check["checked_on"] == "confirmation" and check["pytorch"]["num_examples"] == len(file_confirmation)
    assert check["split"]["decision_data"] == str(path)


def test_checkpoints_are_selected_on_the_decision_file_when_given(tuned_tiny, tmp_path):
    """selection_data: the positions index the user's decision file, not the held-out split."""
    from axformer.training.loop import FinetuneConfig, selection_subset

    teacher, data, _ = tuned_tiny
    heldout = apply_split(data, ModelRecord.load(teacher).split)[1]
    path = tmp_path / "decide.csv"
    path.write_text("text,label\nfirst whole review,pos\nsecond whole review,neg\nthird whole review,pos\n")
    picked = selection_subset(heldout, FinetuneConfig(selection_data=str(path), selection_positions=[0, 2]), data)
    assert picked.texts == [("first whole review",), ("third whole review",)]
    assert selection_subset(heldout, FinetuneConfig(selection_positions=[0, 2]), data).texts == [
        heldout.texts[0],
        heldout.texts[2],
    ]


def test_time_budget_plans_the_recipe_and_keeps_to_it(tuned_tiny, tmp_path, capsys):
    """--time-budget: the teacher is timed, the distillations get the epochs that fit (far fewer than the 400
    asked for), the plan is printed before anything runs, and the recipe ends within the budget (planned and
    actual recorded per stage). A budget shorter than the fixed stages is refused in one line."""
    from axformer.distill import DistillConfig
    from axformer.distill.recipe import RecipeConfig, fastformers_recipe

    teacher, data, _ = tuned_tiny
    budget = 0.5  # minutes

    def config(minutes):
        return RecipeConfig(
            student_layers="1", heads=2, ffn=24, export=None, time_budget=minutes,
            distill=DistillConfig(epochs=400, learning_rate=3e-3, batch_size=16, max_seq_length=32, device="cpu",
                                  eval_max_examples=None),
        )  # fmt: skip

    t0 = time.perf_counter()
    report = fastformers_recipe(teacher, tmp_path / "ff", config(budget), data)
    wall = time.perf_counter() - t0
    plan = report["plan"]
    assert (
        "plan:" in capsys.readouterr().err + capsys.readouterr().out
        or (tmp_path / "ff" / "stages" / "plan.json").exists()
    )
    assert 0 < plan["epochs"] <= 400  # as many as fit (on a CPU like this one, far fewer than asked)
    assert plan["budget_seconds"] == 60 * budget and plan["stages"][0]["stage"] == "1-distilled"
    planned = sum(s["seconds"] for s in plan["stages"])
    assert planned == pytest.approx(60 * budget, rel=0.05) if plan["epochs"] < 400 else planned <= 60 * budget
    assert wall <= 60 * budget * 1.25, (wall, report["seconds"], plan)
    # the second distillation is not starved by the first's wall time: a stage its deadline stopped trained for
    # about its planned time (one that finished its epochs sooner, the plan having priced a tiny model's noisy
    # steps high, was not starved)
    for s in plan["stages"]:
        if s["training_seconds"]:
            record = json.loads((tmp_path / "ff" / "stages" / s["stage"] / "axformer.json").read_text())
            if record["history"][-1]["stopped_by_time"]:
                assert report["seconds"][s["stage"]] >= 0.6 * s["seconds"], (s, report["seconds"])
    md = (tmp_path / "ff" / "recipe.md").read_text()
    assert "| stage | planned | actual |" in md and "| 3-distilled-again |" in md
    assert not (tmp_path / "ff" / "stages" / "teacher-outputs").exists()
    with pytest.raises(AxformerError, match=r"--time-budget 0\.0 min is too short for this recipe: .* give at least"):
        fastformers_recipe(teacher, tmp_path / "short", config(1e-6), data)  # 60 us: nothing fits


def test_a_distillations_deadline_keeps_the_later_stages_time_and_uses_the_plans_slack():
    """Deadlines from the plan: the later stages keep their planned time; a plan the budget binds keeps its
    schedule, one the epochs bind lends its slack to the training (SST-2's first distillation was cut at 1.7 of
    3 epochs with a third of the budget unused); a resumed call counts finished stages at their planned length."""
    from axformer.distill.budget import RecipePlan, StagePlan

    def plan(budget):
        return RecipePlan(budget, 0.001, 0.002, 100, 3.0, [
            StagePlan("1-distilled", 100.0, 3.0, "", 90.0),
            StagePlan("2-pruned", 5.0),
            StagePlan("3-distilled-again", 50.0, 3.0, "", 45.0),
            StagePlan("summaries", 10.0),
        ])  # fmt: skip

    bound = plan(165.0)  # the budget is the plan's sum: the old schedule
    assert bound.training_deadline("1-distilled") == pytest.approx(90.0)
    assert bound.training_deadline("3-distilled-again") == pytest.approx(100 + 5 + 45)
    slack = plan(200.0)  # 35 s to spare: the first distillation may use them, the second what is left
    assert slack.training_deadline("1-distilled") == pytest.approx(125.0)
    assert slack.training_deadline("3-distilled-again") == pytest.approx(185.0)
    # resumed after the first two stages: the second distillation's deadline counts from this call's start
    assert slack.training_deadline("3-distilled-again", {"1-distilled", "2-pruned"}) == pytest.approx(80.0)
    with pytest.raises(AxformerError, match="no training stage 'summaries'"):
        slack.training_deadline("summaries")


def test_a_distillation_stops_at_its_time_limit_with_its_best_checkpoint(tuned_tiny, tmp_path):
    from axformer.distill import DistillConfig, distill
    from axformer.models.record import ModelRecord

    teacher, data, _ = tuned_tiny
    cfg = DistillConfig(epochs=50, learning_rate=3e-3, batch_size=16, max_seq_length=32, device="cpu",
                        max_seconds=0.0)  # fmt: skip
    res = distill(teacher, tmp_path / "s", student_layers="1", data=data, config=cfg)
    stage = ModelRecord.load(res.output).history[-1]
    assert stage["stopped_by_time"] and stage["steps"] == 1 and stage["best_step"] == 1
    assert load_model(res.output) is not None


def test_search_recovers_by_distillation(tuned_tiny, tmp_path, monkeypatch, recovery_always_pays):
    """Recovery by distillation, with perturbed copies: made once (the recovery counts them to plan its epochs
    and hands them to the trainer), and the copies the budget records are the ones the trainer trained on."""
    import axformer.distill.trainer as trainer
    from axformer.distill.augment import perturbed_copies
    from axformer.models.record import ModelRecord
    from axformer.search.optimize import optimize

    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return perturbed_copies(*args, **kwargs)

    monkeypatch.setattr(trainer, "perturbed_copies", counted)  # the recovery's and the trainer's one maker
    model, data, _ = tuned_tiny
    report = optimize(
        model,
        data,
        None,
        tmp_path / "rec",
        tiny_speed_search(
            # the gold-label loss beside the copies (placeholder labels): it reads the labelled rows only
            recovery=Recovery(mode="distill", epochs=1, learning_rate=3e-3, augment=2, hard_weight=0.5),
        ),
    )
    assert report["recovery"]["mode"] == "distill" and "heldout_before" in report["recovery"]
    history = ModelRecord.load(tmp_path / "rec").history
    copies = report["recovery"]["budget"]["augmented_texts"]
    assert calls == [1] * report["recovery"].get("attempts", 1) and copies > 0
    assert history[-1]["augmented_texts"] == copies
    assert [h["stage"] for h in history[-2:]] == ["optimize", "distill"] and history[-1]["teacher"] == str(model)
    assert report["results"]["optimized"]["parameters"] < report["results"]["original"]["parameters"]
    text = (tmp_path / "rec" / "report.md").read_text()
    assert "distilled from the original model" in text
    assert f"plus {copies} perturbed copies of them" in text and "gold labels at weight 0.5" in text
    # a model trained to match the original on the training texts is not scored for agreement there
    cert = report["certification"]
    shipped_recovered = not cert["recovery_reverted"] or bool((cert["retry"] or {}).get("passed"))
    assert ("training texts" in report["fidelity"]) != shipped_recovered
    assert ("recovery trained" in report["fidelity"].get("training_texts_note", "")) == shipped_recovered


def test_search_recovery_stops_at_its_minute_limit_and_says_so(tuned_tiny, tmp_path, recovery_always_pays):
    """``--recover-max-minutes``: every recovery training stops at the limit with its best checkpoint so far, and
    the report's budget sentence says so; a limit of 0 is refused, and so is the limit with the recipe (its
    --time-budget plans its distillations)."""
    from axformer.pipeline.config import SearchStage
    from axformer.search.optimize import optimize

    model, data, _ = tuned_tiny
    recovery = Recovery(mode="distill", epochs=20, learning_rate=3e-3, max_minutes=1e-9)
    report = optimize(model, data, None, tmp_path / "rec", tiny_speed_search(recovery=recovery))
    rec = report["recovery"]
    assert rec["stopped_by_time"] and rec["config"]["max_seconds"] == pytest.approx(6e-8)
    assert "stopped by --recover-max-minutes" in (tmp_path / "rec" / "report.md").read_text()
    with pytest.raises(AxformerError, match="--recover-max-minutes 0; expected minutes above 0"):
        Recovery(mode="distill", max_minutes=0).validate()
    with pytest.raises(AxformerError, match="the FastFormers recipe plans its distillations with --time-budget"):
        SearchStage(strategy="fastformers", student_layers="1", recovery=Recovery(max_minutes=5)).validate()


def test_pipeline_time_budget_plans_from_the_models_own_task(tuned_tiny, tmp_path, monkeypatch, capsys):
    """``axformer optimize MODEL --strategy fastformers --time-budget`` on a fine-tuned model given without --task
    (the usual call): the plan counts the examples of the task recorded with the model (it crashed on the
    missing data), fits what the budget left, and the whole job (export and benchmark) ends within it."""
    from tests.test_cli import run_cli

    teacher, _, _ = tuned_tiny
    # minutes: the fixed stages of a tiny model need about 1 on 2 idle cores, and measured 2.1 beside a training
    # job (session 31), when 2 minutes was refused as too short; 3 leaves room for a busy machine
    out, budget = tmp_path / "out", 3.0
    config = tmp_path / "quick.yaml"  # a short benchmark: the budget keeps back what it will need
    config.write_text(
        "benchmark:\n  rounds: 1\n  latency_examples: 10\n  throughput_examples: 32\n  breakdown_requests: 0\n"
        "  lengths: []\n  memory: false\n  instances: 0\n"
    )
    t0 = time.perf_counter()
    code, _, err = run_cli(
        monkeypatch, capsys, "optimize", teacher, "-o", out, "--config", config, "--strategy", "fastformers",
        "--student-layers", "1", "--heads", "2", "--recover-epochs", "200", "--time-budget", str(budget),
        "--scorer", "none", "--device", "cpu",
    )  # fmt: skip
    wall = time.perf_counter() - t0
    assert code == 0, err
    plan = json.loads((out / "3-search" / "recipe.json").read_text())["plan"]
    assert 0 < plan["budget_seconds"] <= 60 * budget and 0 < plan["epochs"] <= 200
    bench = json.loads((out / "5-benchmark" / "benchmark.json").read_text())
    # FastFormers' cumulative view: dynamic length, the student, its pruning and second distillation, int8 in ONNX
    # Runtime; each step against ONNX Runtime int8 of the unpruned model too
    from axformer.benchmark.run import DYNAMIC, PADDED

    assert [s["step"] for s in bench["cumulative"]] == [PADDED, DYNAMIC, "1-distilled", "3-search", "4-export"]
    assert all(s["latency_vs_ort_int8"] > 0 for s in bench["cumulative"])
    assert "vs ORT int8 of the original" in (out / "report.md").read_text()
    # the recipe's artifact is certified like the search's: on the held-out examples no decision of it used
    assert json.loads((out / "4-export" / "export.json").read_text())["validation"]["checked_on"] == "confirmation"
    assert wall <= 60 * budget * 1.5, wall


@pytest.mark.parametrize("failing", ["all", "final"])
def test_recipe_that_fails_its_certificate_backtracks_stage_by_stage(
    failing, tuned_tiny, tmp_path, monkeypatch, capsys
):
    """The recipe cannot undo one change at a time, but it can undo a stage: when its model breaks the tolerance
    on the confirmation examples even in fp32 (scripted here), the pipeline tries the distilled student before
    its pruning, then the original, and the report says why."""
    import axformer.export.artifact as artifact
    from tests.test_cli import run_cli

    teacher, _, _ = tuned_tiny
    real = artifact.export_model
    out = tmp_path / "out"
    final = out / "3-search"

    def failing_recipe(model, output, config=None, *args, **kwargs):
        report = real(model, output, config, *args, **kwargs)
        if str(model) != str(teacher) and (failing == "all" or Path(model) == final):
            report["validation"]["drop"] = 5.0  # as if it lost 5 points on the confirmation part
        return report

    monkeypatch.setattr(artifact, "export_model", failing_recipe)
    config = tmp_path / "quick.yaml"
    config.write_text("benchmark:\n  rounds: 1\n  latency_examples: 5\n  throughput_examples: 16\n"
                      "  breakdown_requests: 0\n  lengths: []\n  memory: false\n  instances: 0\n")  # fmt: skip
    code, _, err = run_cli(
        monkeypatch, capsys, "optimize", teacher, "-o", out, "--config", config, "--strategy", "fastformers",
        "--student-layers", "1", "--heads", "2", "--recover-epochs", "1", "--scorer", "none", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    export = json.loads((out / "4-export" / "export.json").read_text())
    tried = [Path(t["model"]).name for t in export["backtracked"]["tried"]]
    student = final / "stages" / "1-distilled"
    if failing == "all":  # the pruned stage has the final's structure: not a step back
        assert tried == ["3-search", "1-distilled"] and export["model"] == str(teacher)
        assert "shipped the original instead" in (out / "report.md").read_text()
    else:
        assert tried == ["3-search"] and export["model"] == str(student)
        assert "shipped the earlier stage 1-distilled instead" in (out / "report.md").read_text()
    assert export["backtracked"]["drop"] == 5.0 and export["validation"]["drop"] <= 1.0
    # the artifact is not the recipe's last step: the cumulative view is the baselines' chain and the artifact
    steps = [s["step"] for s in json.loads((out / "5-benchmark" / "benchmark.json").read_text())["cumulative"]]
    assert "1-distilled" not in steps and steps[-1] == "4-export"
    assert json.loads((out / "summary.json").read_text())["export_backtracked"]["checked_on"] == "confirmation"


@pytest.mark.parametrize("holds", [True, False])
def test_pipeline_tries_a_smaller_student_judged_as_its_artifact_would_ship(
    holds, tuned_tiny, tmp_path, monkeypatch, capsys
):
    """``--try-student``: the smaller student's judgement exports it as the export stage will and reads its check
    on the confirmation examples; kept, it is the searched model (and the artifact, with no student row of its
    own: nothing was pruned after it); refused (scripted here), the recipe's own student is trained."""
    import axformer.export.artifact as artifact
    from tests.test_cli import run_cli

    teacher, _, _ = tuned_tiny
    real = artifact.export_model
    out = tmp_path / "out"

    def scripted(model, output, config=None, *args, **kwargs):
        report = real(model, output, config, *args, **kwargs)
        if not holds and "trial-" in str(model):
            report["validation"]["drop"] = 500.0
        return report

    monkeypatch.setattr(artifact, "export_model", scripted)
    config = tmp_path / "quick.yaml"
    config.write_text("export:\n  max_drop: 100\nbenchmark:\n  rounds: 1\n  latency_examples: 5\n"
                      "  throughput_examples: 16\n  breakdown_requests: 0\n  lengths: []\n  memory: false\n"
                      "  instances: 0\n")  # fmt: skip
    code, _, err = run_cli(
        monkeypatch, capsys, "optimize", teacher, "-o", out, "--config", config, "--strategy", "fastformers",
        "--student-layers", "2", "--heads", "2", "--try-student", "1", "--recover-epochs", "1", "--scorer", "none",
        "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    recipe = json.loads((out / "3-search" / "recipe.json").read_text())
    (trial,) = recipe["trials"]
    assert trial["certificate"]["checked_on"] == "confirmation" and trial["accepted"] is holds
    assert recipe["config"]["trial_max_drop"] == 100  # the export's --max-drop
    steps = [s["step"] for s in json.loads((out / "5-benchmark" / "benchmark.json").read_text())["cumulative"]]
    layers = current_structure(load_model(out / "3-search")).present_layers
    report = (out / "report.md").read_text()
    if holds:
        assert recipe["student"] == "trial-layers-1" and len(layers) == 1 and "1-distilled" not in steps
        assert (out / "3-search" / "stages" / "trial-layers-1" / "judge" / "artifact" / "model.onnx").exists()
    else:
        assert recipe["student"] is None and len(layers) == 2 and "1-distilled" in steps
        assert trial["certificate"]["drop"] == 500.0
    assert "Smaller students tried first" in report and ("| kept |" if holds else "| refused |") in report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["student"] == recipe["student"] and summary["student_trials"] == recipe["trials"]


def test_cli_distill_bad_input(tmp_path, tuned_tiny):
    import subprocess
    import sys

    teacher, _, (train, dev) = tuned_tiny
    runs = [
        ["distill", "--teacher", str(tmp_path / "missing"), "-o", str(tmp_path / "o1"), "--student-layers", "1"],
        ["distill", "--teacher", str(teacher), "-o", str(tmp_path / "o2"), "--student-layers", "0,9"],
        ["optimize", str(teacher), "--strategy", "fastformers", "-o", str(tmp_path / "o3")],
        ["distill", "--teacher", str(teacher), "-o", str(tmp_path / "o4"), "--student-layers", "1",
         "--qat-block-size", "24"],
        ["export", str(teacher), "-o", str(tmp_path / "o5"), "--precision", "int4", "--int4-block-size", "24"],
        ["optimize", str(teacher), "--time-budget", "30", "-o", str(tmp_path / "o6")],  # the search strategy
        ["optimize", str(teacher), "--strategy", "fastformers", "--student-layers", "1", "--time-budget", "-1",
         "-o", str(tmp_path / "o7")],
    ]  # fmt: skip
    for args in runs:
        p = subprocess.run([sys.executable, "-m", "axformer", *args], capture_output=True, text=True)
        assert p.returncode == 2, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert not any((tmp_path / f"o{i}").exists() for i in range(1, 8))


RESUMABLE = {"epochs": 2, "learning_rate": 3e-3, "batch_size": 16, "max_seq_length": 32, "device": "cpu",
             "eval_max_examples": None, "checkpoint_every": 5}  # fmt: skip


def killed_distillation(teacher, data, output, monkeypatch, **config) -> None:
    """Run a distillation of one layer that is killed at its 12th step (checkpoints every 5), then restore the loss."""
    import axformer.distill.objective as obj
    from axformer.distill import DistillConfig, distill

    real = obj.soft_cross_entropy
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 12:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, "soft_cross_entropy", dying)
    with pytest.raises(KeyboardInterrupt):
        distill(teacher, output, student_layers="1", data=data, config=DistillConfig(**RESUMABLE, **config))
    monkeypatch.setattr(obj, "soft_cross_entropy", real)


def test_interrupted_distillation_resumes_to_identical_result(tuned_tiny, tmp_path, monkeypatch):
    """Killed mid-training, the same call resumes from the checkpoint (student, projection, teacher cache) to the same
    weights.
    """
    from safetensors.torch import load_file

    from axformer.distill import DistillConfig, distill

    teacher, data, _ = tuned_tiny
    cfg = RESUMABLE
    ref = distill(teacher, tmp_path / "ref", student_layers="1", data=data, config=DistillConfig(**cfg))
    killed_distillation(teacher, data, tmp_path / "run", monkeypatch)
    assert (tmp_path / "run.partial" / "teacher_logits.npy").exists() and not (tmp_path / "run").exists()
    resumed = distill(teacher, tmp_path / "run", student_layers="1", data=data, config=DistillConfig(**cfg))
    a, b = (
        load_file(str(tmp_path / "ref" / "model.safetensors")),
        load_file(str(tmp_path / "run" / "model.safetensors")),
    )
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert resumed.evaluation.splits["dev"].metrics == ref.evaluation.splits["dev"].metrics


def test_time_limit_counts_the_interrupted_calls_seconds_and_does_not_block_resuming(tuned_tiny, tmp_path, monkeypatch):
    """A resumed distillation keeps its steps when the call brings another --recover-max-minutes or deadline (the
    recipe passes what is left of its plan), and the seconds spent before the interruption count against it."""
    from axformer.distill import DistillConfig, distill

    teacher, data, _ = tuned_tiny
    killed_distillation(teacher, data, tmp_path / "run", monkeypatch, max_seconds=1e6)
    ckpt_path = tmp_path / "run.partial" / "checkpoint.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["step"] == 10 and 0 < ckpt["spent_s"] < 1e6
    ckpt["spent_s"] = 500.0  # as if the interrupted call had trained for 500 s
    torch.save(ckpt, ckpt_path)
    limit = DistillConfig(**RESUMABLE, max_seconds=400)
    resumed = distill(teacher, tmp_path / "run", student_layers="1", data=data, config=limit)
    assert resumed.stopped_by_time and resumed.steps == 11  # resumed at step 10, over its limit after one step


def test_later_windows_are_the_parts_of_long_texts_the_model_never_reads(tmp_path):
    """Each window after the first re-tokenizes to the tokens the overflow cut off (at most ``per_text`` of
    them); short texts and pair tasks add nothing; the trainer refuses windows with a gold-label loss."""
    from axformer.distill.augment import later_windows
    from tests.conftest import WORDS, tiny_tokenizer

    tok = tiny_tokenizer(tmp_path)
    long = " ".join(WORDS[i % len(WORDS)] for i in range(40))  # 40 words, one token each
    windows = later_windows(tok, [(long,), ("good film",)], max_length=12, per_text=2)
    body = tok(long, add_special_tokens=False)["input_ids"]
    assert len(body) == 40 and len(windows) == 2  # 10 tokens per window: 4 windows, the first is read anyway
    assert [tok(w[0], add_special_tokens=False)["input_ids"] for w in windows] == [body[10:20], body[20:30]]
    assert later_windows(tok, [(long,)], max_length=12, per_text=0) == []
    assert later_windows(tok, [(long, long)], max_length=12, per_text=2) == []


def test_perturbed_copies_stay_in_domain_and_never_repeat_a_reserved_text():
    """Seeded; every word of a copy is a word of the training texts; pairs are perturbed field by field; a copy
    equal to a training text or to an excluded (dev, held-out) text is dropped; the rate is checked."""
    from axformer.distill.augment import perturbed_copies

    texts = [("the film was good",), ("a dull and slow film",), ("good acting",), ("bad",)]
    a = perturbed_copies(texts, 5, 0.3, seed=1)
    assert a == perturbed_copies(texts, 5, 0.3, seed=1) and a != perturbed_copies(texts, 5, 0.3, seed=2)
    vocabulary = {w for (t,) in texts for w in t.split()}
    assert a and all(set(t.split()) <= vocabulary for (t,) in a)
    assert not set(a) & set(texts) and len(set(a)) == len(a)
    reserved = set(a[:3])
    b = perturbed_copies(texts, 5, 0.3, seed=1, exclude=reserved)
    assert not set(b) & reserved and set(b) == set(a) - reserved
    pairs = perturbed_copies([("one two three", "four five six")], 20, 0.3, seed=0)
    assert pairs and all(len(p) == 2 and p[0] and p[1] for p in pairs)
    assert all(set(p[0].split()) | set(p[1].split()) <= {"one", "two", "three", "four", "five", "six"} for p in pairs)
    assert perturbed_copies(texts, 0) == []
    with pytest.raises(ValueError, match="rate"):
        perturbed_copies(texts, 1, 0.0)


def test_the_recipe_distils_on_the_recoverys_extra_inputs_and_plans_for_them(tuned_tiny):
    """--recover-augment, its minimum length and --recover-windows reach the recipe's distillations (it ignored
    them), and its time plan counts the copies the trainer will add, so an epoch is priced at its real length."""
    from dataclasses import replace

    from axformer.distill.budget import plan_recipe
    from axformer.distill.trainer import perturbed_inputs
    from axformer.pipeline.config import SearchStage
    from axformer.search.config import Recovery
    from axformer.training.finetune import training_split
    from axformer.utils.device import resolve_device

    teacher, data, _ = tuned_tiny
    recovery = Recovery(mode="distill", augment=2, augment_min_words=3, windows=1)
    recipe = SearchStage(strategy="fastformers", student_layers="1", recovery=recovery).recipe()
    assert (recipe.distill.augment, recipe.distill.augment_min_words, recipe.distill.windows) == (2, 3, 1)
    cpu = resolve_device("cpu")
    plain = plan_recipe(str(teacher), data, replace(recipe, distill=replace(recipe.distill, augment=0)), 3600, cpu)
    augmented = plan_recipe(str(teacher), data, recipe, 3600, cpu)
    _, _, train_part, heldout = training_split(str(teacher), data, recipe.distill)
    copies = perturbed_inputs(recipe.distill, data, train_part, heldout, teacher)
    assert copies and augmented.train_examples == plain.train_examples + len(copies)
    assert all(sum(len(f.split()) for f in row) >= 2 for row in copies)  # copies of texts of 3+ words
    with pytest.raises(AxformerError, match="--recover-augment-min-words -1"):
        Recovery(mode="distill", augment=1, augment_min_words=-1).validate()


def test_perturbed_copies_of_long_texts_only():
    """With a minimum word count only texts that long are copied (a pair's fields counted together), while the
    replacement words still come from every text; a negative minimum is refused."""
    from axformer.distill.augment import perturbed_copies

    texts = [("the film was good and long",), ("zebra",), ("a dull and slow film",)]
    long_only = perturbed_copies(texts, 30, 0.3, seed=0, min_words=5)
    assert long_only and all(len(t.split()) >= 2 for (t,) in long_only)  # a copy of "zebra" has one word or none
    assert any("zebra" in t for (t,) in long_only)  # a replacement drawn from the short text
    assert perturbed_copies(texts, 30, 0.3, seed=0, min_words=7) == []
    assert perturbed_copies([("one two", "three")], 10, 0.3, seed=0, min_words=3)
    assert perturbed_copies([("one", "two")], 10, 0.3, seed=0, min_words=3) == []
    with pytest.raises(ValueError, match="minimum words"):
        perturbed_copies(texts, 1, 0.3, min_words=-1)


def test_replacement_words_from_the_models_own_embedding_neighbours(tmp_path):
    """Each whole-word token of the texts gets its nearest whole-word tokens by cosine in the input-embedding
    table (never itself, never a special token or a word piece), capitalised like the text's word; a perturbed
    copy replaces such a word by one of them instead of a frequency draw, and the unigram copies are unchanged
    by the option's presence."""
    from axformer.distill import DistillConfig
    from axformer.distill.augment import embedding_neighbours, perturbed_copies
    from tests.conftest import tiny_tokenizer

    tok = tiny_tokenizer(tmp_path)
    vocab = tok.get_vocab()
    rng = np.random.default_rng(0)
    table = rng.normal(size=(len(vocab), 16)).astype(np.float32)
    table[vocab["dog"]] = table[vocab["cat"]] + 0.01  # dog's nearest is cat, then house
    table[vocab["house"]] = table[vocab["cat"]] + 0.3 * rng.normal(size=16)
    table[vocab["[MASK]"]] = table[vocab["cat"]]  # a special token is never a replacement
    texts = [("the cat sat in the house",), ("Cat and dog",)]
    near = embedding_neighbours(tok, table, texts, k=2)
    assert near["cat"] == ["dog", "house"] and near["Cat"] == ["Dog", "House"]
    assert all(w not in ("[MASK]",) and not w.startswith("##") and w != word for word, ws in near.items() for w in ws)
    assert "sat" not in near  # not one token in this vocabulary: a frequency draw replaces it
    only = {"cat": ["dog"], "Cat": ["Dog"], "house": ["home"], "dog": ["cat"]}
    copies = perturbed_copies(texts, 50, 0.5, seed=1, neighbours=only)
    words = {w for (t,) in copies for w in t.split()}
    assert "home" in words and "Dog" in words
    assert perturbed_copies(texts, 5, 0.5, seed=1) == perturbed_copies(texts, 5, 0.5, seed=1, neighbours={})
    with pytest.raises(AxformerError, match="--augment-words 'glove'; expected one of unigram, neighbours"):
        DistillConfig(augment=1, augment_words="glove").validate()
    with pytest.raises(AxformerError, match="--recover-augment-words 'glove'"):
        Recovery(mode="distill", augment=1, augment_words="glove").validate()


def test_neighbour_copies_come_from_the_teachers_own_table(tuned_tiny):
    """The trainer's (and the time plan's) perturbed inputs with ``augment_words="neighbours"`` replace words by
    neighbours in the teacher's saved input-embedding table: every new word is one of them."""
    from axformer.distill import DistillConfig
    from axformer.distill.augment import embedding_neighbours, input_word_table
    from axformer.distill.trainer import perturbed_inputs
    from axformer.models.loading import load_tokenizer
    from axformer.training.finetune import training_split

    teacher, data, _ = tuned_tiny
    table = input_word_table(teacher)
    assert table.shape == tuple(load_model(teacher).get_input_embeddings().weight.shape)
    config = DistillConfig(augment=2, augment_words="neighbours", augment_rate=0.4)
    _, _, train_part, heldout = training_split(str(teacher), data, config)
    copies = perturbed_inputs(config, data, train_part, heldout, teacher)
    near = embedding_neighbours(load_tokenizer(str(teacher)), table, train_part.texts)
    allowed = {w for ws in near.values() for w in ws} | {w for row in train_part.texts for f in row for w in f.split()}
    assert copies and {w for row in copies for f in row for w in f.split()} <= allowed
    assert any(w in {x for ws in near.values() for x in ws} for row in copies for f in row for w in f.split())
    assert copies != perturbed_inputs(replace(config, augment_words="unigram"), data, train_part, heldout, teacher)


def test_distillation_with_augmented_texts_never_trains_on_dev_or_heldout_texts(tuned_tiny, tmp_path, monkeypatch):
    """The trainer's inputs are the training part plus its perturbed copies, none of them a dev or held-out text
    (the copies are asked to exclude every one of them), and the copies are recorded; with a gold-label loss the
    objective knows which rows are labelled; a negative count is refused."""
    import axformer.distill.trainer as trainer
    from axformer.distill import DistillConfig, distill
    from axformer.distill.augment import perturbed_copies
    from axformer.training.finetune import training_split

    teacher, data, _ = tuned_tiny
    seen = {}

    def capture(net, tokenizer, data, split, train_part, heldout, *a, **k):
        seen.update(train=list(train_part.texts), heldout=set(heldout.texts), stage=a[3])
        raise KeyboardInterrupt

    exclusions = []

    def spy(texts, copies, rate, seed, exclude, **kwargs):
        exclusions.append(set(exclude))
        return perturbed_copies(texts, copies, rate, seed, exclude, **kwargs)

    monkeypatch.setattr(trainer, "train_model", capture)
    monkeypatch.setattr(trainer, "perturbed_copies", spy)
    cfg = DistillConfig(epochs=1, batch_size=16, max_seq_length=32, device="cpu", augment=3, augment_rate=0.3)
    with pytest.raises(KeyboardInterrupt):
        distill(teacher, tmp_path / "s", student_layers="1", data=data, config=cfg)
    _, _, train_part, heldout = training_split(teacher, data, cfg)
    dev = {t for part in data.dev.values() for t in part.texts}
    assert exclusions[0] >= dev | set(heldout.texts)
    added = seen["train"][len(train_part) :]
    assert seen["train"][: len(train_part)] == list(train_part.texts) and len(added) > len(train_part)
    assert not set(added) & (dev | set(heldout.texts)) and seen["stage"]["augmented_texts"] == len(added)
    objectives = []  # a classifier's unlabelled inputs have no gold label: the gold-label term skips them

    def record(net, tokenizer, data, split, train_part, heldout, output, config, objective, *rest):
        objectives.append((objective, len(train_part)))
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train_model", record)
    labelled = DistillConfig(epochs=1, batch_size=16, max_seq_length=32, device="cpu", hard_weight=1.0, augment=1)
    with pytest.raises(KeyboardInterrupt):
        distill(teacher, tmp_path / "h", student_layers="1", data=data, config=labelled)
    objective, rows = objectives[0]
    assert objective.labelled == len(train_part) < rows
    with pytest.raises(AxformerError, match="--augment -1"):
        DistillConfig(augment=-1).validate()
    with pytest.raises(AxformerError, match="--augment-min-words -2"):
        DistillConfig(augment=1, augment_min_words=-2).validate()


def test_distillation_drops_extra_texts_that_are_dev_heldout_or_training_inputs(tuned_tiny, tmp_path, monkeypatch):
    """Calibration texts handed to ``distill`` (the CLI's --calibration-texts) lose every one that shares a text
    with a dev, held-out or training input, whoever the caller is; the rest are trained on after the labelled
    rows and the count left out is recorded."""
    import axformer.distill.trainer as trainer
    from axformer.distill import DistillConfig, distill
    from axformer.training.finetune import training_split

    teacher, data, _ = tuned_tiny
    seen = {}

    def capture(net, tokenizer, data, split, train_part, heldout, *a, **k):
        seen.update(train=list(train_part.texts), stage=a[3])
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train_model", capture)
    cfg = DistillConfig(epochs=1, batch_size=16, max_seq_length=32, device="cpu")
    _, _, train_part, heldout = training_split(teacher, data, cfg)
    dev = next(iter(data.dev.values())).texts[0]
    fresh = [("an unseen calibration text",), ("another one from production",)]
    extra = [*fresh, dev, heldout.texts[0], train_part.texts[0]]
    with pytest.raises(KeyboardInterrupt):
        distill(teacher, tmp_path / "s", student_layers="1", data=data, config=cfg, extra_texts=extra)
    assert seen["train"] == [*train_part.texts, *fresh]
    assert seen["stage"]["extra_texts"] == 2 and seen["stage"]["extra_texts_left_out"] == 3


def test_the_plan_prices_the_benchmark_by_what_it_runs():
    """Batch-1 requests at the request time, padded ones at the padded time, fixed lengths scaled from it,
    exports and worker processes at their allowances (the plan priced all of it as batched passes and kept 2
    minutes for a benchmark that took 8.4); the pipeline counts them from the benchmark's config."""
    from axformer.distill.budget import EXPORT_FIXED_S, PROCESS_FIXED_S, Downstream
    from axformer.pipeline.config import PipelineConfig
    from axformer.pipeline.run import recipe_budget
    from axformer.tasks.data import Split, TaskData
    from axformer.tasks.spec import custom_task

    d = Downstream(passes=100, requests=10, padded_requests=4, long_passes={256: 2}, exports=1, processes=3)
    expected = 100 * 0.001 + 10 * 0.02 + 4 * 0.05 + 2 * 0.05 * 2 + EXPORT_FIXED_S + 3 * PROCESS_FIXED_S
    assert d.seconds(forward=0.001, request=0.02, padded=0.05, max_length=128) == pytest.approx(expected)

    split = Split("dev", [("a",)] * 50, np.zeros(50, dtype=np.int64))
    data = TaskData(custom_task(("a", "b"), 1), split, {"dev": split})
    cfg = PipelineConfig.build(preset="fastest-within-1", overrides={"model": "x"})
    cfg.search.time_budget = 30.0
    b = cfg.benchmark
    b.rounds, b.warmup, b.latency_examples, b.lengths, b.memory, b.instances = 3, 1, 200, (64, 512), False, 1
    left, plan = recipe_budget(cfg, data, Path("/nonexistent/3-search"))
    assert left == 30.0
    assert plan.padded_requests == 4 * 200 and plan.requests >= 5 * 4 * 200  # five rows run unpadded
    assert set(plan.long_passes) == {64, 512} and plan.processes == 0  # no memory probe, no pool


def test_the_plan_times_training_in_the_trainers_precision_and_evaluations_in_fp32(tiny_task, monkeypatch):
    """A bf16 trainer's steps and teacher pass are timed under bf16 autocast, every evaluation in fp32 (the plan
    would otherwise price a bf16 teacher pass at the fp32 rate, or fp32 evaluations at the bf16 one)."""
    import axformer.distill.budget as budget
    from axformer.data.batching import encode
    from axformer.models.loading import load_model, load_tokenizer

    model, data, _ = tiny_task
    net = load_model(model, data.spec, device="cpu")
    enc = encode(load_tokenizer(model), data.train, 32)
    calls = []
    real = budget.autocast

    def spy(dtype, device):
        calls.append(dtype)
        return real(dtype, device)

    monkeypatch.setattr(budget, "autocast", spy)
    fp32 = budget._per_example_seconds(net, enc, 16, 32, "cpu", False, timed=3)
    assert len(fp32) == 3 and fp32[2] == fp32[0] and min(fp32) > 0 and set(calls) == {None}
    calls.clear()
    mixed = budget._per_example_seconds(net, enc, 16, 32, "cpu", False, timed=3, dtype=torch.bfloat16)
    assert min(mixed) > 0
    # warm-up and 3 timed batches each: the fp32 forward pass, the bf16 training steps, the bf16 teacher pass
    assert calls == [None] * 4 + [torch.bfloat16] * 8


@pytest.mark.parametrize("pruned", [True, False])
def test_the_plan_times_the_last_distillation_through_the_int8_rounding(tiny_task, monkeypatch, pruned):
    """With ``qat_int8`` the last distillation trains through dynamic int8's rounding (slower per step): the plan
    times that student rounded, the others as they train."""
    import axformer.distill.budget as budget
    from axformer.distill.recipe import RecipeConfig

    model, data, _ = tiny_task
    rounded = []
    monkeypatch.setattr(
        budget,
        "_per_example_seconds",
        lambda m, *a, **k: rounded.append(any(hasattr(x, "_axformer_int8_input") for x in m.modules())) or (1, 1, 1),
    )
    monkeypatch.setattr(budget, "_request_seconds", lambda *a, **k: (1.0, 1.0))
    sizes = {"heads": 2, "ffn": 16} if pruned else {}
    config = RecipeConfig(student_layers="1", qat_int8=True, **sizes)
    timed = budget.measure(model, data, data.train, config, "cpu", examples=16)
    assert rounded == ([False, False, True] if pruned else [False, True])  # teacher, student[, pruned]
    assert set(timed) == {"teacher", "request", "student", *(["pruned"] if pruned else [])}


def test_the_recipe_report_says_its_last_distillation_was_int8_aware():
    from axformer.distill.recipe import recipe_markdown, rounding_note

    stage = {"heldout": {"metrics": {"f1": 80.0}}, "size_bytes": 2**20, "seconds": 60.0}
    report = {
        "model": "m",
        "task": {"display_name": "MRPC", "main_metric": "f1"},
        "stages": [{"stage": s, **stage} for s in ("teacher", "1-distilled", "2-pruned", "3-distilled-again")],
        "config": {"qat_int8": True},
    }
    assert "last distillation (3-distilled-again)" in rounding_note(report)
    assert rounding_note(report) in recipe_markdown(report)
    plain = {**report, "config": {"qat_int8": False}}
    assert rounding_note(plain) == "" and "Quantization-aware" not in recipe_markdown(plain)
