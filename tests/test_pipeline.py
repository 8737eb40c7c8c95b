"""The end-to-end pipeline: stages, skipping and resuming, config files vs the command line, the report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from axformer.errors import AxformerError
from axformer.pipeline.config import PRESETS, PipelineConfig
from axformer.pipeline.run import needs_finetuning, run_pipeline

LIGHT = {
    "analyze": {"scorers": ["gradient"]},
    "search": {
        "goal": "speed",
        "tolerance": {"max_drop": 3.0, "max_loss_increase": 40.0},
        "groups": 4,
        "latency_examples": 8,
        "attention": {"modes": []},
    },
    "export": {"precision": "fp32", "max_drop": 5.0},
    "benchmark": {
        "rounds": 1,
        "lengths": [16],
        "latency_examples": 8,
        "throughput_examples": 16,
        "fixed_requests": 2,
        "memory": False,
        "instances": 0,
    },
}


def _cfg(model, out, **extra):
    import copy

    over = copy.deepcopy(LIGHT)
    over.update({"model": str(model), "output": str(out), "device": None} | extra)
    over.pop("device")
    for section in ("analyze", "search", "export"):
        over[section]["device"] = "cpu"
    return PipelineConfig.build(overrides=over)


def test_pipeline_runs_every_stage_then_skips_them(tuned_tiny, tmp_path):
    model, _, _ = tuned_tiny
    out = tmp_path / "run"
    result = run_pipeline(_cfg(model, out), progress=lambda m: None)
    assert result.ran == ["analyze", "search", "export", "benchmark", "report"]
    for d, f in (
        ("2-analysis", "significance.json"),
        ("3-search", "report.json"),
        ("4-export", "model.onnx"),
        ("5-benchmark", "benchmark.json"),
    ):
        assert (out / d / f).exists()
    page = (out / "report.html").read_text()
    assert "Original vs optimized" in page and "data:image/png;base64," in page and "Reproduce" in page
    summary = json.loads((out / "summary.json").read_text())
    assert summary["latency_speedup"] > 0 and summary["artifact"].endswith("4-export")
    # against ONNX Runtime int8 of the unpruned model too, with default threads, one thread, each at its faster count
    for key in ("", "_one_thread", "_faster_threads"):
        assert summary[f"speedup_vs_ort_int8{key}"] > 0
    assert "Against ONNX Runtime int8 of the unpruned model" in (out / "report.md").read_text()
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert (
        resolved["search"]["goal"] == "speed" and resolved["search"]["axformer"]["slack"] == 1.1
    )  # every field, defaults included
    again = run_pipeline(_cfg(model, out), progress=lambda m: None)
    assert again.ran == ["report"] and again.skipped == ["analyze", "search", "export", "benchmark"]
    # the same model by another path (a link, another working directory) is the same input; another model is not
    link = tmp_path / "same-model"
    link.symlink_to(model, target_is_directory=True)
    assert run_pipeline(_cfg(link, out), progress=lambda m: None).ran == ["report"]
    with pytest.raises(AxformerError, match=r"other inputs \(model differ\)"):
        run_pipeline(_cfg(shutil.copytree(model, tmp_path / "other-model"), out), progress=lambda m: None)
    # redo from export: the search is kept, export and benchmark run again
    redo = run_pipeline(_cfg(model, out), from_stage="export", progress=lambda m: None)
    assert redo.ran == ["export", "benchmark", "report"] and "search" in redo.skipped
    # a changed search config into the same directory is refused, not mixed with the old results
    with pytest.raises(AxformerError, match="--from-stage search"):
        run_pipeline(
            _cfg(model, out, search={**LIGHT["search"], "max_drop": 1.0, "device": "cpu"}), progress=lambda m: None
        )


def test_failed_stage_resumes_without_redoing_finished_ones(tuned_tiny, tmp_path, monkeypatch):
    import axformer.export.artifact as artifact

    model, _, _ = tuned_tiny
    out = tmp_path / "run"

    def broken(*a, **k):
        raise KeyboardInterrupt

    real = artifact.export_model
    monkeypatch.setattr(artifact, "export_model", broken)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(_cfg(model, out), progress=lambda m: None)
    assert (out / "3-search" / "report.json").exists() and not (out / "4-export").exists()
    # a stage that fails with an error still leaves the report of what was made, and why it stopped
    import axformer.benchmark.run as bench

    def failing(*a, **k):
        raise AxformerError("the benchmark could not start (scripted)")

    monkeypatch.setattr(artifact, "export_model", real)
    monkeypatch.setattr(bench, "benchmark", failing)
    with pytest.raises(AxformerError, match="scripted"):
        run_pipeline(_cfg(model, out), progress=lambda m: None)
    page = (out / "report.md").read_text()
    assert "The run stopped early" in page and "scripted" in page and (out / "4-export" / "model.onnx").exists()
    assert "The promise, on examples no decision used" in page and "Certificate (passed)" in page
    assert json.loads((out / "summary.json").read_text())["stopped"].startswith("the benchmark could not start")
    monkeypatch.undo()
    result = run_pipeline(_cfg(model, out), progress=lambda m: None)
    assert result.skipped == ["analyze", "search", "export"] and result.ran == ["benchmark", "report"]


def test_config_file_and_command_line_give_the_same_run(tuned_tiny, tmp_path):
    """The size goal: its cost model counts parameters. (The speed goal calibrates latency in each run, and two
    measurements on a shared machine can rank candidates differently, so two speed runs need not agree.)"""
    model, _, _ = tuned_tiny
    flags = [
        "--goal",
        "size",
        "--max-drop",
        "3",
        "--max-loss-increase",
        "40",
        "--groups",
        "4",
        "--latency-examples",
        "8",
        "--scorer",
        "gradient",
        "--attention-layers",
        "none",
        "--device",
        "cpu",
        "--until-stage",
        "search",
    ]
    cli = subprocess.run(
        [sys.executable, "-m", "axformer", "optimize", str(model), *flags, "-o", str(tmp_path / "cli")],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 0, cli.stderr
    file = tmp_path / "run.yaml"
    file.write_text(
        yaml.safe_dump(
            {
                "model": str(model),
                "output": str(tmp_path / "file"),
                "analyze": {"scorers": ["gradient"], "device": "cpu"},
                "search": {  # the flat layout of configs written before the search's sub-configs: still read
                    "goal": "size",
                    "max_drop": 3.0,
                    "max_loss_increase": 40.0,
                    "groups": 4,
                    "latency_examples": 8,
                    "attention_layers": [],
                    "device": "cpu",
                },
                "export": {"device": "cpu"},
                "finetune": {"device": "cpu"},
            }
        )
    )
    from_file = subprocess.run(
        [sys.executable, "-m", "axformer", "optimize", "--config", str(file), "--until-stage", "search"],
        capture_output=True,
        text=True,
    )
    assert from_file.returncode == 0, from_file.stderr
    a = yaml.safe_load((tmp_path / "cli" / "config.yaml").read_text())
    b = yaml.safe_load((tmp_path / "file" / "config.yaml").read_text())
    assert {k: v for k, v in a.items() if k != "output"} == {k: v for k, v in b.items() if k != "output"}
    ra = json.loads((tmp_path / "cli" / "3-search" / "report.json").read_text())
    rb = json.loads((tmp_path / "file" / "3-search" / "report.json").read_text())
    assert ra["removed"] and ra["removed"] == rb["removed"] and ra["attention"] == rb["attention"]
    ha, hb = ra["results"]["optimized"]["heldout"], rb["results"]["optimized"]["heldout"]
    assert ha["metrics"] == hb["metrics"] and ha["loss"] == pytest.approx(
        hb["loss"], rel=1e-5
    )  # float sums differ in the last bits between processes
    # the resolved config reproduces the run: nothing is redone
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "axformer",
            "optimize",
            "--config",
            str(tmp_path / "file" / "config.yaml"),
            "--until-stage",
            "search",
        ],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0 and "done already" in again.stdout


def test_bad_config_is_one_line_exit_2(tmp_path, tuned_tiny):
    model, _, _ = tuned_tiny
    bad = tmp_path / "bad.yaml"
    bad.write_text("search:\n  goal: speed\n  maxdrop: 1\n")
    cases = [
        ["optimize", str(model), "--config", str(bad), "-o", str(tmp_path / "o1")],
        ["optimize", str(model), "--config", str(tmp_path / "missing.yaml"), "-o", str(tmp_path / "o2")],
        ["optimize", str(model), "--preset", "fastest", "-o", str(tmp_path / "o3")],
        ["optimize", str(model), "--until-stage", "deploy", "-o", str(tmp_path / "o4")],
    ]
    for args in cases:
        p = subprocess.run([sys.executable, "-m", "axformer", *args], capture_output=True, text=True)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
    assert (
        "maxdrop"
        in subprocess.run([sys.executable, "-m", "axformer", *cases[0]], capture_output=True, text=True).stderr
    )


def test_presets_resolve_and_pretrained_checkpoints_are_fine_tuned_first(tmp_path, tiny_bert):
    for name, preset in PRESETS.items():
        cfg = PipelineConfig.build(preset=name, overrides={"model": "x"})
        assert cfg.preset == name
        for section, values in preset.items():  # every value the preset sets survives resolution
            if isinstance(values, dict):
                assert _subset(values, cfg.to_dict()[section]), (name, section)
            else:
                assert getattr(cfg, section) == values
    # a relative tolerance given alone is the only tolerance; the absolute default applies when nothing is given
    relative = {"goal": "speed", "tolerance": {"max_rel_drop": 2.0}}
    assert PipelineConfig.build(overrides={"model": "x", "search": relative}).search.tolerance.max_drop is None
    speed = PipelineConfig.build(overrides={"model": "x", "search": {"goal": "speed"}})
    assert speed.search.tolerance.max_drop == 1.0
    from transformers import AutoModel

    from tests.conftest import tiny_config

    base = tmp_path / "pretrained"
    AutoModel.from_config(tiny_config("bert")).save_pretrained(base)
    assert needs_finetuning(str(base), None) is True
    assert needs_finetuning(str(tiny_bert), None) is False  # a sequence-classification checkpoint is used as it is


def test_auto_strategy_sizes_the_recipe_by_the_training_set(tuned_tiny, tmp_path):
    """fastest-within-1's ``strategy: auto``: FastFormers' recipe, sized from the model by the training set (from
    AUTO_FEWER_LAYERS_EXAMPLES: five sixths of the layers, every head, half the FFN; below: every layer, two thirds
    of the heads, half the FFN, four perturbed copies per text) unless the user sized it; the search for a model
    that records no held-out split. The written config records what ran, so a re-run of the same command
    resumes."""
    from transformers import BertConfig, DistilBertConfig, PretrainedConfig

    from axformer.pipeline.config import AUTO_FEWER_LAYERS_EXAMPLES
    from axformer.pipeline.run import run_pipeline

    def resolved(examples, model_config, recorded_split=True, **search):
        cfg = PipelineConfig.build(preset="fastest-within-1", overrides={"model": "x", "search": search})
        assert cfg.search.strategy == "auto"
        cfg.search.resolve_strategy(examples, model_config, recorded_split=recorded_split)
        return cfg.search

    bert = BertConfig(num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    small = resolved(AUTO_FEWER_LAYERS_EXAMPLES - 1, bert)
    assert (small.strategy, small.student_layers, small.heads, small.ffn) == ("fastformers", None, 8, 768)
    assert small.recovery.augment == 4 and small.recovery.epochs == 3.0 and small.time_budget == 55.0
    small.validate()
    assert small.recipe().distill.augment == 4
    # half the layers, every head and neuron, tried first (at STS-B's measured settings); not when sizes are given
    from axformer.distill.ladder import StudentRung

    tried = StudentRung(layers="3", learning_rate=3e-4, hard_weight=1.0)
    assert small.try_students == [tried] and small.recipe().trials == [tried]
    unaugmented = resolved(AUTO_FEWER_LAYERS_EXAMPLES - 1, bert, recovery={"augment": 0})  # --recover-augment 0
    assert unaugmented.recovery.augment == 0 and unaugmented.recipe().distill.augment == 0
    large = resolved(AUTO_FEWER_LAYERS_EXAMPLES, bert)
    assert (large.strategy, large.student_layers, large.heads, large.ffn) == ("fastformers", "5", 12, 768)
    assert large.recovery.epochs == 3.0 and large.time_budget == 55.0 and large.recovery.augment == 0
    large.validate()
    assert large.try_students == [tried]
    distil = DistilBertConfig(n_layers=6, n_heads=12, hidden_dim=3072)
    assert (resolved(10**6, distil).student_layers, resolved(10**6, distil).ffn) == ("5", 1536)
    assert (resolved(100, distil).heads, resolved(100, distil).ffn) == (8, 1536)
    base = BertConfig(num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    assert (resolved(10**6, base).student_layers, resolved(10**6, base).heads) == ("10", 12)
    sized = resolved(10**6, bert, heads=6, time_budget=20.0)  # what the user set stays
    assert (sized.student_layers, sized.heads, sized.ffn, sized.time_budget) == (None, 6, None, 20.0)
    assert sized.try_students is None and sized.recipe().trials == []
    assert resolved(10**6, bert, try_students=[]).try_students == []  # --try-student none
    unrecorded = resolved(10**6, bert, recorded_split=False)
    assert (unrecorded.strategy, unrecorded.student_layers, unrecorded.recovery.augment) == ("search", None, None)
    with pytest.raises(AxformerError, match="names no layer, head or FFN count"):
        resolved(10**6, PretrainedConfig())
    # in a run: a small task axformer fine-tuned resolves to the recipe for its size, and config.yaml says so
    model, data, _ = tuned_tiny
    cfg = PipelineConfig.build(
        preset="fastest-within-1", overrides={"model": str(model), "output": str(tmp_path / "out")}
    )
    run_pipeline(cfg, until_stage="finetune", progress=lambda _: None)
    written = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["search"]
    assert (written["strategy"], written["heads"], written["recovery"]["augment"]) == ("fastformers", 3, 4)  # 4 heads


def test_quantization_aware_rounds_the_last_distillation_as_the_int8_export_will():
    """fastest-within-1 exports int8: with ``--quantization-aware`` the recipe's last distillation and the search's
    recovery train through dynamic int8's rounding; the size preset's int4 artifact keeps its int4 grid. Unset,
    only the recipe's last distillation is int8-aware; ``--no-quantization-aware`` rounds nothing."""
    from axformer.search.recovery import rounding

    def search(preset, **recovery):
        return PipelineConfig.build(
            preset=preset, overrides={"model": "x", "search": {"recovery": recovery, "student_layers": "2"}}
        ).search

    aware = search("fastest-within-1", quantization_aware=True)
    assert rounding(aware) == {"qat_int8": True} and aware.recipe().qat_int8 is True
    unset = search("fastest-within-1")
    assert rounding(unset) == {} and unset.recipe().qat_int8 is True
    plain = search("fastest-within-1", quantization_aware=False)
    assert rounding(plain) == {} and plain.recipe().qat_int8 is False
    assert search("smallest-within-1").recipe().qat_int8 is False  # an int4 artifact: not int8's rounding
    size = rounding(search("smallest-within-1", quantization_aware=True))
    assert "qat_int8" not in size and size["qat_block_size"] == 64


