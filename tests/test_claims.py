"""README claims that had no test: each test names the claim it checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from axformer.evaluation.engine import CandidateResult
from axformer.search.trials import Trials
from axformer.surgery.structure import ModelStructure
from tests.conftest import make_tiny_model_dir, write_sentiment_files
from tests.test_cli import assert_clean_failure, run_cli


class _AcceptOnly:
    """A scripted engine: candidates in ``accept`` keep the metric at 100, every other one drops it to 0."""

    spec = type("S", (), {"main_metric": "accuracy"})()
    encoded = type("E", (), {"labels": np.zeros(4, dtype=np.int64)})()
    regression = False

    def __init__(self, accept: set[str]):
        self.accept = accept
        self.evaluated: list[str] = []
        self.reference = self._result((), True)

    @staticmethod
    def _result(removed, ok: bool):
        return CandidateResult(
            tuple(removed), (), np.ones(4, np.float32), np.zeros((4, 2), np.float32), True, 4, 0, 0.0,
            {"accuracy": 100.0 if ok else 0.0},
        )  # fmt: skip

    def evaluate(self, removed=(), changes=(), stop=None, desc=None):
        name = "+".join(removed)
        self.evaluated.append(name)
        return self._result(removed, name in self.accept)

    def set_base(self, removed=(), changes=()):
        return self.reference


def test_constraint_search_goes_coarse_to_fine_ranks_per_unit_of_cost_and_stops_at_the_target(monkeypatch):
    """README: layers, then blocks, then heads and groups; within a phase by significance per unit of cost saved;
    the search ends when the target is met."""
    import axformer.search.constraint as cs
    from axformer.search.cost import CostModel

    significance = {"L0": 3.0, "L1": 1.0, "L2": 2.0, "L0.attn": 1.0, "L1.attn": 2.0, "L2.attn": 3.0}
    monkeypatch.setattr(cs, "gradient_importance", lambda *a, **k: None)
    monkeypatch.setattr(cs, "_significance", lambda imp, name, structure, groups: significance.get(name, 1.0))
    structure = ModelStructure.full(3, 2, 4, 6, 8)
    # c0, per layer, per head, per neuron: an attention block (2 heads) saves 2e-4, an FFN block (6 neurons) 6e-5
    cost = CostModel("latency", [1e-3, 1e-3, 1e-4, 1e-5], 128, [{"variant": "unchanged", "measured_ms": 5.0}])
    base = cost.predict(structure)
    target = base / (base - 2e-4) - 1e-6  # met by removing one attention block
    engine = _AcceptOnly({"L2.attn"})
    out = cs.constraint_search(Trials(engine, None, "accuracy"), structure, cost, cs.ConstraintSearchConfig(
        goal="speed", target=target, groups=2
    ))  # fmt: skip
    # every layer would overshoot this target by far more than 10%, so the layers are left to the blocks; blocks
    # by significance / saving: L0.attn 5000, L1.attn 10000, L2.attn 15000 per second saved, each FFN block
    # 16667; the target is met at L2.attn, so nothing after it
    assert engine.evaluated == ["L0.attn", "L1.attn", "L2.attn"]
    assert out.removed == ["L2.attn"] and out.target_met
    # with a target that needs a layer, the layers are tried by significance (all save the same)
    engine = _AcceptOnly({"L0"})
    layer_target = base / (base - 1e-3 - 2 * 2e-4 - 6 * 1e-5)  # one whole layer
    cs.constraint_search(Trials(engine, None, "accuracy"), structure, cost, cs.ConstraintSearchConfig(
        goal="speed", target=layer_target, groups=2
    ))  # fmt: skip
    assert engine.evaluated[:3] == ["L1", "L2", "L0"]
    # without a target the search goes on to the FFN blocks and then to heads and groups
    engine = _AcceptOnly(set())
    cs.constraint_search(
        Trials(engine, None, "accuracy"), structure, cost, cs.ConstraintSearchConfig(goal="speed", groups=2)
    )
    kinds = ["layer" if "." not in n else "block" if n.count(".") == 1 else "unit" for n in engine.evaluated]
    assert kinds == sorted(kinds, key=["layer", "block", "unit"].index) and kinds[-1] == "unit"


def test_settings_precedence_is_command_line_then_file_then_preset_then_defaults(tmp_path):
    from axformer.pipeline.config import PipelineConfig

    file = tmp_path / "run.yaml"
    file.write_text(yaml.safe_dump({"search": {"groups": 6, "tolerance": {"max_drop": 2.0}}}))
    # the preset says speed within 1 point with recovery; the file changes the tolerance; the CLI the groups
    cfg = PipelineConfig.build(file, "fastest-within-1", {"model": "x", "search": {"groups": 3}})
    assert cfg.search.groups == 3  # command line over file
    assert cfg.search.tolerance.max_drop == 2.0  # file over preset
    assert cfg.search.goal == "speed" and cfg.search.recovery.mode == "distill"  # preset over defaults
    assert cfg.search.axformer.slack == 1.1 and cfg.search.batch_size == 64  # defaults where nobody says
    assert PipelineConfig.build(file, "fastest-within-1", {"model": "x"}).search.groups == 6


def test_later_stages_refuse_other_data_than_the_model_was_split_on(monkeypatch, capsys, tuned_tiny, tmp_path):
    """README: the split's indices and a fingerprint of the training data are saved, and later stages refuse
    different data."""
    model, _, _ = tuned_tiny
    train, dev = write_sentiment_files(tmp_path / "other", n_train=300, n_dev=20)
    out = tmp_path / "eval"
    code, _, err = run_cli(
        monkeypatch, capsys, "evaluate", model, "-o", out, "--train", train, "--dev", dev, "--text-column", "text"
    )
    assert_clean_failure(code, err, out, r"is not the data the model's held-out split was made from")


def test_evaluate_scores_an_artifact_exactly_as_its_model(tuned_tiny, tmp_path):
    from axformer.evaluation import evaluate
    from axformer.export.artifact import ExportConfig, export_model

    model, data, _ = tuned_tiny
    export_model(model, tmp_path / "onnx", ExportConfig(precision="fp32", device="cpu"), data)
    torch_ev = evaluate(model, data, device="cpu", output=tmp_path / "e1")
    onnx_ev = evaluate(tmp_path / "onnx", data, device="cpu", output=tmp_path / "e2")
    assert set(onnx_ev.splits) == set(torch_ev.splits) == {"heldout", "dev"}
    for name, split in torch_ev.splits.items():
        assert onnx_ev.splits[name].num_examples == split.num_examples
        assert onnx_ev.splits[name].metrics == pytest.approx(split.metrics, abs=1e-9)
        assert onnx_ev.splits[name].loss == pytest.approx(split.loss, abs=1e-5)


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_artifact_has_optimum_input_and_output_names(tmp_path, arch):
    """README: Optimum's layout, so ORTModelForSequenceClassification's inputs and output are where it looks."""
    import onnx

    from axformer.export.onnx_export import export_onnx
    from axformer.models.loading import load_model

    model = load_model(make_tiny_model_dir(tmp_path / "m", arch))
    export_onnx(model, tmp_path / "model.onnx")
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    inputs = [i.name for i in graph.input]
    assert inputs[:2] == ["input_ids", "attention_mask"] and [o.name for o in graph.output] == ["logits"]
    assert ("token_type_ids" in inputs) == (arch == "bert")
    for i in graph.input:  # dynamic batch and sequence axes
        dims = i.type.tensor_type.shape.dim
        assert len(dims) == 2 and all(d.dim_param for d in dims)


def test_training_recipe_decay_warmup_clipping_and_length_grouped_batches(tmp_path, monkeypatch):
    """README: AdamW without decay on biases and LayerNorms, linear warmup and decay, gradient clipping,
    length-grouped batches padded to their longest member."""
    import axformer.training.loop as loop
    from axformer.data.batching import grouped_batches
    from axformer.models.loading import load_model
    from axformer.tasks.sources import load_custom
    from axformer.training.finetune import FinetuneConfig, finetune

    model_dir = make_tiny_model_dir(tmp_path / "base", "bert", labels=["neg", "pos"])
    net = load_model(model_dir)
    cfg = FinetuneConfig(weight_decay=0.1)
    optimizer = loop._optimizer([net], cfg)
    decayed = {id(p) for p in optimizer.param_groups[0]["params"]}
    assert optimizer.param_groups[0]["weight_decay"] == 0.1 and optimizer.param_groups[1]["weight_decay"] == 0.0
    for name, p in net.named_parameters():
        no_decay = name.endswith("bias") or "LayerNorm" in name
        assert (id(p) not in decayed) == no_decay, name
    # warmup and clipping, as the loop calls them
    schedules, clips = [], []
    real_schedule, real_clip = loop.get_linear_schedule_with_warmup, torch.nn.utils.clip_grad_norm_

    def schedule(optimizer, warmup, total):
        schedules.append((warmup, total))
        return real_schedule(optimizer, warmup, total)

    def clip(params, max_norm, *a, **k):
        clips.append(max_norm)
        return real_clip(params, max_norm, *a, **k)

    monkeypatch.setattr(loop, "get_linear_schedule_with_warmup", schedule)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    train, dev = write_sentiment_files(tmp_path / "data", n_train=120, n_dev=10)
    data = load_custom(train, dev, ("text",), "label", "classification", None, "toy")
    run = FinetuneConfig(epochs=1, batch_size=16, warmup_ratio=0.25, max_grad_norm=0.5, device="cpu")
    result = finetune(model_dir, data, tmp_path / "tuned", run)
    assert schedules == [(int(0.25 * result.steps), result.steps)]
    assert clips == [0.5] * result.steps
    # batches group similar lengths: much less padding than random batches of the same size
    lengths = np.random.default_rng(0).integers(3, 60, size=512)
    batches = grouped_batches(lengths, 16, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(512))

    def padding(bs):
        return sum(int(lengths[b].max()) * len(b) - int(lengths[b].sum()) for b in bs)

    random_batches = np.array_split(np.random.default_rng(2).permutation(512), 32)
    assert padding(batches) < 0.25 * padding(random_batches)


@pytest.mark.parametrize("arch", ["xlm-roberta", "camembert"])
def test_xlmr_and_camembert_prune_reload_and_export(tmp_path, arch):
    """README lists XLM-R and CamemBERT among the supported families: masked == pruned, reload, ONNX parity."""
    from transformers import AutoModelForSequenceClassification, CamembertConfig, XLMRobertaConfig

    from axformer.export.onnx_export import export_onnx
    from axformer.models.loading import load_model, save_model
    from axformer.runtime.backends import OnnxModel
    from axformer.surgery.masks import SoftMask
    from axformer.surgery.prune import prune
    from tests.conftest import tiny_config, tiny_tokenizer

    base = tiny_config("roberta").to_dict()
    for key in ("model_type", "architectures", "transformers_version"):
        base.pop(key, None)
    config = (XLMRobertaConfig if arch == "xlm-roberta" else CamembertConfig)(**base)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    ids = torch.randint(5, config.vocab_size, (2, 9))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    removed = ["L0.attn.head1", "L1.ffn.group0of3", "L2"]
    with torch.no_grad(), SoftMask(model) as mask:
        mask.set(removed)
        masked = model(**batch).logits
    prune(model, removed)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, masked, rtol=0, atol=1e-5)
    save_model(model, tiny_tokenizer(tmp_path, ["input_ids", "attention_mask"]), tmp_path / "pruned")
    again = load_model(tmp_path / "pruned").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, masked, rtol=0, atol=1e-5)
    export_onnx(again, tmp_path / "model.onnx")
    onnx_logits = OnnxModel(tmp_path / "model.onnx", device="cpu")(**batch, token_type_ids=torch.zeros_like(ids))
    np.testing.assert_allclose(np.asarray(onnx_logits.logits if hasattr(onnx_logits, "logits") else onnx_logits),
                               masked.numpy(), atol=1e-4)  # fmt: skip
