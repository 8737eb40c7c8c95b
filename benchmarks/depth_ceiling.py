"""How fast can a student of each depth be? The batch-1 ceiling of issue 17's 4x, accuracy aside.

Usage:  python benchmarks/depth_ceiling.py --task stsb [--layers 5 4 3 2 1] [--data-dir DIR] [--out runs/depth]

Students of the task's baseline (``runs/baselines/TASK``, ``benchmarks/finetune_baselines.py``) with fewer of its
layers (spread evenly, first and last kept, every head and neuron), and the one-layer student narrowed to a
quarter of its heads and FFN neurons (the smallest encoder that still is one), each exported to int8 by
``axformer export`` as the pipeline exports its artifacts, then benchmarked in one ``axformer benchmark`` run
against ONNX Runtime int8 of the unpruned model: the same dev requests, interleaved rounds, each runtime's default
threads, one thread per row, and each row at its faster count. The students are not trained (time does not
depend on the weights), so their dev column means nothing and is not reported: what each depth keeps of a task is
measured elsewhere (STS-B: three layers kept the point, two lost 17.7 Pearson; docs/promises.md, session 27).
What this measures is the speed a depth allows at best, so that "4x was not reached" can say whether accuracy or
the runtime's fixed costs stand in the way. Results: benchmarks/results/depth_ceiling.{md,json} (one section per
task, accumulated across runs).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
from pathlib import Path

from _common import environment_line, run_axformer

from axformer.benchmark.result import BenchmarkResult, batch1_speedups
from axformer.benchmark.run import DYNAMIC, ORT_INT8
from axformer.distill.students import derive_student, parse_layers, prune_by_importance
from axformer.models.loading import load_model, load_tokenizer, save_model
from axformer.models.record import ModelRecord, task_for
from axformer.surgery.prune import count_parameters, current_structure

STORE = Path("benchmarks/results/depth_ceiling.json")
TABLE = Path("benchmarks/results/depth_ceiling.md")


def _student(base: Path, out: Path, layers: int, narrow: bool, data) -> Path:
    """The baseline reduced to ``layers`` of its layers (and, ``narrow``, a quarter of its heads and neurons,
    the first ones: which ones does not change the time), saved as a model axformer exports like any other."""
    if (out / "config.json").exists():
        return out
    teacher = load_model(base, data.spec, device="cpu")
    present = current_structure(teacher).present_layers
    net = derive_student(copy.deepcopy(teacher), parse_layers(str(layers), present))
    if narrow:
        s = current_structure(net)
        import numpy as np

        order = -np.tile(np.arange(max(s.num_heads, s.ffn_dim), dtype=float), (len(s.layers), 1))
        target = prune_by_importance(
            s, order[:, : s.num_heads], order[:, : s.ffn_dim], max(1, s.num_heads // 4), max(1, s.ffn_dim // 4)
        )
        net = derive_student(net, target=target)
    save_model(net, load_tokenizer(base), out)
    record = ModelRecord.load(base)
    record.history = [*record.history, {"stage": "derived for timing only (untrained)", "layers": layers}]
    record.save(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="stsb")
    ap.add_argument("--layers", nargs="*", type=int, default=[5, 4, 3, 2, 1])
    ap.add_argument("--data-dir", default=os.environ.get("AXFORMER_DATA_DIR", "../shared/data/glue"))
    ap.add_argument("--out", default="runs/depth")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    base = Path("runs/baselines") / args.task
    if not (base / "config.json").exists():
        raise SystemExit(f"no fine-tuned baseline at {base}; run benchmarks/finetune_baselines.py first")
    data = task_for(str(base), data_dir=args.data_dir)
    work = Path(args.out) / args.task
    variants = [(f"layers-{n}", n, False) for n in args.layers] + [("layers-1-quarter-width", 1, True)]
    artifacts, params = [], {}
    for name, layers, narrow in variants:
        student = _student(base, work / name, layers, narrow, data)
        params[name] = count_parameters(load_model(student, data.spec, device="cpu"))
        art = work / f"{name}-int8"
        if not (art / "export.json").exists():
            run_axformer(["axformer", "export", str(student), "-o", str(art), "--precision", "int8", "--max-drop",
                          "100", "--data-dir", args.data_dir])  # fmt: skip
        artifacts.append(art)
    bench = work / "benchmark"
    cmd = ["axformer", "benchmark", *map(str, artifacts), "-o", str(bench), "--baseline-model", str(base),
           "--data-dir", args.data_dir, "--lengths", "", "--no-memory", "--instances", "0",
           "--breakdown-requests", "0", "--rounds", str(args.rounds)]  # fmt: skip
    code = run_axformer(cmd)
    result = BenchmarkResult.from_dict(json.loads((bench / "benchmark.json").read_text()))
    original, int8 = result.row(DYNAMIC), result.row(ORT_INT8)
    rows = []
    for (name, layers, narrow), art in zip(variants, artifacts, strict=True):
        row = next(r for r in result.rows if Path(r.path) == art or r.path == str(art))
        rows.append(
            {
                "variant": name,
                "layers": layers,
                "quarter_width": narrow,
                "parameters": params[name],
                "p50_ms": row.timing.latency_p50_ms,
                "p50_ms_one_thread": row.timing_one_thread.latency_p50_ms if row.timing_one_thread else None,
                **batch1_speedups(original, row, int8),
            }
        )
    record = {
        "task": args.task,
        "ort_int8_p50_ms": int8.timing.latency_p50_ms,
        "ort_int8_p50_ms_one_thread": int8.timing_one_thread.latency_p50_ms if int8.timing_one_thread else None,
        "rows": rows,
        "command": shlex.join(cmd),
        "requests": result.config.get("latency_examples"),
        "code": code,
        "environment": environment_line(),
        "dev_examples": result.task.dev_examples,
    }
    store = json.loads(STORE.read_text()) if STORE.exists() else []
    store = [r for r in store if r["task"] != args.task] + [record]
    STORE.write_text(json.dumps(store, indent=1) + "\n")
    TABLE.write_text(_markdown(store))
    print(TABLE.read_text())


def _markdown(store: list[dict]) -> str:
    def x(v):
        return "-" if v is None else f"{v:.2f}x"

    lines = [
        "# How fast can a student of each depth be? Batch-1 ceiling against ONNX Runtime int8 of the unpruned model",
        "",
        "Produced by `python benchmarks/depth_ceiling.py --task TASK`: untrained students of the task's baseline "
        "(MiniLM, 6 layers of 12 heads and 1,536 FFN neurons), exported to int8 by `axformer export`, benchmarked "
        "in one `axformer benchmark` run with ONNX Runtime int8 of the unpruned model (dev requests at their own "
        "length, medians of interleaved rounds). The time of a model does not depend on its weights; what each "
        "depth keeps of the task is measured by the recipe's jobs (docs/promises.md).",
    ]
    for r in store:
        lines += [
            "",
            f"## {r['task']}, code {r['code']}, {r['environment']}",
            "",
            f"`{r['command']}` ({r['requests']} requests from the {r['dev_examples']} dev examples, every round). "
            "ONNX Runtime int8 of the unpruned model: "
            f"{r['ort_int8_p50_ms']:.2f} ms at batch 1 with default threads"
            + (
                f", {r['ort_int8_p50_ms_one_thread']:.2f} ms with one thread."
                if r["ort_int8_p50_ms_one_thread"]
                else "."
            ),
            "",
            "| student (int8) | parameters | batch-1 p50 ms | vs ORT int8, default threads | one thread per row | "
            "each at its faster count |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {v['variant']} | {v['parameters'] / 1e6:.2f} M | {v['p50_ms']:.2f} | "
            f"{x(v.get('speedup_vs_ort_int8'))} | {x(v.get('speedup_vs_ort_int8_one_thread'))} | "
            f"{x(v.get('speedup_vs_ort_int8_faster_threads'))} |"
            for v in r["rows"]
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