def _subset(small, big) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and _subset(v, big[k]) for k, v in small.items())
    return small == big


def test_old_flat_config_files_still_load_into_the_typed_sections(tmp_path):
    """A config.yaml written before the search's sub-configs (flat keys, hard_attention, refinetune*) reads into
    the same typed config as its new spelling."""
    old = {
        "model": "x",
        "search": {
            "goal": "speed",
            "max_drop": 2.0,
            "max_loss_increase": 10.0,
            "guard": "main",
            "hard_attention": False,
            "k": 16,
            "slack": 1.2,
            "fraction": 0.6,
            "prune_layers": [3, 2],
            "refinetune": "distill",
            "refinetune_epochs": 2.0,
            "refinetune_lr": 3e-4,
            "refinetune_max_train_examples": 500,
            "extra": {},
        },
    }
    new = {
        "model": "x",
        "search": {
            "goal": "speed",
            "tolerance": {"max_drop": 2.0, "max_loss_increase": 10.0, "guard": "main"},
            "attention": {"modes": [], "k": 16},
            "axformer": {"slack": 1.2, "fraction": 0.6, "prune_layers": [3, 2]},
            "recovery": {"mode": "distill", "epochs": 2.0, "learning_rate": 3e-4, "max_train_examples": 500},
        },
    }
    file = tmp_path / "config.yaml"
    file.write_text(yaml.safe_dump(old))
    from_old = PipelineConfig.build(file)
    assert from_old.to_dict() == PipelineConfig.build(overrides=new).to_dict()
    assert from_old.search.recovery.mode == "distill" and from_old.search.attention.modes == []
    # and the resolved config it writes reads back equal
    dumped = tmp_path / "resolved.yaml"
    from_old.dump(dumped)
    assert PipelineConfig.build(dumped).to_dict() == from_old.to_dict()


