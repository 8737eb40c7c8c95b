"""Approximate attention on MiniLM: accuracy where the search selects it, and its cost at 128/256/512 tokens (issue:
approximate attention).

Usage:  python benchmarks/attention_glue.py [--tasks sst2 rte mrpc] [-k 30] [--data-dir ../shared/data/glue]

1. Accuracy. For each task and each mode (top-K hard attention, AxFormer; sign-matching attention), the
   attention phase of AxFormer's search alone (no pruning), decisions on the held-out split:

       axformer optimize runs/baselines/T --goal accuracy --attention MODE -k K --prune-layers none --until-stage
       search --scorer none -o runs/attention/T-MODE

   For scale, each approximation forced into all six layers (no search, no acceptance test): the same
   held-out split (up to 2,000 examples, as the search uses) and dev set, reference kernels.

2. Cost. Batch-1 latency of the SST-2 baseline on synthetic inputs of 128, 256 and 512 tokens, all variants in
   interleaved rounds of the same run: dense attention (transformers' SDPA, the stock model), the attention
   kernel replaced by a no-op (so dense minus no-op is the attention's share), and top-K / sign-matching
   attention in every layer, reference (dense, masked) and gather (K keys only) kernels; then the same in
   ONNX Runtime (dense exported plain and fused by the transformer optimizer; gather kernels exported with
   TopK/GatherElements). Results: benchmarks/results/attention.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
from pathlib import Path

import onnxruntime
import torch
import transformers
from _common import run_axformer, searched_dir
from transformers import AttentionInterface

from axformer.attention.hard import set_attention
from axformer.export.fusion import fuse
from axformer.export.onnx_export import export_onnx, onnx_logits, onnx_session
from axformer.models.loading import load_model
from axformer.runtime.timing import interleaved_medians
from axformer.surgery.adapters import get_adapter

LENGTHS = (128, 256, 512)


def _noop_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    return value.transpose(
        1, 2
    ).contiguous(), None  # no scores, no softmax, no value product: what attention costs beyond this


AttentionInterface.register("axformer_benchmark_noop", _noop_attention)


def accuracy_runs(args) -> list[dict]:
    rows = []
    for task in args.tasks:
        for mode in ("topk", "sign"):
            out = Path(args.out) / f"{task}-{mode}"
            cmd = [
                "axformer",
                "optimize",
                f"runs/baselines/{task}",
                "--goal",
                "accuracy",
                "--attention",
                mode,
                "-k",
                str(args.k),
                "--prune-layers",
                "none",
                "--until-stage",
                "search",
                "--scorer",
                "none",
                "--data-dir",
                args.data_dir,
                "-o",
                str(out),
            ]
            if not (searched_dir(out) / "report.json").exists():
                run_axformer(cmd)
            report = searched_dir(out) / "report.json"
            rows.append(
                {"task": task, "mode": mode, "report": json.loads(report.read_text()), "command": " ".join(cmd)}
            )
    return rows


@torch.inference_mode()
def forced_all_layers(args) -> dict:
    """Held-out and dev main metric with each approximation in every layer (what the search protects against), and the
    token counts of both splits: K at or above an input's length is dense attention for it."""
    import numpy as np

    from axformer.data.batching import encode
    from axformer.evaluation import score
    from axformer.evaluation.context import load_context
    from axformer.inference import run_model

    result = {}
    for task in args.tasks:
        ctx = load_context(f"runs/baselines/{task}", None, args.data_dir, 2000, 0, "cpu", False)
        spec = ctx.data.spec
        dev_name, dev = next(iter(ctx.data.dev.items()))
        dev_enc = encode(ctx.tokenizer, dev, ctx.record.max_seq_length)
        layers = list(range(len(get_adapter(ctx.model).layers(ctx.model))))
        rows = {}
        for mode in ("dense", "topk", "sign"):
            m = copy.deepcopy(ctx.model).eval()
            if mode != "dense":
                set_attention(
                    m, {l: {"mode": mode, "k": args.k, "renormalize": False, "kernel": "reference"} for l in layers}
                )
            rows[mode] = {
                split: score(spec, enc_labels, run_model(m, enc, spec.is_regression, 64, "cpu")).metrics[
                    spec.main_metric
                ]
                for split, enc, enc_labels in (
                    ("heldout", ctx.encoded, ctx.heldout.labels),
                    (dev_name, dev_enc, dev.labels),
                )
            }
            print(task, mode, rows[mode], flush=True)
        lengths = {
            name: {"median": float(np.median(n)), "longer_than_k": float((n > args.k).mean())}
            for name, n in (("heldout", ctx.encoded.lengths), ("dev", dev_enc.lengths))
        }
        result[task] = {"dev_split": dev_name, "main_metric": spec.main_metric, "rows": rows, "lengths": lengths}
    return result


