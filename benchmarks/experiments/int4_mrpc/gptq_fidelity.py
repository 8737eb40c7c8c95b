"""GPTQ against round-to-nearest for the int4 matrices of the size preset, judged on held-out examples only.

Usage (repository root): python benchmarks/experiments/int4_mrpc/gptq_fidelity.py TASK [CALIBRATION_EXAMPLES]
(``--table``: rewrite gptq_fidelity.md from the stored results only; the SST-2 row's seconds were timed while
another export ran)

The fine-tuned baseline ``runs/baselines/TASK`` in PyTorch, every encoder matrix (Q, K, V, output, FFN up and
down) rounded to ONNX Runtime's symmetric int4 grid in blocks of 32 (the size preset's format), by
round-to-nearest (axformer's export until now) and by GPTQ (``axformer.surgery.fake_quant.gptq_round``) with
Hessians from CALIBRATION_EXAMPLES (default 512) texts of the part of the training data the model was
fine-tuned on. Tables and head stay fp32 here: this isolates the matrices. Scored on every held-out example
(deciding and confirming parts; the calibration never sees them) against the fp32 model: logit mean squared
error, the share of answers that change, and the task's main metric. The dev set is not read: this is the
measurement a default may be chosen on."""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from axformer.benchmark.run import environment
from axformer.data.batching import encode
from axformer.evaluation.context import load_context
from axformer.evaluation.scores import score
from axformer.inference import run_model
from axformer.surgery.adapters import get_adapter
from axformer.surgery.fake_quant import fake_quantize, gptq_round
from axformer.surgery.prune import current_structure
from axformer.tasks.splits import apply_split

OUT_DIR = Path("benchmarks/experiments/int4_mrpc/results")
TABLE_ONLY = sys.argv[1:2] == ["--table"]  # only rewrite the table from the stored results


def write_table() -> None:
    runs = [json.loads(f.read_text()) for f in sorted(OUT_DIR.glob("gptq_fidelity_*.json"))]
    env = runs[0]["environment"]
    lines = [
        "# GPTQ against round-to-nearest, int4 encoder matrices in blocks of 32, held-out examples",
        "",
        f"Produced by `python benchmarks/experiments/int4_mrpc/gptq_fidelity.py TASK` ({env['machine']}, "
        f"{env['cpu']}, {env['cpu_flags'] or 'no AVX flags read'}, {env['cores']} cores; torch {env['torch']}, "
        f"transformers {env['transformers']}). Model: `runs/baselines/TASK` in PyTorch, every encoder matrix "
        "rounded to ONNX Runtime's symmetric int4 grid (tables and head in fp32). GPTQ's Hessians from 512 texts "
        "of the training part; scored on every held-out example (never a calibration text; the dev set is not "
        "read). Logit MSE and changed answers against the fp32 model.",
        "",
        "| task | held-out examples | fp32 main metric | logit MSE: nearest / GPTQ (ratio) | changed answers: nearest "
        "/ GPTQ | main metric: nearest / GPTQ | GPTQ seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        near, gptq = r["rows"]
        changed = (
            "-"
            if near["changed_answers_pct"] is None
            else f"{near['changed_answers_pct']:.2f}% / {gptq['changed_answers_pct']:.2f}%"
        )
        lines.append(
            f"| {r['task']} ({r['main_metric']}) | {r['heldout_examples']} | {r['fp32']:.2f} | "
            f"{near['logit_mse']:.4f} / {gptq['logit_mse']:.4f} ({gptq['logit_mse'] / near['logit_mse']:.2f}) | "
            f"{changed} | {near['main']:.2f} / {gptq['main']:.2f} | {gptq['seconds']:.1f} |"
        )
    (OUT_DIR.parent / "gptq_fidelity.md").write_text("\n".join(lines) + "\n")


if TABLE_ONLY:
    write_table()
    sys.exit(0)
task = sys.argv[1]
n_calib = int(sys.argv[2]) if len(sys.argv) > 2 else 512
ctx = load_context(f"runs/baselines/{task}", data_dir="../shared/data/glue", max_examples=None, device="cpu")
spec, net = ctx.data.spec, ctx.model.eval()
train, _ = apply_split(ctx.data, ctx.split)
rng = np.random.default_rng(0)
calib = train.subset(rng.permutation(len(train))[:n_calib], "calibration")
linears = get_adapter(net).named_linears(net, current_structure(net).present_layers)

t0 = time.perf_counter()
hessians = {name: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for _, name, m in linears}


def accumulate(name):
    def hook(module, args):  # returns None: the input passes on unchanged
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        hessians[name].add_(x.T @ x)

    return hook


hooks = [m.register_forward_pre_hook(accumulate(name)) for _, name, m in linears]
run_model(net, encode(ctx.tokenizer, calib, ctx.record.max_seq_length), spec.is_regression, 1, "cpu")  # no padding
for h in hooks:
    h.remove()
hessian_seconds = time.perf_counter() - t0

original = {name: m.weight.detach().clone() for _, name, m in linears}
reference = run_model(net, ctx.encoded, spec.is_regression, 64, "cpu")
ref_scores = score(spec, ctx.heldout.labels, reference)
rows = []
for method in ("round-to-nearest", "GPTQ"):
    t0 = time.perf_counter()
    with torch.no_grad():
        for _, name, m in linears:
            w = original[name]
            m.weight.copy_(fake_quantize(w, 4, 32) if method == "round-to-nearest" else gptq_round(w, hessians[name]))
    seconds = time.perf_counter() - t0
    out = run_model(net, ctx.encoded, spec.is_regression, 64, "cpu")
    s = score(spec, ctx.heldout.labels, out)
    preds, ref_preds = out.predictions(spec.is_regression), reference.predictions(spec.is_regression)
    rows.append(
        {
            "method": method,
            "logit_mse": float(((out.logits - reference.logits) ** 2).mean()),
            "changed_answers_pct": None if spec.is_regression else float(100 * (preds != ref_preds).mean()),
            "main": s.metrics[spec.main_metric],
            "seconds": seconds,
        }
    )
    print(rows[-1], flush=True)

result = {
    "task": task,
    "main_metric": spec.main_metric,
    "heldout_examples": len(ctx.heldout),
    "calibration_examples": len(calib),
    "hessian_seconds": hessian_seconds,
    "fp32": ref_scores.metrics[spec.main_metric],
    "rows": rows,
    "environment": environment(),
}
OUT_DIR.mkdir(parents=True, exist_ok=True)
(OUT_DIR / f"gptq_fidelity_{task}.json").write_text(json.dumps(result, indent=1))
write_table()
print(json.dumps(result, indent=1))
