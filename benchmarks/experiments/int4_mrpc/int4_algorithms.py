"""int4 algorithms on one model: ONNX Runtime RTN symmetric/asymmetric and HQQ, blocks of 32 and 16, the size
preset's artifact otherwise (int4 tables in blocks of 128, pruned vocabulary, trimmed positions); held-out and dev F1.

Usage (repository root): python benchmarks/experiments/int4_mrpc/int4_algorithms.py mrpc runs/size/mrpc/3-search
It swaps axformer.export.quantize.quantize_int4 for a variant per row (an experiment, not a code path)."""

import json
import sys
import time
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantFormat
from onnxruntime.quantization.matmul_nbits_quantizer import (
    DefaultWeightOnlyQuantConfig,
    HQQWeightOnlyQuantConfig,
    MatMulNBitsQuantizer,
)

import axformer.export.quantize as Q
from axformer.evaluation import evaluate
from axformer.export.artifact import ExportConfig, export_model
from axformer.export.quantize import quiet_onnxruntime
from axformer.surgery.vocabulary import VocabularyConfig

variant = {}


def patched(source, target, nodes=None, block_size=32, op_types=("MatMul",)):
    algo, sym, bs = variant["algo"], variant["sym"], variant.get("bs") or block_size
    if "Gather" in op_types:
        bs = block_size  # tables keep their block
    if algo == "hqq" and "Gather" not in op_types:
        config = HQQWeightOnlyQuantConfig(block_size=bs, op_types_to_quantize=tuple(op_types))
    else:
        config = DefaultWeightOnlyQuantConfig(
            block_size=bs, is_symmetric=sym, op_types_to_quantize=tuple(op_types), quant_format=QuantFormat.QOperator
        )
    model = onnx.load(str(source))
    exclude = (
        None
        if nodes is None
        else [n.name for n in model.graph.node if n.op_type in op_types and n.name not in set(nodes)]
    )
    q = MatMulNBitsQuantizer(model, nodes_to_exclude=exclude, algo_config=config)
    with quiet_onnxruntime():
        q.process()
    q.model.save_model_to_file(str(target), False)
    return Path(target)


Q.quantize_int4 = patched

task, model = sys.argv[1], sys.argv[2]
out = Path(f"runs/experiments/int4/{task}")
rows = []
for algo, sym, bs in [("rtn", True, 32), ("rtn", False, 32), ("hqq", False, 32), ("rtn", True, 16), ("rtn", False, 16)]:
    variant.update(algo=algo, sym=sym, bs=bs)
    tag = f"{algo}-{'sym' if sym else 'asym'}-{bs}"
    t = out / tag
    cfg = ExportConfig(
        precision="int4",
        embeddings="int4",
        int4_attention=True,
        int4_table_block_size=128,
        objective="size",
        vocabulary=VocabularyConfig(prune=True, trim_positions=True, unseen="nearest", min_count=2),
        max_drop=100,
        max_examples=2000,
    )
    t0 = time.time()
    export_model(model, t, cfg, None, "../shared/data/glue", overwrite=True)
    ev = evaluate(str(t), None, "../shared/data/glue", splits=("heldout", "dev"), device="cpu")
    r = {
        "variant": tag,
        "bytes": (t / "model.onnx").stat().st_size,
        **{s: ev.splits[s].metrics for s in ("heldout", "dev")},
        "s": time.time() - t0,
    }
    print(json.dumps(r), flush=True)
    rows.append(r)
(out / "rows.json").write_text(json.dumps(rows, indent=1))