def test_reports_name_the_bundled_model_by_its_name(minilm_dir, tmp_path):
    """The bundled checkpoint's directory is just 'model': a report titled 'model on BBC News' tells a reader
    nothing.
    """
    from axformer.demo import model_display_name

    assert model_display_name(str(minilm_dir)) == "all-MiniLM-L6-v2 (bundled)"
    assert model_display_name(str(tmp_path / "runs" / "sst2")) == "sst2"


def test_the_report_names_training_that_ran_in_mixed_precision(tmp_path):
    """A model trained in bf16 says so in the report's first section; an fp32 history (or none) adds nothing."""
    import json

    from axformer.pipeline.report import _training_precision

    (tmp_path / "axformer.json").write_text(
        json.dumps(
            {
                "history": [
                    {"stage": "finetune", "precision": "bf16"},
                    {"stage": "optimize"},
                    {"stage": "distill", "precision": "fp32"},
                ]
            }
        )  # fmt: skip
    )
    assert "(finetune in bf16; weights kept in fp32)" in _training_precision(tmp_path)
    (tmp_path / "axformer.json").write_text(json.dumps({"history": [{"stage": "distill", "precision": "fp32"}]}))
    assert _training_precision(tmp_path) == "" and _training_precision(tmp_path / "missing") == ""