def _variants(model, k: int) -> dict:
    layers = list(range(len(get_adapter(model).layers(model))))
    out = {"dense (SDPA)": model}
    noop = copy.deepcopy(model)
    noop.set_attn_implementation("axformer_benchmark_noop")
    out["no attention kernel"] = noop
    for mode in ("topk", "sign"):
        for kernel in ("reference", "gather"):
            m = copy.deepcopy(model)
            set_attention(
                m, {l: {"mode": mode, "k": k, "renormalize": mode == "topk", "kernel": kernel} for l in layers}
            )
            out[f"{'top-K' if mode == 'topk' else 'sign-matching'} {kernel}"] = m
    return out


@torch.inference_mode()
def timing(args) -> dict:
    torch.manual_seed(0)
    model = load_model(f"runs/baselines/{args.timing_task}").eval()
    variants = _variants(model, args.k)
    results: dict = {"pytorch": {}, "onnxruntime": {}}
    for n in LENGTHS:
        ids = torch.randint(1000, 20000, (1, n))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
        med = interleaved_medians(
            {name: (lambda m=m: m(**batch)) for name, m in variants.items()}, repeats=args.repeats, rounds=args.rounds
        )
        results["pytorch"][n] = {k: 1e3 * v for k, v in med.items()}
        print(n, "pytorch", {k: round(1e3 * v, 2) for k, v in med.items()}, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        dense = export_onnx(variants["dense (SDPA)"], Path(tmp) / "dense.onnx")
        sessions["dense, plain"] = onnx_session(dense)
        fused = fuse(
            dense,
            Path(tmp) / "fused.onnx",
            model.config.model_type,
            model.config.hidden_size,
            model.config.num_attention_heads,
        ).path
        sessions["dense, fused"] = onnx_session(fused)
        for name in ("top-K gather", "sign-matching gather"):
            sessions[name] = onnx_session(export_onnx(variants[name], Path(tmp) / f"{name.replace(' ', '_')}.onnx"))
        for n in LENGTHS:
            ids = torch.randint(1000, 20000, (1, n))
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
            med = interleaved_medians(
                {name: (lambda s=s: onnx_logits(s, batch)) for name, s in sessions.items()},
                repeats=args.repeats,
                rounds=args.rounds,
            )
            results["onnxruntime"][n] = {k: 1e3 * v for k, v in med.items()}
            print(n, "onnxruntime", {k: round(1e3 * v, 2) for k, v in med.items()}, flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="*", default=["sst2", "rte", "mrpc"])
    ap.add_argument("--data-dir", default=os.environ.get("AXFORMER_DATA_DIR", "../shared/data/glue"))
    ap.add_argument("--out", default="runs/attention")
    ap.add_argument("-k", type=int, default=30)
    ap.add_argument("--timing-task", default="sst2")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--only",
        choices=["accuracy", "forced", "timing"],
        help="run one part now (timing wants a quiet machine); the table needs all",
    )
    args = ap.parse_args()
    rows = accuracy_runs(args) if args.only in (None, "accuracy") else []
    forced_file = Path(args.out) / "forced_all_layers.json"
    if args.only in (None, "forced") and not forced_file.exists():
        forced_file.parent.mkdir(parents=True, exist_ok=True)
        forced_file.write_text(json.dumps(forced_all_layers(args), indent=1))
    timing_file = Path(args.out) / "timing.json"
    if args.only in (None, "timing") and not timing_file.exists():
        timing_file.parent.mkdir(parents=True, exist_ok=True)
        timing_file.write_text(json.dumps(timing(args), indent=1))
    if args.only is not None:
        return
    t = {engine: {int(n): v for n, v in per.items()} for engine, per in json.loads(timing_file.read_text()).items()}
    lines = [
        "# Approximate attention on MiniLM: top-K hard attention and sign-matching attention",
        "",
        f"Produced by `python benchmarks/attention_glue.py -k {args.k}` on {platform.machine()}, "
        f"{os.cpu_count()} cores, no GPU; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, Python {platform.python_version()}.",
        "",
        "## Accuracy: the search's attention phase alone (AxFormer's acceptance rule, held-out "
        "decisions, dev only reports)",
        "",
        "| task | mode (K) | layers selected | held-out main: dense -> approx | dev main: dense -> "
        "approx | batch-1 speed-up on dev texts (PyTorch, reference kernel, the search report's own) "
        "|",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        rep = r["report"]
        main = rep["task"]["main_metric"]
        o, p = rep["results"]["original"], rep["results"]["optimized"]
        dev = next(
            k for k in o if k not in ("heldout", "parameters", "flops_per_token", "structure", "size_bytes", "latency")
        )
        layers = ", ".join(f"L{k}" for k in rep["attention"]) or "none"
        lines.append(
            f"| {r['task']} | {'top-K' if r['mode'] == 'topk' else 'sign-matching'} ({args.k}) | "
            f"{layers} | {o['heldout']['metrics'][main]:.2f} -> {p['heldout']['metrics'][main]:.2f} | "
            f"{o[dev]['metrics'][main]:.2f} -> {p[dev]['metrics'][main]:.2f} | {rep['speedup_batch1']:.2f}x |"
        )
    lines += ["", "Commands:", ""] + [f"- `{r['command']}`" for r in rows]
    if forced_file.exists():
        forced = json.loads(forced_file.read_text())
        lines += [
            "",
            f"For scale: each approximation forced into all 6 layers (K={args.k}, no search, no "
            "acceptance test), same held-out split and dev set:",
            "",
            "| task | metric | dense: held-out / dev | top-K everywhere | sign-matching everywhere | "
            f"median tokens, held-out / dev | inputs longer than K={args.k}, held-out / dev |",
            "|---|---|---|---|---|---|---|",
        ]
        for task, f in forced.items():
            cell = {mode: f"{v['heldout']:.2f} / {v[f['dev_split']]:.2f}" for mode, v in f["rows"].items()}
            n = f["lengths"]
            lines.append(
                f"| {task} | {f['main_metric']} | {cell['dense']} | {cell['topk']} | {cell['sign']} | "
                f"{n['heldout']['median']:.0f} / {n['dev']['median']:.0f} | "
                f"{100 * n['heldout']['longer_than_k']:.0f}% / {100 * n['dev']['longer_than_k']:.0f}% |"
            )
        lines += [
            "",
            f"Only inputs longer than K are approximated at all: at K={args.k}, most of SST-2's "
            "held-out phrases (the training split the search "
            "decides on) are attended densely, so its decisions there say little about its longer dev sentences.",
        ]
    for engine, title in (("pytorch", "PyTorch"), ("onnxruntime", "ONNX Runtime")):
        names = list(next(iter(t[engine].values())))
        base = names[0]
        lines += [
            "",
            f"## Cost: batch-1 latency, {title}, synthetic inputs, approximate attention (K={args.k}) in all 6 layers",
            "",
            "| variant | " + " | ".join(f"{n} tokens" for n in LENGTHS) + " |",
            "|---|" + "---|" * len(LENGTHS),
        ]
        for name in names:
            cells = [f"{t[engine][n][name]:.2f} ms ({t[engine][n][base] / t[engine][n][name]:.2f}x)" for n in LENGTHS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if engine == "pytorch":
            share = [
                100
                * (t[engine][n]["dense (SDPA)"] - t[engine][n]["no attention kernel"])
                / t[engine][n]["dense (SDPA)"]
                for n in LENGTHS
            ]
            lines += [
                "",
                "Attention kernel's share of dense end-to-end time (dense minus no-op kernel): "
                + ", ".join(f"{s:.0f}% at {n}" for s, n in zip(share, LENGTHS))
                + ".",
            ]
    lines += [
        "",
        "Ratios in parentheses: speed-up against the first row of the table, same run (medians of "
        f"{args.rounds} interleaved rounds x {args.repeats} calls).",
        "",
        "Where a ratio is below 1.00x the approximation is slower than dense attention at that "
        "length. `axformer optimize --goal speed` measures "
        "both modes against dense at the task's typical length before it tries them, tries them only "
        "where they are faster, and says in its "
        "report why it skipped them otherwise; the accuracy goal (AxFormer) applies them for "
        "accuracy, not speed. The kernels alone on a GPU: "
        "benchmarks/results/attention_kernels_h100.txt (`python benchmarks/attention_kernels.py --device cuda`).",
    ]
    Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
    Path("benchmarks/results/attention.md").write_text("\n".join(lines) + "\n")
    print("written benchmarks/results/attention.md")


if __name__ == "__main__":
    main()
