"""The FastFormers recipe on MiniLM for SST-2 and MRPC, against the search (issue: distillation).

Usage:  python benchmarks/distill_glue.py [--tasks sst2 mrpc] [--data-dir ../shared/data/glue]
                                          [--heads 8 --ffn 768 --student-layers 3 --epochs 2 --max-train-examples 8000]

For each task, with the fine-tuned baseline (runs/baselines/T) as teacher:

    axformer optimize runs/baselines/T --strategy fastformers --student-layers 3 --heads 8 --ffn 768 --precision int8
    --until-stage export ...

(distil into 3 of the teacher's 6 layers, keep 8 of 12 heads and 768 of 1536 FFN
neurons per layer by gradient importance, distil again from the teacher, export
int8), then one ``axformer benchmark`` run with the teacher, every stage, and
the search's result at the same tolerance (runs/optimize/T-speed-recovered and
its int8 export), so all latency ratios come from the same run. Stage times are
the recipe's own wall times on this machine. Results: benchmarks/results/distill_T.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import onnxruntime
import torch
import transformers
from _common import run_axformer, searched_dir

from axformer.benchmark.run import BenchmarkConfig, benchmark
from axformer.tasks.sources import load_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="*", default=["sst2", "mrpc"])
    ap.add_argument("--data-dir", default=os.environ.get("AXFORMER_DATA_DIR", "../shared/data/glue"))
    ap.add_argument("--out", default="runs/distill")
    ap.add_argument("--student-layers", default="3")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=768)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--max-train-examples", type=int, default=8000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for task in args.tasks:
        teacher = Path("runs/baselines") / task
        if not (teacher / "metrics.json").exists():
            sys.exit(f"{task}: run benchmarks/finetune_baselines.py first")
        out = Path(args.out) / task
        recipe = out / "fastformers"
        commands = []
        cmd = [
            "axformer",
            "optimize",
            str(teacher),
            "--strategy",
            "fastformers",
            "--student-layers",
            args.student_layers,
            "--heads",
            str(args.heads),
            "--ffn",
            str(args.ffn),
            "--recover-epochs",
            str(args.epochs),
            "--recover-max-train-examples",
            str(args.max_train_examples),
            "--precision",
            "int8",
            "--until-stage",
            "export",
            "--scorer",
            "none",
            "--data-dir",
            args.data_dir,
            "-o",
            str(recipe),
        ]
        commands.append(" ".join(cmd))
        legacy = (
            recipe / "recipe.json"
        ).exists()  # a run made before the pipeline: the recipe exported its own int8 stage
        if not legacy and not (recipe / "4-export" / "export.json").exists():
            run_axformer(cmd)
        rec = json.loads((recipe / ("recipe.json" if legacy else "3-search/recipe.json")).read_text())
        stages = {s["stage"]: s for s in rec["stages"]}
        if not legacy:
            stages["4-export-int8"] = {
                "stage": "4-export-int8",
                "path": str(recipe / "4-export"),
                "seconds": json.loads((recipe / "times.json").read_text()).get("export"),
            }
            rec["stages"].append(stages["4-export-int8"])
        models = [str(teacher)] + [s["path"] for name, s in stages.items() if name != "teacher"]
        labels = {
            str(teacher): "teacher (6 layers, PyTorch)",
            stages["1-distilled"]["path"]: f"{args.student_layers}-layer student, distilled",
            stages["3-distilled-again"][
                "path"
            ]: f"+ pruned to {args.heads} heads / {args.ffn} FFN per layer, distilled again",
            stages["4-export-int8"]["path"]: "+ int8 export (ONNX Runtime)",
            stages["2-pruned"]["path"]: "(pruned, before the second distillation)",
        }
        searched = searched_dir(Path("runs/optimize") / f"{task}-speed-recovered")
        if (searched / "report.json").exists():
            art = out / "search-int8"
            cmd = [
                "axformer",
                "export",
                str(searched),
                "--precision",
                "int8",
                "--data-dir",
                args.data_dir,
                "-o",
                str(art),
            ]
            commands.append(" ".join(cmd))
            if not (art / "export.json").exists():
                run_axformer(cmd + ["--overwrite"])
            models += [str(searched), str(art)]
            labels[str(searched)] = "search: --goal speed --max-drop 1 --recover continue (PyTorch)"
            labels[str(art)] = "search result, int8 export"
        config = BenchmarkConfig(
            baseline_model=str(teacher), lengths=(128,), rounds=args.rounds, instances=0, memory=False
        )
        commands.append(
            f"axformer benchmark {' '.join(models)} --baseline-model {teacher} --lengths 128 --rounds "
            f"{args.rounds} --instances 0 --no-memory -o {out / 'bench'} --data-dir {args.data_dir}"
        )
        result = benchmark(
            models,
            out / "bench",
            load_task(task, args.data_dir),
            args.data_dir,
            config,
            progress=lambda m: print(m, flush=True),
        )
        rows = {r["path"]: r for r in result["rows"] if not r["baseline"]}
        base_rows = [r for r in result["rows"] if r["baseline"]]
        ref = next(r for r in base_rows if not r["padded"] and r["kind"] == "pytorch")
        main = result["task"]["main_metric"]
        by_path = {s["path"]: s for s in rec["stages"]}
        head = (
            f"| model | dev {main} | dev, other metrics | parameters | size | batch-1 p50 "
            "| speed-up vs teacher | batch-32 throughput | stage time |"
        )
        lines = [
            f"# FastFormers recipe vs the search: MiniLM on {task.upper()}",
            "",
            f"Hardware: {platform.machine()}, {os.cpu_count()} cores, no GPU; torch "
            f"{torch.__version__}, transformers {transformers.__version__}, "
            f"onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}. Latency: "
            "batch 1 over the dev texts with dynamic length, median of "
            f"{args.rounds} interleaved rounds, all rows measured in the same run. Distillation on a "
            f"seeded subset of {args.max_train_examples} training "
            f"examples, {args.epochs:g} epochs per stage (soft cross-entropy to the teacher, T=1), "
            "checkpoint chosen on the held-out split; dev only reports.",
            "",
            head,
            "|" + "---|" * (head.count("|") - 1),
        ]
        order = (
            [ref]
            + [r for r in result["rows"] if r["baseline"] and r["kind"] == "onnx" and "int8" in r["name"]]
            + [rows[m] for m in models[1:] if m in rows]
        )
        for r in order:
            name = (
                labels.get(r["path"], r["name"])
                if not r["baseline"]
                else r["name"] + (" = teacher" if r is ref else "")
            )
            if r["path"] == stages["2-pruned"]["path"]:
                name = labels[r["path"]]
            other = ", ".join(f"{k} {v:.2f}" for k, v in r["dev"]["metrics"].items() if k != main) or "-"
            t = by_path.get(r["path"], {}).get("seconds")
            lines.append(
                f"| {name} | {r['dev']['metrics'][main]:.2f} | {other} | {r['parameters'] / 1e6:.2f} "
                f"M | {r['size_bytes'] / 2**20:.1f} MiB | "
                f"{r['timing']['latency_p50_ms']:.2f} ms | "
                f"{ref['timing']['latency_p50_ms'] / r['timing']['latency_p50_ms']:.2f}x | "
                f"{r['timing']['throughput_per_s']:.0f}/s | {'-' if t is None else f'{t / 60:.1f} min'} |"
            )
        lines += (
            ["", "Commands:", ""]
            + [f"- `{c}`" for c in commands]
            + [
                "",
                f"Benchmark wall time: {result['seconds'] / 60:.1f} min. Full benchmark table:",
                "",
                (out / "bench" / "benchmark.md").read_text(),
            ]
        )
        Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
        Path(f"benchmarks/results/distill_{task}.md").write_text("\n".join(lines) + "\n")
        print(f"written benchmarks/results/distill_{task}.md")


if __name__ == "__main__":
    main()
