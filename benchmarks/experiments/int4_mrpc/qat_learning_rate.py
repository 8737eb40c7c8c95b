"""Quantization-aware distillation of the MRPC baseline into itself (nothing removed, int4 grid: matrices in blocks
of 32 with Q/K/V, tables in blocks of 128, as smallest-within-1) at the learning rates given: F1 and accuracy of
the PyTorch model (weights on the grid, vocabulary not pruned) on the decision part, the confirmation part and dev.

Usage (repository root): python benchmarks/experiments/int4_mrpc/qat_learning_rate.py 3e-5 [1e-4 ...]"""

import json
import sys

from axformer.distill import DistillConfig, distill
from axformer.evaluation import evaluate, score
from axformer.evaluation.context import load_context
from axformer.inference import run_model
from axformer.models.loading import load_model

base, data_dir = "runs/baselines/mrpc", "../shared/data/glue"
ctx = load_context(base, None, data_dir, 2000, 0, "cpu", confirm_fraction=0.4)


def judge(path):
    net = load_model(path, ctx.data.spec).eval()
    out = {}
    for name, split, enc in (
        ("decision", ctx.heldout, ctx.encoded),
        ("confirmation", ctx.confirmation, ctx.confirmation_encoded),
    ):
        out[name] = score(ctx.data.spec, split.labels, run_model(net, enc, False, 64, "cpu")).metrics
    out["dev"] = evaluate(str(path), None, data_dir, splits=("dev",), device="cpu").splits["dev"].metrics
    return out


print("original", json.dumps(judge(base)), flush=True)
for lr in map(float, sys.argv[1:]):
    cfg = DistillConfig(
        epochs=1.92431,
        learning_rate=lr,
        batch_size=32,
        max_seq_length=128,
        device="cpu",
        selection_positions=[int(i) for i in ctx.decision_pool],
        qat_block_size=32,
        qat_attention_inputs=True,
        qat_table_block_size=128,
    )
    res = distill(base, f"runs/experiments/qat/mrpc-{lr}", student=base, data=ctx.data, config=cfg, overwrite=True)
    print(lr, json.dumps(judge(res.output)), flush=True)
