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
"""

from __future__ import annotations

import copy
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from axformer.attention.hard import MODES, set_attention, supports_approximate_attention
from axformer.data.batching import collate, encode, sorted_batches
from axformer.errors import AxformerError
from axformer.evaluation import score
from axformer.evaluation.context import load_context
from axformer.evaluation.engine import EvaluationEngine
from axformer.inference import run_model
from axformer.models.loading import is_local, load_model, save_model
from axformer.runtime.timing import interleaved_medians
from axformer.search.accuracy import AccuracySearchConfig, accuracy_search
from axformer.search.constraint import ConstraintSearchConfig, constraint_search
from axformer.search.cost import CostModel, calibrate_latency, parameter_model
from axformer.search.trials import Trials
from axformer.surgery.prune import count_parameters, current_structure, prune
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
                _save_candidate(model, ctx, t.state(), work / "best_so_far", config)
                last_save[0] = time.perf_counter()

        trials = Trials(engine, work / LOG_FILE, spec.main_metric, on_accept)
        search_info: dict = {}
        t_search = time.perf_counter()
        try:
            if config.goal == "accuracy":
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
            write_json(work / STATE_FILE, trials.state())
            _save_candidate(model, ctx, trials.state(), work / "best_so_far", config)
            engine.close()
            raise AxformerError(
                f"interrupted after {trials.count} trials; the best model so far is in "
                f"{work}/best_so_far; run the same command again to resume"
            ) from None
        search_seconds = time.perf_counter() - t_search
        state = trials.state()
        write_json(work / STATE_FILE, state)
        engine.close()
        optimized = _save_candidate(model, ctx, state, work, config)
        recovery = None
        if config.refinetune is not None:
            optimized, recovery = _recover(model, ctx, work, config, state)
        report = _report(
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
            (work / "report.md").write_text(report_markdown(report))
        write_json(work / "report.json", report)
        (work / "report.md").write_text(report_markdown(report))
        import shutil

        shutil.rmtree(work / "best_so_far", ignore_errors=True)
        for f in ("run.json",):
            (work / f).unlink(missing_ok=True)
    return report


def pretrained_origin(record) -> str | None:
    """The pre-trained checkpoint the model was first fine-tuned from, as its axformer.json records it."""
    return next(
        (h.get("base_model") for h in record.history if h.get("stage") == "finetune" and h.get("base_model")), None
    )


def _recover(model, ctx, work: Path, config: OptimizeConfig, state: dict):
    """Train the found structure again; the recovered model replaces the searched one in ``work``.

    ``continue`` fine-tunes from the searched weights. ``pretrained`` is
    AxFormer's variant: the same components removed from the *pre-trained*
    checkpoint the model was fine-tuned from (a new task head), then
    fine-tuned. ``distill`` is FastFormers': the searched model learns the
    original model's outputs (soft cross-entropy). All keep the recorded
    held-out split, which selects the checkpoint.
    """
    import shutil

    from axformer.distill import DistillConfig, distill
    from axformer.models.record import ModelRecord
    from axformer.training.finetune import FinetuneConfig, finetune

    searched = score(
        ctx.data.spec,
        ctx.heldout.labels,
        run_model(
            load_model(work, device=ctx.device).eval(),
            ctx.encoded,
            ctx.data.spec.is_regression,
            config.batch_size,
            ctx.device,
        ),
    ).to_dict()
    common = {
        "epochs": config.refinetune_epochs,
        "learning_rate": config.refinetune_lr,
        "batch_size": config.refinetune_batch_size,
        "max_train_examples": config.refinetune_max_train_examples,
        "max_seq_length": ctx.record.max_seq_length,
        "device": config.device,
    }
    t0 = time.perf_counter()
    start = work
    if config.refinetune == "distill":
        cfg = DistillConfig(**common)
        result = distill(model, work / "recovered", student=work, data=ctx.data, config=cfg, overwrite=True)
    else:
        cfg = FinetuneConfig(**common)
        if config.refinetune == "pretrained":
            origin = pretrained_origin(ctx.record)
            if origin is None:
                raise AxformerError(
                    f"--recover pretrained: {ctx.model_path} records no pre-trained checkpoint it was "
                    "fine-tuned from; use --recover continue or distill"
                )
            net = load_model(origin, ctx.data.spec, new_head=True, allow_pickle=config.allow_pickle)
            prune(net, state["removed"])
            if state["attention"]:
                set_attention(net, {int(k): v for k, v in state["attention"].items()})
            start = work / "pretrained-structure"
            save_model(net, ctx.tokenizer, start)
            record = ModelRecord.load(work)  # the searched model's record: task, split, and the optimize stage
            record.history = [
                *record.history,
                {"stage": "structure-on-pretrained", "base_model": origin, "removed": state["removed"]},
            ]
            record.save(start)
        result = finetune(start, ctx.data, work / "recovered", cfg, overwrite=True)
    net = load_model(result.output, ctx.data.spec, device=ctx.device).eval()
    save_model(net, ctx.tokenizer, work)
    ModelRecord.load(result.output).save(work)
    shutil.rmtree(result.output, ignore_errors=True)
    if start != work:
        shutil.rmtree(start, ignore_errors=True)
    return net, {
        "mode": config.refinetune,
        "heldout_before": searched,
        "seconds": time.perf_counter() - t0,
        "config": asdict(cfg),
    }


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


def _save_candidate(model, ctx, state: dict, directory: Path, config: OptimizeConfig):
    """Physically apply the state to a fresh copy of the original model and save it (with tokenizer and record)."""

    net = load_model(model, ctx.data.spec, allow_pickle=config.allow_pickle, device=ctx.device)
    prune(net, state["removed"])
    if state["attention"]:
        set_attention(net, {int(k): v for k, v in state["attention"].items()})
    directory.mkdir(parents=True, exist_ok=True)
    save_model(net, ctx.tokenizer, directory)
    record = copy.deepcopy(ctx.record)
    if record.task is None:
        record.task = {**ctx.data.spec.to_dict(), "source": ctx.data.source}
    record.split = ctx.split
    record.history = [
        *record.history,
        {
            "stage": "optimize",
            "goal": config.goal,
            "base_model": str(model),
            "removed": state["removed"],
            "attention": state["attention"],
        },
    ]
    record.save(directory)
    return net.eval()


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


@torch.inference_mode()
def measure_latency(models: dict, enc, n_single: int, device, rounds: int = 5) -> dict[str, dict[str, float]]:
    """Batch-1 latency over dev texts (each padded to its own length) and batch-32 per-example time, interleaved.

    Every model of ``models`` is timed in the same rounds, so their ratios hold even when the machine is shared;
    absolute figures do not (two processes on two cores make each call several times slower, unevenly)."""
    single = [collate(enc, np.array([i]), device, with_labels=False) for i in range(min(n_single, len(enc)))]
    big = [collate(enc, idx, device, with_labels=False) for idx in sorted_batches(enc.lengths, 32)[:4]]
    n_big = sum(len(b["input_ids"]) for b in big)

    def loop(m, batches):
        def fn():
            for b in batches:
                m(**b)

        return fn

    b1 = interleaved_medians({k: loop(m, single) for k, m in models.items()}, repeats=1, rounds=rounds, warmup=1)
    b32 = interleaved_medians({k: loop(m, big) for k, m in models.items()}, repeats=1, rounds=rounds, warmup=1)
    return {
        k: {"batch1_ms": 1e3 * b1[k] / max(len(single), 1), "batch32_ms_per_example": 1e3 * b32[k] / max(n_big, 1)}
        for k in models
    }


def _report(
    model,
    ctx,
    optimized,
    state,
    config,
    trials: Trials,
    search_info,
    search_seconds,
    total_seconds,
    resumed,
    work: Path,
) -> dict:
    spec = ctx.data.spec
    original = ctx.model
    original.eval()
    results = {}
    for name, net in (("original", original), ("optimized", optimized)):
        entry = {
            "heldout": score(
                spec, ctx.heldout.labels, run_model(net, ctx.encoded, spec.is_regression, config.batch_size, ctx.device)
            ).to_dict()
        }
        for dev_name, dev_split in ctx.data.dev.items():
            if len(dev_split) and (spec.is_regression or dev_split.labels.min() >= 0):
                entry[dev_name] = score(
                    spec,
                    dev_split.labels,
                    run_model(
                        net,
                        encode(ctx.tokenizer, dev_split, ctx.record.max_seq_length),
                        spec.is_regression,
                        config.batch_size,
                        ctx.device,
                    ),
                ).to_dict()
        s = current_structure(net)
        entry.update(
            {"parameters": count_parameters(net), "flops_per_token": s.flops_per_token(128), "structure": s.summary()}
        )
        results[name] = entry
    results["original"]["size_bytes"] = (_dir_size(Path(model)) or None) if is_local(model) else None
    results["optimized"]["size_bytes"] = _dir_size(work)
    dev_split = next(iter(ctx.data.dev.values()))
    lat = measure_latency(
        {"original": original, "optimized": optimized},
        encode(ctx.tokenizer, dev_split, ctx.record.max_seq_length),
        config.latency_examples,
        ctx.device,
    )
    for k in lat:
        results[k]["latency"] = lat[k]
    accepted = [d for d in trials.decisions if d.accepted]
    return {
        "model": str(model),
        "task": {"name": spec.name, "display_name": spec.display_name, "main_metric": spec.main_metric},
        "goal": config.goal,
        "config": asdict(config),
        "split": ctx.describe_split(),
        "removed": state["removed"],
        "attention": state["attention"],
        "search": {
            **search_info,
            "trials": trials.count,
            "accepted": len(accepted),
            "from_log": sum(d.from_log for d in trials.decisions),
            # a resumed search's time includes the trials it replayed (their evaluation time, as logged when they ran)
            "seconds": search_seconds
            + sum(float(r.get("seconds", 0.0)) for r in trials.logged[: sum(d.from_log for d in trials.decisions)]),
            "seconds_this_run": search_seconds,
            "resumed": resumed,
        },
        "results": results,
        "speedup_batch1": lat["original"]["batch1_ms"] / lat["optimized"]["batch1_ms"],
        "speedup_batch32": lat["original"]["batch32_ms_per_example"] / lat["optimized"]["batch32_ms_per_example"],
        "total_seconds": total_seconds,
        "warnings": ctx.warnings,
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": ctx.device,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
    }


def report_markdown(r: dict) -> str:
    main = r["task"]["main_metric"]
    o, p = r["results"]["original"], r["results"]["optimized"]
    dev_names = [
        k for k in o if k not in ("heldout", "parameters", "flops_per_token", "structure", "size_bytes", "latency")
    ]

    def m(entry, split, metric=main):
        return f"{entry[split]['metrics'][metric]:.2f}" if split in entry else "-"

    def size(b):
        return "-" if not b else f"{b / 2**20:.1f} MiB"

    flops_ratio = (
        f"{o['flops_per_token'] / p['flops_per_token']:.2f}x fewer" if p["flops_per_token"] else "no encoder layer left"
    )
    lines = [
        f"# axformer optimize: {r['model']} on {r['task']['display_name']} (goal: {r['goal']})",
        "",
        f"Decisions used {r['split']['used']} held-out training examples only; the dev set only "
        f"reports. Rule: {r['search'].get('rule', '')}.",
        f"Search: {r['search']['trials']} trials ({r['search']['accepted']} accepted, "
        f"{r['search']['from_log']} replayed from a resumed log) in {r['search']['seconds']:.0f} s; "
        f"whole run {r['total_seconds']:.0f} s.",
        "",
        "| | original | optimized | ratio |",
        "|---|---|---|---|",
        f"| held-out {main} | {m(o, 'heldout')} | {m(p, 'heldout')} | |",
        f"| held-out loss | {o['heldout']['loss']:.4f} | {p['heldout']['loss']:.4f} | |",
    ]
    for d in dev_names:
        for metric in o[d]["metrics"]:
            lines.append(f"| {d} {metric} | {m(o, d, metric)} | {m(p, d, metric)} | |")
    lines += [
        f"| parameters | {o['parameters'] / 1e6:.2f} M | {p['parameters'] / 1e6:.2f} M | "
        f"{o['parameters'] / p['parameters']:.2f}x smaller |",
        f"| size on disk | {size(o['size_bytes'])} | {size(p['size_bytes'])} | |",
        f"| FLOPs/token (encoder, 128 tokens) | {o['flops_per_token'] / 1e6:.1f} M | "
        f"{p['flops_per_token'] / 1e6:.1f} M | {flops_ratio} |",
        f"| latency, batch 1, dev texts | {o['latency']['batch1_ms']:.2f} ms | "
        f"{p['latency']['batch1_ms']:.2f} ms | {r['speedup_batch1']:.2f}x faster |",
        f"| time per example, batch 32 | {o['latency']['batch32_ms_per_example']:.2f} ms | "
        f"{p['latency']['batch32_ms_per_example']:.2f} ms | {r['speedup_batch32']:.2f}x faster |",
        "",
        "Latency: PyTorch fp32 on this machine, both models measured in the same run (medians of 5 "
        "interleaved rounds).",
        "",
        f"Removed ({len(r['removed'])}): {', '.join(r['removed']) or 'nothing'}.",
        "Approximate attention: "
        + (
            ", ".join(
                f"L{k} ({'top' if v.get('mode', 'topk') == 'topk' else 'sign-matching top'}-{v['k']})"
                for k, v in r["attention"].items()
            )
            or "no layer"
        )
        + ".",
        "",
        "Per-layer structure (heads/FFN neurons, '-' removed): "
        + " ".join("-" if l.get("removed") else f"{l['heads']}/{l['ffn']}" for l in p["structure"]),
    ]
    if r.get("recovery"):
        rec = r["recovery"]
        how = {
            "continue": "re-fine-tuned from the searched weights",
            "pretrained": "re-fine-tuned from the pre-trained checkpoint with the found structure (AxFormer)",
            "distill": "distilled from the original model (FastFormers)",
        }[rec["mode"]]
        lines += [
            "",
            f"Recovery: {how} in {rec['seconds']:.0f} s; held-out {main} before recovery "
            f"{rec['heldout_before']['metrics'][main]:.2f} (the table shows the recovered model).",
        ]
    for note in r["search"].get("attention_notes", []):
        lines += ["", f"Approximate attention: {note}."]
    if "cost_model" in r["search"]:
        lines += [
            "",
            f"Predicted {'speed-up' if r['goal'] == 'speed' else 'size reduction'} from the "
            f"calibrated cost model: {r['search']['predicted_ratio']:.2f}x.",
        ]
    for w in r.get("warnings", []):
        lines += ["", f"> Warning: {w}"]
    return "\n".join(lines) + "\n"
