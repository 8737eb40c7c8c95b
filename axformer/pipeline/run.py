"""``axformer optimize``: from a model to a deployable, benchmarked artifact and a report, in one command.

Stages, each writing its own directory under the output (and skipped when
that directory is complete, so running the same command again resumes):

    finetune   1-finetuned/   only for a checkpoint not yet fine-tuned for the task
    analyze    2-analysis/    significance scores and heatmaps on the held-out split
    search     3-search/      the optimized PyTorch model, search_log.jsonl, report
    export     4-export/      ONNX artifact (fused; fp32/int8/... whichever is asked, auto: fastest here)
    benchmark  5-benchmark/   the artifact and the optimized model against the baselines, one run
    report     report.html, report.md: everything above on one page

``from_stage`` redoes a stage and everything after it; ``until_stage`` stops
after a stage. The resolved config is written to ``config.yaml``; a later run
into the same directory with a config that changes an already finished stage
is refused (use ``from_stage``) rather than mixing results of two configs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from axformer.errors import AxformerError
from axformer.models.labelled_texts import TEXTS_TASK
from axformer.models.loading import is_local
from axformer.models.record import require_model_dir
from axformer.pipeline.config import DIRS, MARKERS, STAGES, PipelineConfig
from axformer.pipeline.report import write_report
from axformer.tasks.selection import TaskSelection
from axformer.utils.io import read_json, refuse_overwriting_inputs, write_json
from axformer.utils.stages import StageRunner

INPUT_KEYS = ("model", *TaskSelection.option_names())
PATH_KEYS = ("model", "data_dir", "train", "dev")


@dataclass
class PipelineResult:
    output: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


def default_output(model: str) -> Path:
    base = Path(model)
    return base.with_name(base.name + "-axformer")


def _texts_data(cfg):
    """``--task none``: an embedding model compressed for fidelity on the user's unlabelled texts."""
    from axformer.models.labelled_texts import texts_task

    if not cfg.embedding or cfg.search.calibration_texts is None:
        raise AxformerError(
            "--task none compresses an embedding model on unlabelled texts; expected --embedding and "
            "--calibration-texts FILE"
        )
    columns = tuple(cfg.search.calibration_columns or ()) or None
    return texts_task(cfg.search.calibration_texts, cfg.model, columns, device=cfg.search.device)


def needs_finetuning(model: str, data) -> bool:
    """A checkpoint with no task head (a pre-trained model) is fine-tuned first; one axformer or the user fine-tuned is
    not, and neither is an embedding model (``--embedding``: ``axformer finetune --embedding`` trains one on
    purpose).
    """
    from transformers import AutoConfig

    from axformer.models.loading import has_task_head, is_local
    from axformer.models.record import ModelRecord

    record = ModelRecord.load(model) if is_local(model) else ModelRecord()
    if record.task is not None:
        if data is not None and record.task.get("name") != data.spec.name:
            raise AxformerError(
                f"model {model} was fine-tuned on {record.task.get('name')}, not {data.spec.name}; "
                f"give its pre-trained checkpoint to fine-tune for {data.spec.name}"
            )
        return False
    if data is not None and data.spec.is_embedding:  # an embedding model is compressed as it is: it has no head
        return False
    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise AxformerError(
            f"cannot load the config of {model!r} ({str(exc).splitlines()[0]}); expected a local "
            "model directory or a reachable hub id"
        ) from None
    return not has_task_head(config)


def _same_input(key: str, old, new) -> bool:
    """Paths are the same input when they name the same file (``../shared/data`` from one directory, an absolute path
    from another).
    """
    if old == new:
        return True
    if key in PATH_KEYS and isinstance(old, str) and isinstance(new, str) and Path(old).exists():
        return os.path.realpath(old) == os.path.realpath(new)
    return False


