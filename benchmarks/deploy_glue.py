"""Deployment benchmark of MiniLM on SST-2 and MRPC (issue: export and benchmark).

Usage:  python benchmarks/deploy_glue.py [--tasks sst2 mrpc] [--data-dir ../shared/data/glue] [--price-per-hour 0.085]

For each task it takes the fine-tuned baseline (runs/baselines/T) and the
speed-optimized model (runs/optimize/T-speed-recovered, else T-speed; see
benchmarks/optimize_glue.py), exports the optimized model as ONNX fp32, int8
and mixed precision with the commands printed in the table, and runs
``axformer benchmark`` on all of them together with the four baselines
(PyTorch padded, PyTorch dynamic length, ONNX Runtime fp32, ONNX Runtime int8
of the unpruned model), in one run. The cumulative view follows FastFormers:
padded -> dynamic length -> ONNX Runtime -> int8 -> pruning (int8) ->
multi-instance. The price defaults to the on-demand list price of a 2-vCPU
compute VM (AWS c6i.large, us-east-1, USD 0.085/h); pass your own.
Results: benchmarks/results/deploy_T.md and deploy_T.png.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from _common import run_axformer, searched_dir

from axformer.benchmark.run import BASELINE_CHAIN, BenchmarkConfig, benchmark
from axformer.tasks.sources import load_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="*", default=["sst2", "mrpc"])
    ap.add_argument("--data-dir", default=os.environ.get("AXFORMER_DATA_DIR", "../shared/data/glue"))
    ap.add_argument("--price-per-hour", type=float, default=0.085)
    ap.add_argument("--out", default="runs/deploy")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    for task in args.tasks:
        base = Path("runs/baselines") / task
        searched = [searched_dir(Path("runs/optimize") / f"{task}-{goal}") for goal in ("speed-recovered", "speed")]
        opt = next((p for p in searched if (p / "report.json").exists()), None)
        if not (base / "metrics.json").exists() or opt is None:
            sys.exit(f"{task}: run benchmarks/finetune_baselines.py and benchmarks/optimize_glue.py first")
        out = Path(args.out) / task
        commands = []
        arts = {}
        for precision in ("fp32", "int8", "mixed"):
            target = out / f"optimized-onnx-{precision}"
            cmd = [
                "axformer",
                "export",
                str(opt),
                "--precision",
                precision,
                "--data-dir",
                args.data_dir,
                "-o",
                str(target),
            ]
            commands.append(" ".join(cmd))
            if not (target / "export.json").exists():
                run_axformer(cmd + ["--overwrite"])
            arts[precision] = str(target)
        models = [str(opt), arts["fp32"], arts["int8"], arts["mixed"]]
        chain = [*BASELINE_CHAIN, arts["int8"]]
        config = BenchmarkConfig(
            baseline_model=str(base), fixed_batch=8, rounds=args.rounds, price_per_hour=args.price_per_hour, chain=chain
        )
        data = load_task(task, args.data_dir)
        chain_opts = " ".join(f"--chain '{c}'" for c in chain)
        commands.append(
            f"axformer benchmark {' '.join(models)} --baseline-model {base} --price-per-hour "
            f"{args.price_per_hour} --fixed-batch 8 --rounds {args.rounds} {chain_opts} -o "
            f"{out / 'bench'} --data-dir {args.data_dir}"
        )
        result = benchmark(models, out / "bench", data, args.data_dir, config, progress=lambda m: print(m, flush=True))
        md = (out / "bench" / "benchmark.md").read_text()
        names = "\n".join(
            f"- `{Path(m).name}`: {desc}"
            for m, desc in zip(
                models,
                (
                    f"the speed-optimized model ({opt}), PyTorch",
                    "its ONNX fp32 export (fused)",
                    "its int8 export",
                    "its mixed-precision export (fp32/int8/int4 by sensitivity)",
                ),
            )
        )
        text = (
            f"{md}\nRows:\n\n{names}\n\nProduced by `python benchmarks/deploy_glue.py --tasks {task}`; commands:\n\n"
            + "\n".join(f"- `{c}`" for c in commands)
            + f"\n\nBenchmark wall time: {result['seconds'] / 60:.1f} min.\n\n![accuracy vs "
            f"latency](deploy_{task}.png)\n"
        )
        Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
        Path(f"benchmarks/results/deploy_{task}.md").write_text(text)
        shutil.copy(out / "bench" / "tradeoff.png", f"benchmarks/results/deploy_{task}.png")
        print(f"written benchmarks/results/deploy_{task}.md")


if __name__ == "__main__":
    main()
