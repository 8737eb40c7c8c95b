"""The FastFormers recipe as one call: distil to a smaller student, prune it, distil again, export.

    teacher --distil--> student (a subset of the teacher's layers)
            --prune-->  the same number of heads and FFN neurons kept in every
                        layer, chosen by gradient importance on the held-out split
            --distil--> from the *original* teacher again
            --export--> ONNX, fused, int8 (or another precision)

Every stage writes its own directory under ``OUTPUT/stages`` and is skipped
when that directory is complete, so an interrupted recipe resumes at the stage
it stopped in (and inside a distillation, at its last checkpoint). Without
``student_layers`` the recipe is FastFormers' structured pruning alone: prune
the given model, then distil it from its unpruned self.

With ``trials`` (smaller students, ``axformer.distill.ladder``) the same stages run
first for each of them under ``stages/trial-.../``, each followed by its judgement;
the first that holds is the recipe's model and the sizes above are never trained.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from axformer.analysis.gradient import gradient_importance
from axformer.data.batching import encode
from axformer.distill.budget import Downstream, RecipePlan, StagePlan, plan_ladder
from axformer.distill.ladder import StudentRung
from axformer.distill.objective import TEACHER_OUTPUTS, DistillConfig
from axformer.distill.students import BUDGETS, prune_by_importance
from axformer.distill.trainer import distill, teacher_task
from axformer.errors import AxformerError
from axformer.evaluation import score
from axformer.evaluation.context import load_context
from axformer.evaluation.engine import EvaluationEngine
from axformer.inference import run_model
from axformer.models.loading import is_local, load_tokenizer, save_model
from axformer.models.record import ModelRecord
from axformer.runtime.backends import is_onnx_artifact, load_runnable
from axformer.surgery.prune import apply_structure, count_parameters, current_structure
from axformer.tasks.data import Split, TaskData
from axformer.tasks.splits import apply_split, partition
from axformer.utils.device import resolve_device
from axformer.utils.io import read_json, write_json
from axformer.utils.stages import StageRunner


@dataclass
class RecipeConfig:
    student_layers: str | None = (
        None  # first distil into these teacher layers ("3" or "0,2,5"); None: prune the model itself
    )
    heads: int | None = None  # heads kept per layer (uniform) or on average (global)
    ffn: int | None = None  # FFN neurons kept per layer (uniform) or on average (global)
    budget: str = "uniform"
    importance_examples: int | None = 2000
    distill: DistillConfig = field(default_factory=DistillConfig)
    export: str | None = "int8"  # precision of the final export stage (see axformer export); None: no export
    export_max_drop: float = 1.0
    # minutes the recipe must fit in: the distillations' epochs are planned from a measurement of the teacher on
    # this machine (axformer.distill.budget), the plan printed before anything starts; None: the epochs as given
    time_budget: float | None = None
    # what follows the recipe within the same budget (the pipeline's export and benchmark), priced by the plan
    downstream: Downstream | None = None
    # the share of the held-out split kept for the certificate (the pipeline's --confirm-fraction): checkpoint
    # selection and gradient importance use the rest only, so the export's check on it is a model's first sight
    # of those examples; 0: every decision uses the whole held-out split
    confirm_fraction: float = 0.0
    # a labelled file in the task's format (--decision-data) that replaces the held-out split for checkpoint
    # selection and importance (its deciding part) and for the export's check (the rest)
    decision_data: str | None = None
    # the last distillation rounds every matrix product as the dynamic int8 export will (quantization-aware,
    # axformer.surgery.fake_quant.int8_aware): the model it saves is trained for the artifact that ships
    qat_int8: bool = False
    # smaller students tried first, smallest first (axformer.distill.ladder): the first whose judgement holds
    # (within trial_max_drop of the teacher on the deciding examples, and the certificate's check of its artifact
    # where the caller gives one) is the recipe's model; none holding, the sizes above are trained
    trials: list[StudentRung] = field(default_factory=list)
    trial_max_drop: float = 1.0

    def validate(self) -> None:
        if self.heads is None and self.ffn is None and self.student_layers is None:
            raise AxformerError(
                "the fastformers recipe needs something to shrink: --student-layers, --heads and/or --ffn"
            )
        if self.budget not in BUDGETS:
            raise AxformerError(f"--budget {self.budget!r}; expected one of {', '.join(BUDGETS)}")
        if self.export is not None:
            from axformer.export.artifact import PRECISIONS

            if self.export not in PRECISIONS:
                raise AxformerError(f"--export {self.export!r}; expected one of {', '.join(PRECISIONS)} or none")
        if not 0 <= self.confirm_fraction < 1:
            raise AxformerError(f"--confirm-fraction {self.confirm_fraction}; expected a value from 0 to below 1")
        if self.time_budget is not None and self.time_budget <= 0:
            raise AxformerError(f"--time-budget {self.time_budget}; expected a positive number of minutes")
        for rung in self.trials:
            rung.validate()
        if len({r.label for r in self.trials}) < len(self.trials):
            raise AxformerError("--try-student names the same student twice; expected each size once")
        if self.trial_max_drop < 0:
            raise AxformerError(f"trial_max_drop {self.trial_max_drop}; expected a non-negative number of points")
        self.distill.validate()


def has_recorded_split(model: str) -> bool:
    """Whether ``model`` records the held-out split of its fine-tuning (axformer fine-tuned it): the recipe keeps its
    decisions off the data the model was fitted to only through that record."""
    return is_local(model) and ModelRecord.load(model).split is not None


def require_recorded_split(model: str, data: TaskData | None) -> None:
    """The recipe distils under the held-out split its teacher was fine-tuned with; a model that records none (a
    sentence-transformers model compressed as it is, a checkpoint axformer did not train) is refused here, before
    anything is written, instead of failing inside the first distillation."""
    if not has_recorded_split(model):
        what = "an embedding model" if data is not None and data.spec.is_embedding else "a model"
        raise AxformerError(
            f"--strategy fastformers: {model} records no held-out split (it is {what} axformer did not fine-tune); "
            "expected a model fine-tuned by axformer, or --strategy search (with --student-layers for a student)"
        )


def _scores(path: Path, data: TaskData, splits: dict[str, Split]) -> tuple[dict[str, dict], object]:
    """The task's metrics of one stage's model (PyTorch directory or ONNX artifact) on each labelled split, and
    the model."""
    record = ModelRecord.load(path)
    tok = load_tokenizer(path)
    net = load_runnable(path)
    out = {}
    for name, split in splits.items():
        if len(split) and split.is_labelled:
            out[name] = score(
                data.spec,
                split.labels,
                run_model(
                    net,
                    encode(tok, split, record.max_seq_length, separate=data.spec.is_embedding),
                    data.spec.is_regression,
                ),
            ).to_dict()
    return out, net


def _summary(path: Path, data: TaskData, seconds: float | None, kind: str) -> dict:
    """Held-out and dev metrics, parameters and size of one stage's model (PyTorch directory or ONNX artifact)."""
    _, heldout = apply_split(data, ModelRecord.load(path).split)
    scores, net = _scores(path, data, {"heldout": heldout, **data.dev})
    entry = {"stage": kind, "path": str(path), "seconds": seconds, **scores}
    onnx = is_onnx_artifact(path)
    entry["size_bytes"] = sum(f.stat().st_size for f in Path(path).glob("*.onnx" if onnx else "*.safetensors"))
    if not onnx:
        entry["parameters"] = count_parameters(net)
        s = current_structure(net)
        entry["flops_per_token"] = s.flops_per_token(128)
        entry["structure"] = s.summary()
    return entry