def _check_consistent(out: Path, cfg: PipelineConfig, from_stage: str | None) -> None:
    """Refuse to mix: a finished stage must have been produced by the same inputs and section of the config."""
    path = out / "config.yaml"
    if not path.exists():
        return
    import yaml

    old = yaml.safe_load(path.read_text()) or {}
    # a config written by an earlier axformer, in today's layout (flat search keys moved, defaults filled); one
    # that does not convert is compared as written: any difference refuses the resume, the safe answer
    with contextlib.suppress(AxformerError):
        old = PipelineConfig.from_dict(old).to_dict()
    new = cfg.to_dict()
    first_redo = STAGES.index(from_stage) if from_stage else len(STAGES)
    changed = [k for k in INPUT_KEYS if not _same_input(k, old.get(k), new.get(k))]
    if changed and first_redo > 0:
        raise AxformerError(
            f"output {out} was produced from other inputs ({', '.join(changed)} differ); choose "
            "another --output or pass --from-stage finetune"
        )
    for stage in STAGES[:-1]:
        if STAGES.index(stage) >= first_redo:
            break
        if (out / DIRS[stage]).exists() and old.get(stage) != new.get(stage):
            raise AxformerError(
                f"output {out} holds a {stage} stage made with another '{stage}' config; pass "
                f"--from-stage {stage} to redo it (and what follows) or choose another --output"
            )


def run_pipeline(
    cfg: PipelineConfig,
    from_stage: str | None = None,
    until_stage: str | None = None,
    progress: Callable[[str], None] = print,
) -> PipelineResult:
    for name, value in (("--from-stage", from_stage), ("--until-stage", until_stage)):
        if value is not None and value not in STAGES:
            raise AxformerError(f"{name} {value!r}; expected one of {', '.join(STAGES)}")
    if cfg.model is None:
        raise AxformerError("no model given; expected a model directory (or --demo, or 'model:' in the config file)")
    if cfg.preset == "demo" and cfg.model == "bundled":
        from axformer.demo import bundled_model_path

        cfg.model = str(bundled_model_path())
    out = Path(cfg.output) if cfg.output else default_output(cfg.model)
    cfg.output = str(out)
    if is_local(cfg.model):
        require_model_dir(cfg.model)
    refuse_overwriting_inputs(out, [cfg.model, cfg.train, cfg.dev, cfg.data_dir])
    data = _texts_data(cfg) if (cfg.task or "").lower() == TEXTS_TASK else cfg.selection().load_if_given()
    if data is not None:  # before hours of fine-tuning, not after
        data.spec.require_stage("optimize")
    finetune_needed = needs_finetuning(cfg.model, data)
    if finetune_needed and data is None:
        raise AxformerError(
            f"model {cfg.model} is not fine-tuned for a task; pass --task (and --data-dir) to fine-tune it first"
        )
    if cfg.search.strategy == "auto":  # before the config is compared and written: it records the resolved one
        _resolve_strategy(cfg, data, finetune_needed)
    if cfg.search.recovery.hard_weight:  # a gold-label loss the recovery could not apply is refused now
        from axformer.models.record import task_for

        spec = (data or task_for(cfg.model, None, cfg.data_dir)).spec
        cfg.search.recovery.check_for(spec, cfg.search.calibration_texts is not None)
    if cfg.search.strategy == "fastformers" and not finetune_needed:
        from axformer.distill.recipe import require_recorded_split

        require_recorded_split(cfg.model, data)
    _check_consistent(out, cfg, from_stage)
    if cfg.search.decision_data is not None:  # so is a decision file that is malformed or shares dev examples
        from axformer.evaluation.context import read_decision_data
        from axformer.models.record import task_for

        read_decision_data(cfg.search.decision_data, data or task_for(cfg.model, None, cfg.data_dir))
    if cfg.search.calibration_texts is not None:  # a malformed file is refused before anything is written
        from axformer.models.record import task_for
        from axformer.tasks.calibration import load_calibration_texts

        spec = (data or task_for(cfg.model, None, cfg.data_dir)).spec
        columns = tuple(cfg.search.calibration_columns or ()) or None
        load_calibration_texts(cfg.search.calibration_texts, spec.input_fields, columns)
    out.mkdir(parents=True, exist_ok=True)
    if from_stage is not None:
        for stage in STAGES[STAGES.index(from_stage) : -1]:
            shutil.rmtree(out / DIRS[stage], ignore_errors=True)
    cfg.dump(out / "config.yaml")
    last = STAGES.index(until_stage) if until_stage else len(STAGES) - 1
    runner = StageRunner(out, progress)
    result = PipelineResult(out, ran=runner.ran, skipped=runner.skipped)

    def stage(name: str, fn, wanted: bool = True) -> Path | None:
        path = out / DIRS[name]
        finished = (path / MARKERS[name]).exists()
        if STAGES.index(name) > last or not wanted:
            return path if finished else None
        return runner.run(name, path, fn, done=lambda p: (p / MARKERS[name]).exists())

    model = cfg.model
    if finetune_needed:
        from axformer.training.finetune import finetune

        ft = stage("finetune", lambda p: finetune(cfg.model, data, p, cfg.stage_config("finetune")))
        if ft is None:
            return result
        model = str(ft)
    analysis = stage("analyze", lambda p: _analyze(model, data, cfg, p), wanted=bool(cfg.analyze.scorers))
    searched = stage("search", lambda p: _search(model, data, cfg, p))
    if searched is None:
        return result
    try:
        exported = stage("export", lambda p: _export(searched, model, data, cfg, analysis, p))
        if exported is not None:
            stage("benchmark", lambda p: _benchmark(searched, exported, model, data, cfg, p))
    except AxformerError as exc:  # what was made is still reported, with why the run stopped
        if last == len(STAGES) - 1:
            write_report(out, cfg, runner.times, model, finetune_needed, stopped=str(exc))
        raise
    if last == len(STAGES) - 1:
        result.summary = write_report(out, cfg, runner.times, model, finetune_needed)
        result.ran.append("report")
    return result


