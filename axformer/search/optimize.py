"""``axformer optimize``: search for the best approximated model and hand it back physically smaller.

The run directory holds, when done: the optimized model (safetensors, config
with its per-layer structure and attention settings, tokenizer,
axformer.json), ``search_log.jsonl`` (every trial), ``report.md`` and
``report.json`` (original vs optimized on the held-out split and dev set,
parameters, size, FLOPs, measured latency ratios, the search's wall time).
While it runs, ``OUTPUT.partial`` holds the log, the accepted state
(``best_so_far.json``) and the best model found so far (``best_so_far/``);
running the same command again resumes from there (a killed run loses at
most the trial being evaluated), and Ctrl-C stops cleanly with the
best-so-far model saved.

This module only orchestrates; the searches are ``accuracy`` and
``constraint``, recovery training is ``recovery``, writing a candidate is
``candidate``, the report is ``report``, timing is ``axformer.runtime.timing``.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from axformer.attention.hard import MODES, supports_approximate_attention
from axformer.errors import AxformerError
from axformer.evaluation.context import load_context
from axformer.evaluation.engine import EvaluationEngine
from axformer.models.loading import is_local
from axformer.search.accuracy import AccuracySearchConfig, accuracy_search
from axformer.search.accuracy import trial_bound as accuracy_trial_bound
from axformer.search.candidate import save_candidate
from axformer.search.constraint import ConstraintSearchConfig, constraint_search
from axformer.search.constraint import trial_bound as constraint_trial_bound
from axformer.search.cost import CostModel, calibrate_latency, parameter_model
from axformer.search.recovery import pretrained_origin, recover
from axformer.search.report import build_report, report_markdown
from axformer.search.trials import Trials
from axformer.surgery.prune import current_structure
from axformer.tasks.data import TaskData
from axformer.utils.io import atomic_output_dir, claim_work_dir, read_json, run_key, write_json

GOALS = ("accuracy", "speed", "size")
RECOVERY = ("continue", "pretrained", "distill")
LOG_FILE = "search_log.jsonl"
STATE_FILE = "best_so_far.json"


@dataclass
class OptimizeConfig:
    goal: str = "accuracy"
    # constraint goals
    max_drop: float | None = 1.0
    max_rel_drop: float | None = None
    target_speedup: float | None = None
    target_size: float | None = None
    guard: str = "all"  # the tolerance holds for every task metric ("all") or the main one ("main")
    max_loss_increase: float | None = None  # percent over the unpruned model's mean held-out loss
    # AxFormer (accuracy goal)
    hard_attention: bool = True
    k: int = 30
    # approximate attention tried per layer: accuracy goal in this order (default topk: AxFormer); speed goal after
    # pruning, each mode only where measured faster than dense here (default topk and sign)
    attention_modes: list[str] | None = None
    slack: float = 1.1
    fraction: float = 0.5
    attention_layers: list[int] | None = None
    prune_layers: list[int] | None = None
    # shared
    groups: int = 12
    max_examples: int | None = 2000
    sample_seed: int = 0
    batch_size: int = 64
    latency_examples: int = 200  # dev texts timed at batch 1
    # recovery after the search (--recover): None, "continue" (fine-tune from the searched weights), "pretrained"
    # (AxFormer: the structure on the
    # pre-trained weights, fine-tuned) or "distill" (FastFormers: the searched model distilled from the original one)
    refinetune: str | None = None
    refinetune_epochs: float = 1.0
    refinetune_lr: float = 1e-4
    refinetune_batch_size: int = 32
    refinetune_max_train_examples: int | None = None
    device: str = "auto"
    allow_pickle: bool = False
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.goal not in GOALS:
            raise AxformerError(f"--goal {self.goal!r}; expected one of {', '.join(GOALS)}")
        if self.goal != "accuracy" and self.max_drop is None and self.max_rel_drop is None:
            raise AxformerError(f"--goal {self.goal} needs a tolerance: --max-drop or --max-rel-drop")
        if self.max_drop is not None and self.max_drop < 0:
            raise AxformerError(f"--max-drop {self.max_drop}; expected a non-negative number of points (e.g. 1)")
        if self.max_rel_drop is not None and not 0 <= self.max_rel_drop < 100:
            raise AxformerError(f"--max-rel-drop {self.max_rel_drop}; expected a percentage from 0 to below 100")
        if not 0 < self.fraction < 1:
            raise AxformerError(f"--fraction {self.fraction}; expected a value between 0 and 1")
        if self.slack < 1:
            raise AxformerError(f"--slack {self.slack}; expected a value of at least 1")
        if self.k < 1:
            raise AxformerError(f"-k {self.k}; expected a positive number of attended keys")
        if any(m not in MODES for m in self.attention_modes or []):
            raise AxformerError(f"--attention {self.attention_modes}; expected topk and/or sign")
        if self.groups < 1:
            raise AxformerError(f"--groups {self.groups}; expected a positive number")
        if self.guard not in ("all", "main"):
            raise AxformerError(f"--guard {self.guard!r}; expected all or main")
        if self.max_loss_increase is not None and self.max_loss_increase < 0:
            raise AxformerError(f"--max-loss-increase {self.max_loss_increase}; expected a non-negative percentage")
        if self.refinetune not in (None, *RECOVERY):
            raise AxformerError(f"--recover {self.refinetune!r}; expected one of {', '.join(RECOVERY)}")
        for name in ("target_speedup", "target_size"):
            v = getattr(self, name)
            if v is not None and v <= 1:
                raise AxformerError(f"--{name.replace('_', '-')} {v}; expected a factor above 1 (e.g. 1.5)")


def default_output(model: str | os.PathLike, goal: str) -> Path:
    base = Path(model) if is_local(model) else Path(str(model).replace("/", "-"))
    return base.with_name(base.name + f"-optimized-{goal}")


def optimize(
    model: str | os.PathLike,
    data: TaskData | None = None,
    data_dir=None,
    output=None,
    config: OptimizeConfig | None = None,
    overwrite: bool = False,
) -> dict:
    """Run the search and write the optimized model and its report; returns the report dict."""
    config = config or OptimizeConfig()
    config.validate()
    output = Path(output) if output is not None else default_output(model, config.goal)
    t_start = time.perf_counter()
    ctx = load_context(
        model, data, data_dir, config.max_examples, config.sample_seed, config.device, config.allow_pickle
    )
    spec = ctx.data.spec
    if config.refinetune == "pretrained" and pretrained_origin(ctx.record) is None:
        raise AxformerError(
            f"--recover pretrained: {model} records no pre-trained checkpoint it was fine-tuned from; "
            "use --recover continue or distill"
        )
    torch.manual_seed(0)
    key = run_key(
        {
            "model": str(Path(model).resolve()) if is_local(model) else str(model),
            "task": spec.name,
            "split": ctx.describe_split(),
            "config": {k: v for k, v in asdict(config).items() if k not in ("progress", "device", "latency_examples")},
        }
    )
    with atomic_output_dir(output, overwrite=overwrite) as work:
        resumed = claim_work_dir(work, key)
        engine = EvaluationEngine(ctx.model, ctx.encoded, spec, config.batch_size, ctx.device)
        structure = current_structure(ctx.model)
        approx_ok = supports_approximate_attention(ctx.model)
        last_save = [0.0]

        def on_accept(t: Trials) -> None:  # the accepted state, and (at most every 30 s) the model, always on disk
            write_json(work / STATE_FILE, t.state())
            if time.perf_counter() - last_save[0] > 30:
                save_candidate(model, ctx, t.state(), work / "best_so_far", config, config.goal)
                last_save[0] = time.perf_counter()

        trials = Trials(engine, work / LOG_FILE, spec.main_metric, on_accept)
        search_info: dict = {}
        acc = AccuracySearchConfig(
            config.hard_attention,
            config.k,
            False,
            tuple(config.attention_modes or ["topk"]),
            config.slack,
            config.fraction,
            config.groups,
            config.attention_layers,
            config.prune_layers,
        )
        t_search = time.perf_counter()
        try:
            if config.goal == "accuracy":
                if config.progress:
                    trials.progress(accuracy_trial_bound(structure, acc, approx_ok), "search (accuracy)")
                outcome = accuracy_search(trials, structure, acc, approx_ok)
                search_info = {
                    "rule": f"axformer (mean loss below the best so far, and more than {config.fraction:.0%} "
                    "of examples not worse than the unpruned model)",
                    "min_loss": outcome.min_loss,
                    "hard_attention_supported": approx_ok,
                }
            else:
                modes = (
                    tuple(config.attention_modes if config.attention_modes is not None else MODES)
                    if approx_ok and config.hard_attention
                    else ()
                )
                cost = _cost_model(ctx, structure, config, work, modes)
                target = config.target_speedup if config.goal == "speed" else config.target_size
                cfg = ConstraintSearchConfig(
                    config.goal,
                    config.max_drop,
                    config.max_rel_drop,
                    target,
                    config.guard,
                    config.max_loss_increase,
                    config.groups,
                    attention_modes=modes,
                    k=config.k,
                )
                if config.progress:
                    trials.progress(constraint_trial_bound(structure, cfg), f"search ({config.goal})")
                outcome = constraint_search(trials, structure, cost, cfg, progress=False)
                search_info = {
                    "rule": outcome.rule,
                    "threshold": outcome.threshold,
                    "thresholds": outcome.thresholds,
                    "max_loss": outcome.max_loss,
                    "cost_model": cost.to_dict(),
                    "predicted_ratio": outcome.predicted_ratio,
                    "target": target,
                    "target_met": outcome.target_met,
                    "attention_notes": outcome.attention_notes,
                }
        except KeyboardInterrupt:
            trials.close()
            write_json(work / STATE_FILE, trials.state())
            save_candidate(model, ctx, trials.state(), work / "best_so_far", config, config.goal)
            engine.close()
            raise AxformerError(
                f"interrupted after {trials.count} trials; the best model so far is in "
                f"{work}/best_so_far; run the same command again to resume"
            ) from None
        trials.close()
        search_seconds = time.perf_counter() - t_search
        state = trials.state()
        write_json(work / STATE_FILE, state)
        engine.close()
        optimized = save_candidate(model, ctx, state, work, config, config.goal)
        recovery = None
        if config.refinetune is not None:
            optimized, recovery = recover(model, ctx, work, config, state)
        report = build_report(
            model,
            ctx,
            optimized,
            state,
            config,
            trials,
            search_info,
            search_seconds,
            time.perf_counter() - t_start,
            resumed,
            work,
        )
        if recovery is not None:
            report["recovery"] = recovery
        write_json(work / "report.json", report)
        (work / "report.md").write_text(report_markdown(report))
        shutil.rmtree(work / "best_so_far", ignore_errors=True)
        for f in ("run.json",):
            (work / f).unlink(missing_ok=True)
    return report


def _cost_model(ctx, structure, config: OptimizeConfig, work: Path, attention_modes: tuple[str, ...]) -> CostModel:
    """The calibrated cost model, saved in the work directory: a resumed run must rank candidates exactly as before,
    and latency measurements never repeat exactly."""
    path = work / "cost_model.json"
    if path.exists():
        return CostModel(**read_json(path))
    cost = (
        calibrate_latency(
            ctx.model, structure, _typical_length(ctx), device=ctx.device, k=config.k, attention_modes=attention_modes
        )
        if config.goal == "speed"
        else parameter_model(ctx.model, structure)
    )
    write_json(path, cost.to_dict())
    return cost


def _typical_length(ctx) -> int:
    return int(np.median(ctx.encoded.lengths)) if len(ctx.encoded) else 32