def _prune_stage(model: Path, data: TaskData, output: Path, config: RecipeConfig) -> None:
    ctx = load_context(
        model,
        data,
        None,
        config.importance_examples,
        0,
        config.distill.device,
        config.distill.allow_pickle,
        stage="distill",
        confirm_fraction=config.confirm_fraction,  # importance on the deciding examples only
        decision_data=config.decision_data,
    )
    engine = EvaluationEngine(ctx.model, ctx.encoded, data.spec, config.distill.eval_batch_size, ctx.device)
    try:
        imp = gradient_importance(engine, normalize_heads=True, progress=True)
    finally:
        engine.close()
    structure = current_structure(ctx.model)
    target = prune_by_importance(structure, imp.heads, imp.neurons, config.heads, config.ffn, config.budget)
    net = apply_structure(ctx.model.cpu(), target)
    tmp = output.with_name(output.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(net, ctx.tokenizer, tmp)
    record = ModelRecord.load(model)
    record.history = [
        *record.history,
        {
            "stage": "prune",
            "strategy": "fastformers",
            "heads": config.heads,
            "ffn": config.ffn,
            "budget": config.budget,
            "importance": "gradient (|dL/dgate|, heads L2-normalised per layer), "
            + ("held-out split" if config.decision_data is None else f"--decision-data {config.decision_data}"),
            "structure": target.summary(),
        },
    ]
    record.save(tmp)
    write_json(tmp / "importance.json", imp.to_dict())
    tmp.replace(output)


def certificate_of(export: dict, max_drop: float) -> dict:
    """What a smaller student's judgement keeps of its export report: whether the artifact (at the precision the
    export settled on) stayed within ``max_drop`` on the examples it was checked on."""
    checked = export["validation"]
    return {
        "passed": checked["drop"] <= max_drop,
        "drop": checked["drop"],
        "checked_on": checked["checked_on"],
        "split": checked["split"],
        "precision": export.get("precision"),
    }


def _export_config(config: RecipeConfig):
    """The recipe's own export: the final model's, and the check of a smaller student tried first."""
    from axformer.export.artifact import ExportConfig

    return ExportConfig(
        precision=config.export,
        max_drop=config.export_max_drop,
        device=config.distill.device,
        allow_pickle=config.distill.allow_pickle,
        confirm_fraction=config.confirm_fraction,
        decision_data=config.decision_data,
    )


def _deciding_examples(model: str, data: TaskData, config: RecipeConfig) -> tuple[Split, list[int] | None]:
    """The examples the recipe decides on (checkpoints, importance, a smaller student's judgement): the held-out
    split of the teacher's fine-tuning or ``--decision-data``, and with a confirmation fraction the positions of
    its deciding part (the rest is the certificate's)."""
    if config.decision_data is None:
        selecting = apply_split(data, ModelRecord.load(model).split)[1]
    else:
        from axformer.evaluation.context import read_decision_data

        selecting = read_decision_data(config.decision_data, data)
    if config.confirm_fraction <= 0:
        return selecting, None
    return selecting, [int(i) for i in partition(selecting, config.confirm_fraction)[0]]


def _deciding_score(path: str | Path, data: TaskData, deciding: tuple[Split, list[int] | None]) -> float:
    """A model's main metric on the recipe's deciding examples."""
    split, positions = deciding
    if positions is not None:
        split = split.subset(np.asarray(positions, dtype=np.int64))
    return _scores(Path(path), data, {"deciding": split})[0]["deciding"]["metrics"][data.spec.main_metric]


def _judge(
    teacher_score: Callable[[], float],
    student: Path,
    data: TaskData,
    deciding: tuple[Split, list[int] | None],
    max_drop: float,
    certify: Callable[[Path, Path], dict] | None,
    rung: StudentRung,
    output: Path,
) -> None:
    """Does a smaller student tried first hold? Within ``max_drop`` points of the teacher's main metric on the
    deciding examples, then (only then: a certificate's examples are read as rarely as possible) by ``certify``
    on the examples no decision saw. Both must hold: the deciding figure is the one its checkpoint was chosen
    on, so it flatters the student, and the certificate alone, read once for each rung and again for the
    recipe's own student, would be a multiple test."""
    main = data.spec.main_metric
    scores = {"teacher": teacher_score(), "student": _deciding_score(student, data, deciding)}
    drop = scores["teacher"] - scores["student"]
    examples = len(deciding[1]) if deciding[1] is not None else len(deciding[0])
    verdict = {
        "deciding": {"examples": examples, **scores, "drop": drop, "passed": drop <= max_drop},
        "max_drop": max_drop,
    }
    tmp = output.with_name(output.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if drop <= max_drop and certify is not None:
        verdict["certificate"] = certify(student, tmp / "artifact")
    verdict["accepted"] = drop <= max_drop and verdict.get("certificate", {}).get("passed", True)
    tqdm.write(
        f"[{rung.label}] {rung.describe()}: {main} {scores['teacher']:.2f} -> {scores['student']:.2f} on "
        f"{examples} deciding examples"
        + (f", certificate {-verdict['certificate']['drop']:+.2f}" if "certificate" in verdict else "")
        + (": kept" if verdict["accepted"] else ": refused, a larger student next")
    )
    write_json(tmp / "verdict.json", verdict)
    tmp.replace(output)


def _plan(model: str, data: TaskData, config: RecipeConfig, stages_dir: Path) -> RecipePlan | None:
    """The time budget's plan, made once and kept with the stages (a resumed recipe keeps to the same plan)."""
    if config.time_budget is None:
        return None
    path = stages_dir / "plan.json"
    if path.exists():
        saved = read_json(path)
        return RecipePlan(**{**saved, "stages": [StagePlan(**x) for x in saved["stages"]]})
    device = resolve_device(config.distill.device)
    plan = plan_ladder(model, data, config, 60 * config.time_budget, device, config.downstream)
    tqdm.write(plan.table())
    write_json(path, plan.to_dict())
    return plan


def fastformers_recipe(
    model: str | os.PathLike,
    output: str | os.PathLike,
    config: RecipeConfig | None = None,
    data: TaskData | None = None,
    data_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    certify: Callable[[Path, Path], dict] | None = None,
) -> dict:
    """Run (or resume) the recipe; the final PyTorch model is saved in ``output`` and the stages under
    ``output/stages``.

    ``certify(model_dir, work_dir)``: the caller's check of a smaller student tried first (``config.trials``) on
    the examples no decision saw, returning at least ``passed`` and ``drop`` (the pipeline exports the student and
    checks its artifact as its export stage will); None: the recipe's own export check when it exports, else
    the deciding examples alone judge it.
    """
    config = config or RecipeConfig()
    config.validate()
    model = str(model)
    output = Path(output)
    data = teacher_task(model, data, data_dir)
    require_recorded_split(model, data)
    if data.spec.is_qa:  # a QA input is a question with its context's windows: no extra inputs, as in recovery
        config = replace(config, distill=replace(config.distill, windows=0, augment=0))
    if (output / "recipe.json").exists() and not overwrite:
        raise AxformerError(
            f"output directory {output} already holds a finished recipe; pass --overwrite to replace "
            "it or choose another --output"
        )
    if overwrite:
        shutil.rmtree(output, ignore_errors=True)
    stages_dir = output / "stages"
    stages_dir.mkdir(parents=True, exist_ok=True)
    runner = StageRunner(stages_dir)
    times = runner.times

    def run(name: str, fn) -> Path:  # each stage's directory appears only when the stage is complete
        return runner.run(name, stages_dir / name, fn, done=Path.exists)

    if certify is None and config.export is not None:  # a student tried first is checked as the final one will be

        def certify(student: Path, work: Path) -> dict:
            from axformer.export.artifact import export_model

            report = export_model(student, work, _export_config(config), data=data)
            return certificate_of(report, config.export_max_drop)

    t0 = time.perf_counter()
    plan = _plan(model, data, config, stages_dir)
    # every distillation learns from the same teacher on the same texts: its outputs are computed once
    distill_config = replace(config.distill, teacher_cache_dir=str(stages_dir / TEACHER_OUTPUTS))
    distill_config.selection_data = config.decision_data  # None: the held-out split selects
    deciding = _deciding_examples(model, data, config)
    if config.confirm_fraction > 0:  # checkpoints are chosen on the deciding part, never on the confirmation one
        distill_config.selection_positions = deciding[1]
    if plan is not None:
        distill_config.epochs = plan.epochs

    # stages a previous call finished: the schedule of this call starts after them
    finished_before = {s.stage for s in plan.stages if (stages_dir / s.stage).exists()} if plan is not None else set()

    def distill_config_for(stage: str, sizes: RecipeConfig) -> DistillConfig:
        """A distillation's settings for one student size; its training ends at its deadline in the plan
        (``RecipePlan.training_deadline``), counted from this call's start."""
        base = replace(distill_config, learning_rate=sizes.distill.learning_rate, hard_weight=sizes.distill.hard_weight)
        planned = plan.stage(stage) if plan is not None else None
        if planned is None or planned.training_seconds is None:
            return base
        deadline = t0 + plan.training_deadline(stage, finished_before)
        return replace(base, max_seconds=max(deadline - time.perf_counter(), 0.0))

    def student_stages(sizes: RecipeConfig, prefix: str = "") -> list[tuple[str, Path]]:
        """FastFormers' order for one student size: distil to its layers, prune its heads and neurons, distil
        again from the original teacher; the last distillation rounds as int8 will when asked."""
        made: list[tuple[str, Path]] = []
        current = Path(model)
        prunes = sizes.heads is not None or sizes.ffn is not None
        if sizes.student_layers is not None:
            name = prefix + "1-distilled"
            cfg1 = distill_config_for(name, sizes)
            if not prunes:  # the student is the last distillation
                cfg1 = replace(cfg1, qat_int8=config.qat_int8)
            current = run(
                name, lambda p: distill(model, p, student_layers=sizes.student_layers, data=data, config=cfg1)
            )
            made.append((name, current))
        if prunes:
            pruned = run(prefix + "2-pruned", lambda p: _prune_stage(current, data, p, sizes))
            made.append((prefix + "2-pruned", pruned))
            name = prefix + "3-distilled-again"
            cfg3 = replace(distill_config_for(name, sizes), qat_int8=config.qat_int8)
            current = run(name, lambda p: distill(model, p, student=pruned, data=data, config=cfg3))
            made.append((name, current))
        return made

    @functools.cache
    def teacher_score() -> float:  # the teacher on the deciding examples: once, however many rungs are judged
        return _deciding_score(model, data, deciding)

    trials: list[dict] = []
    chosen: StudentRung | None = None
    stages: list[tuple[str, Path]] = []
    for rung in config.trials:  # smallest first; the first that holds is the recipe's model
        if plan is not None and not plan.tries(rung.label):
            trials.append({"student": rung.label, "sizes": rung.describe(), "tried": False,
                           "why": plan.skipped.get(rung.label, "not in the plan")})  # fmt: skip
            continue
        made = student_stages(rung.sizes_of(config), rung.label + "/")
        final = made[-1][1]
        path = run(
            rung.label + "/judge",
            lambda p, final=final, rung=rung: _judge(
                teacher_score, final, data, deciding, config.trial_max_drop, certify, rung, p
            ),
        )
        verdict = read_json(path / "verdict.json")
        trials.append({"student": rung.label, "sizes": rung.describe(), "tried": True, **verdict})
        if verdict["accepted"]:
            chosen, stages = rung, made
            break
    if chosen is None:
        stages = student_stages(config)
    done: list[tuple[str, Path]] = [("teacher", Path(model)), *stages]
    current = stages[-1][1]
    shutil.rmtree(stages_dir / TEACHER_OUTPUTS, ignore_errors=True)
    final_torch = current
    if config.export is not None:
        from axformer.export.artifact import export_model

        exported = run(
            f"4-export-{config.export}",
            lambda p: export_model(final_torch, p, _export_config(config), data=data),
        )
        done.append((f"4-export-{config.export}", exported))
    t_summaries = time.perf_counter()
    stages = [_summary(path, data, times.get(name), name) for name, path in done]
    times["summaries"] = time.perf_counter() - t_summaries
    # the final PyTorch model, reloadable with one call, at the top of the output directory
    for f in final_torch.iterdir():
        if f.is_file():
            shutil.copy2(f, output / f.name)
    report = {
        "model": model,
        "task": {"name": data.spec.name, "display_name": data.spec.display_name, "main_metric": data.spec.main_metric},
        "strategy": "fastformers",
        "config": asdict(config),
        "stages": stages,
        "final": str(final_torch),
        "deploy": str(done[-1][1]),
        # the student size that was trained into the final model: a smaller one tried first, or the recipe's own
        "student": None if chosen is None else chosen.label,
        "trials": trials,
        "plan": None if plan is None else plan.to_dict(),
        "seconds": dict(times),
    }
    write_json(output / "recipe.json", report)
    (output / "recipe.md").write_text(recipe_markdown(report))
    return report


def rounding_note(r: dict) -> str:
    """What a report must say of a recipe whose last distillation trained through int8's rounding: its held-out
    figure is the PyTorch model's, which the int8 artifact then computes (up to ONNX Runtime's arithmetic)."""
    if not r.get("config", {}).get("qat_int8"):
        return ""
    last = [s["stage"] for s in r["stages"] if "distilled" in s["stage"]][-1:]
    return (
        f"Quantization-aware: the last distillation ({', '.join(last) or 'none'}) trained through dynamic int8's "
        "rounding (weights per row on the int8 grid, each matrix product's input per tensor), so the int8 artifact "
        "computes what it was trained for; its held-out figure here is the PyTorch model's, inputs unrounded."
    )


def trial_cells(t: dict) -> list[str]:
    """One smaller student's judgement as the recipe reports it: deciding examples, the teacher's and the student's
    main metric there, the certificate's check, the verdict (the recipe's table, the benchmark scripts' text)."""
    if not t["tried"]:
        return ["-", "-", "-", "-", f"not tried: {t['why']}"]
    d, cert = t["deciding"], t.get("certificate")
    return [
        str(d["examples"]),
        f"{d['teacher']:.2f}",
        f"{d['student']:.2f} ({-d['drop']:+.2f})",
        "-" if cert is None else f"{-cert['drop']:+.2f} on {cert.get('checked_on', '?')}",
        "kept" if t["accepted"] else "refused",
    ]


def trials_table(r: dict) -> tuple[str, list[str], list[list[str]]]:
    """The smaller students a recipe tried before its own: a sentence, the headers and the rows (the recipe's
    report and the pipeline's)."""
    main = r["task"]["main_metric"]
    intro = (
        f"Smaller students tried first, smallest first; the first within {r['config']['trial_max_drop']:g} points "
        "of the teacher on the deciding examples and passing the certificate's check of its artifact is the "
        "recipe's model" + (f" (here: {r['student']})." if r.get("student") else " (here: none; the recipe's own).")
    )
    headers = ["student", "deciding examples", f"teacher {main}", f"student {main}", "certificate", "verdict"]
    rows = [[t["sizes"], *trial_cells(t)] for t in r["trials"]]
    return intro, headers, rows


def recipe_markdown(r: dict) -> str:
    main = r["task"]["main_metric"]
    devs = [
        k
        for k in r["stages"][0]
        if k not in ("stage", "path", "seconds", "heldout", "size_bytes", "parameters", "flops_per_token", "structure")
    ]
    head = (
        "| stage | held-out "
        + main
        + " | "
        + " | ".join(f"{d} {main}" for d in devs)
        + " | parameters | size | stage time |"
    )
    lines = [
        f"# FastFormers recipe: {r['model']} on {r['task']['display_name']}",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for s in r["stages"]:
        cells = [
            s["stage"],
            f"{s['heldout']['metrics'][main]:.2f}",
            *(f"{s[d]['metrics'][main]:.2f}" if d in s else "-" for d in devs),
            f"{s['parameters'] / 1e6:.2f} M" if "parameters" in s else "-",
            f"{s['size_bytes'] / 2**20:.1f} MiB",
            "-" if s["seconds"] is None else f"{s['seconds'] / 60:.1f} min",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if note := rounding_note(r):
        lines += ["", note]
    if r.get("trials"):
        intro, headers, rows = trials_table(r)
        lines += ["", intro, "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    plan = r.get("plan")
    if plan:
        actual = r.get("seconds", {})
        lines += [
            "",
            f"Time budget {plan['budget_seconds'] / 60:.1f} min, planned from the models timed here (student "
            f"training step {1e3 * plan['train_s_per_example']:.2f} ms per example): "
            + (
                f"{plan['epochs']:.2f} epochs per distillation." if plan["epochs"] is not None else "nothing to distil."
            ),
            "",
            "| stage | planned | actual |",
            "|---|---|---|",
            *(
                f"| {s['stage']} | {s['seconds'] / 60:.2f} min | "
                + (f"{actual[s['stage']] / 60:.2f} min |" if s["stage"] in actual else "- |")
                for s in plan["stages"]
            ),
            f"| total | {sum(s['seconds'] for s in plan['stages']) / 60:.2f} min | "
            f"{sum(actual.values()) / 60:.2f} min |",
        ]
    lines += [
        "",
        "Stage time: wall time of the stage on this machine (distillation includes the teacher's "
        "logits, computed once). "
        "Latency: `axformer benchmark` on the stages' directories measures them against the teacher in one run.",
    ]
    return "\n".join(lines) + "\n"