def _resolve_strategy(cfg: PipelineConfig, data, finetune_needed: bool) -> None:
    from transformers import AutoConfig

    from axformer.distill.recipe import has_recorded_split
    from axformer.models.record import task_for

    data = data or task_for(cfg.model, None, cfg.data_dir)
    try:
        model_config = AutoConfig.from_pretrained(cfg.model)
    except (OSError, ValueError) as exc:
        raise AxformerError(f"--strategy auto: cannot read the configuration of {cfg.model} ({exc})") from None
    # a model axformer fine-tunes in this run will record its split
    recorded = finetune_needed or has_recorded_split(cfg.model)
    cfg.search.resolve_strategy(
        len(data.train), model_config, embedding=data.spec.is_embedding, recorded_split=recorded
    )
    cfg.search.validate()


def _analyze(model: str, data, cfg: PipelineConfig, path: Path) -> None:
    from axformer.analysis.analyze import analyze

    config = cfg.stage_config("analyze")
    if cfg.search.strategy == "search":  # the certificate's examples are analysed by nobody
        config.confirm_fraction = cfg.search.certificate.fraction
        config.decision_data = cfg.search.decision_data
    analyze(model, data, cfg.data_dir, path, config)


def recipe_budget(cfg: PipelineConfig, data, path: Path):
    """The recipe's share of ``--time-budget``: what the stages before it left (their recorded times), and what
    the export and the benchmark will still do after it (``Downstream``), counted from the benchmark's config."""
    from axformer.distill.budget import Downstream

    times = path.parent / "times.json"
    spent = sum(v for k, v in read_json(times).items() if k != "search") if times.exists() else 0.0
    left = cfg.search.time_budget - spent / 60
    if left <= 0:
        raise AxformerError(f"--time-budget {cfg.search.time_budget:g} min was spent before the search started")
    b = cfg.benchmark
    dev = sum(len(s) for s in data.dev.values())
    rows = 6  # original padded and dynamic, ONNX Runtime fp32 and int8, the searched model, the artifact
    onnx_rows = 3
    passes_per_round = b.rounds + b.warmup
    fixed_rounds = max(2, b.rounds // 2) + b.warmup
    instances = b.worker_count
    pooled = rows - 1 if instances > 1 else 0  # every row but the padded one runs a multi-instance pool
    heldout = cfg.export.max_examples or 1000
    return left, Downstream(
        passes=rows * (dev + passes_per_round * b.throughput_examples)
        + pooled * max(2, b.rounds // 2) * b.throughput_examples
        + 3 * heldout,
        requests=(rows - 1) * passes_per_round * b.latency_examples
        + (rows - 1) * passes_per_round * (min(b.one_thread_requests, b.latency_examples) if b.threads != 1 else 0)
        + onnx_rows * b.breakdown_requests * (2 * b.rounds + 1),  # the session choice, then the breakdown
        padded_requests=passes_per_round * b.latency_examples,
        long_passes=dict.fromkeys(b.lengths, rows * fixed_rounds * (b.fixed_requests + b.fixed_batch)),
        exports=3,  # the artifact, ONNX Runtime fp32 and int8 of the original
        processes=(rows if b.memory else 0) + pooled * instances,
    )


def _search(model: str, data, cfg: PipelineConfig, path: Path) -> None:
    if cfg.search.strategy == "fastformers":
        from axformer.distill.recipe import fastformers_recipe

        recipe = cfg.search.recipe()
        recipe.confirm_fraction = cfg.search.certificate.fraction  # the export certifies on the rest
        recipe.decision_data = cfg.search.decision_data
        if recipe.time_budget is not None:
            from axformer.models.record import task_for

            data = task_for(model, data, cfg.data_dir)  # without --task: the model's own (the plan counts examples)
            recipe.time_budget, recipe.downstream = recipe_budget(cfg, data, path)
        if recipe.trials:  # a smaller student is judged by the export's own check, on the examples it certifies on
            from axformer.distill.recipe import certificate_of
            from axformer.export.artifact import export_model

            analysis = path.parent / DIRS["analyze"]
            config = export_config(cfg, model, analysis if analysis.exists() else None)
            recipe.trial_max_drop = config.max_drop

            def certify(student: Path, work: Path) -> dict:
                return certificate_of(export_model(student, work, config, data, cfg.data_dir), config.max_drop)

        else:
            certify = None
        if not (path / "recipe.json").exists():  # the recipe resumes from its own stage directories
            fastformers_recipe(model, path, recipe, data, cfg.data_dir, certify=certify)
        write_json(
            path / "report.json",
            {
                "strategy": "fastformers",
                "task": read_json(path / "recipe.json")["task"],
                "recipe": read_json(path / "recipe.json"),
            },
        )
        return
    from axformer.search.optimize import optimize

    optimize(model, data, cfg.data_dir, path, cfg.stage_config("search"))


def _export(model: Path, original: str, data, cfg: PipelineConfig, analysis: Path | None, path: Path) -> None:
    from axformer.export.artifact import export_model

    config = export_config(cfg, original, analysis)
    report = export_model(model, path, config, data, cfg.data_dir)
    failed = report["validation"]
    if cfg.search.strategy == "fastformers" and failed["drop"] > config.max_drop:
        _recipe_fallback(model, original, report, data, cfg, config, path)


def export_config(cfg: PipelineConfig, original: str, analysis: Path | None):
    """The export stage's config: also the check of a smaller student the recipe tries first, so that it is judged
    as the artifact that would ship."""
    config = cfg.stage_config("export")
    if config.significance is None and analysis is not None and "quantization" in cfg.analyze.scorers:
        config.significance = str(analysis / "significance.json")
    # judged against the original on the examples the search never decided on, and always an artifact: a
    # precision that breaks the limit falls back to mixed, then fp32, and the report says so
    if config.reference_model is None:
        config.reference_model = original
    # the examples no decision used (the search's, or the recipe's checkpoint selection and importance)
    config.confirm_fraction = cfg.search.certificate.fraction
    config.decision_data = cfg.search.decision_data
    if cfg.search.strategy == "search":
        # the artifact keeps the search's promise: no worse than the original for the accuracy goal, within the
        # search's tolerance for speed and size
        promised = 0.0 if cfg.search.goal == "accuracy" else cfg.search.tolerance.max_drop
        if promised is not None:
            config.max_drop = min(config.max_drop, promised)
        if cfg.search.goal == "accuracy" and config.max_changed_answers is None:
            config.max_changed_answers = 0.0  # "more accurate" keeps the certified model's answers exactly
        if cfg.search.goal == "size" and config.target_size is None:  # mixed precision rounds only what it needs
            config.target_size = cfg.search.target_size
    config.fallback = True
    if config.calibration_texts is None:  # a pruned vocabulary keeps the user's production words too
        config.calibration_texts = cfg.search.calibration_texts
        config.calibration_columns = cfg.search.calibration_columns
    return config


def _recipe_fallback(model: Path, original: str, report: dict, data, cfg: PipelineConfig, config, path: Path) -> None:
    """The recipe's own backtracking: when its final model's artifact (fp32 included) breaks the tolerance on
    the examples none of its decisions saw, the earlier stages' models are tried, latest first (the distilled
    student before its heads and neurons were pruned, ...), and the original when none holds.

    Each stage is a smaller change than the next, as an undone step of the search is; each try re-reads the
    same confirmation examples, so this is a short multiple-testing chain that only moves toward the original.
    """
    from axformer.export.artifact import export_model

    recipe = read_json(model / "recipe.json")
    final = recipe["stages"][-1]
    # the teacher is the original; a stage with the final's structure (pruned, before its distillation) undoes
    # nothing
    earlier = [Path(s["path"]) for s in recipe["stages"][1:-1] if s.get("structure") != final.get("structure")]
    tried = [
        {"model": str(model), "drop": report["validation"]["drop"], "checked_on": report["validation"]["checked_on"]}
    ]
    shipped = original
    for candidate in [*reversed(earlier), Path(original)]:
        report = export_model(candidate, path, config, data, cfg.data_dir, overwrite=True)
        if candidate == Path(original) or report["validation"]["drop"] <= config.max_drop:
            shipped = str(candidate)
            break
        tried.append({"model": str(candidate), "drop": report["validation"]["drop"]})
    metric = report["validation"]["pytorch"]["main_metric"]
    undone = "; ".join(f"{Path(t['model']).name} lost {t['drop']:.2f}" for t in tried)
    report["backtracked"] = {
        "model": str(model),
        "drop": tried[0]["drop"],
        "checked_on": tried[0]["checked_on"],
        "tried": tried,
        "shipped": shipped,
        "note": f"The recipe's models broke --max-drop {config.max_drop} points of {metric} against the original "
        f"on the {tried[0]['checked_on']} examples ({undone}); shipped "
        + ("the original instead" if shipped == original else f"the earlier stage {Path(shipped).name} instead"),
    }
    write_json(path / "export.json", report)


def _benchmark(searched: Path, exported: Path, baseline: str, data, cfg: PipelineConfig, path: Path) -> None:
    """The searched model and the artifact against the baselines. After FastFormers' recipe with a student, the
    student as distilled (before pruning) is a row too, and the cumulative view runs as FastFormers' does:
    dynamic length, distillation, pruning with its second distillation, int8 in ONNX Runtime (the artifact),
    multi-instance; every step also against ONNX Runtime int8 of the unpruned model."""
    from axformer.benchmark.run import BASELINE_CHAIN, DYNAMIC, PADDED, benchmark

    # the recipe's steps, unless its model failed the certificate and the artifact is an earlier stage's or the
    # original's (the export says which)
    recipe = (searched / "recipe.json").exists() and not read_json(exported / "export.json").get("backtracked")
    # the recipe's stages live under the searched model (axformer.distill.recipe), wherever the run directory is
    # now: the chosen student's, under its own directory when it is a smaller student the recipe tried first
    made = read_json(searched / "recipe.json") if recipe else {}
    student = searched / "stages" / (made.get("student") or "") / "1-distilled"
    # a row of its own only when the student was pruned and distilled again after (else it is the searched model)
    pruned = recipe and Path(made["final"]).name != "1-distilled" and (student / "config.json").is_file()
    models = [*([str(student)] if pruned else []), str(searched), str(exported)]
    config = cfg.stage_config("benchmark")
    if config.baseline_model is None:
        config.baseline_model = baseline
    if config.chain is None:
        config.chain = [PADDED, DYNAMIC, *models] if recipe else [*BASELINE_CHAIN, models[-1]]
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    benchmark(models, tmp, data, cfg.data_dir, config, progress=lambda m: None)
    tmp.replace(path)
