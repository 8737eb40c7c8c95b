"""Which matrices' int8 rounding turns a classifier's answers, and does keeping them in fp32 keep int8's speed?

Usage:  python benchmarks/experiments/int8_exceptions.py MODEL --original ORIGINAL [--data-dir DIR] [--out DIR]
                                                          [--keep 1 2 4 8]

MRPC's pruned and distilled model (session 28) held its point in PyTorch and lost it in int8: the rounding turned
1.15% of the training pairs' answers, more of them wrong than right. This measures a fallback that would keep
most of int8's speed: int8 everywhere except the K matrices whose rounding turns the most answers, kept fp32.
Every choice is made on the task's training file (training part and held-out split), never on dev: each matrix
is quantized alone (the rest fp32) and ranked by how many training answers it changes against the fp32 artifact.
Then, for each K, the artifact with the top K kept fp32 is scored: answers changed on the training file against
fp32, dev main metric at batch 1, 32 and 64 (reported, decides nothing; dynamic int8 rounds a batch's
activations with one scale, so its answers depend on the batch they are computed in), and batch-1 p50 latency
on dev texts against the full int8 artifact and ONNX Runtime int8 of ORIGINAL, timed in turns in this one
process. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnx

from axformer.evaluation import score
from axformer.export.artifact import ExportConfig, export_model
from axformer.models.record import task_for
from axformer.runtime.predictor import Predictor

QUANTIZED = ("MatMulInteger", "QAttention")


def _export(model: str, out: Path, data, precision: str, exclude: list[str]) -> Path:
    if not (out / "model.onnx").exists():
        cfg = ExportConfig(precision=precision, exclude_nodes=exclude, check=False, max_drop=100.0)
        export_model(model, out, cfg, data=data, overwrite=True)
    return out


def _outputs(path: Path, texts: list, batch_size: int = 32) -> np.ndarray:
    with Predictor(str(path)) as p:
        return np.asarray(p.predict(texts, batch_size=batch_size))


def _p50_ms(paths: dict[str, Path], texts: list, rounds: int = 3) -> dict[str, float]:
    """Batch-1 p50 per artifact, the artifacts taking turns round by round (the machine is shared)."""
    times: dict[str, list[float]] = {k: [] for k in paths}
    predictors = {k: Predictor(str(p)) for k, p in paths.items()}
    try:
        for p in predictors.values():  # warm-up
            for t in texts[:10]:
                p.predict([t])
        for _ in range(rounds):
            for k, p in predictors.items():
                for t in texts:
                    t0 = time.perf_counter()
                    p.predict([t])
                    times[k].append(1000 * (time.perf_counter() - t0))
    finally:
        for p in predictors.values():
            p.close()
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--original", required=True, help="the unpruned original, for its ONNX Runtime int8 timing")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default="runs/int8_exceptions")
    ap.add_argument("--keep", type=int, nargs="*", default=[1, 2, 4, 8])
    ap.add_argument("--latency-texts", type=int, default=200)
    args = ap.parse_args()
    out = Path(args.out)
    data = task_for(args.model, data_dir=args.data_dir)
    spec, dev = data.spec, next(iter(data.dev.values()))
    train = list(data.train.texts)
    fp32 = _export(args.model, out / "fp32", data, "fp32", [])
    int8 = _export(args.model, out / "int8", data, "int8", [])
    graph = onnx.load(str(int8 / "model.onnx"), load_external_data=False).graph
    nodes = [n.name.removesuffix("_quant") for n in graph.node if n.op_type in QUANTIZED]
    reference = _outputs(fp32, train).argmax(-1)

    def changed(path: Path) -> int:
        return int((_outputs(path, train).argmax(-1) != reference).sum())

    alone = {}
    for i, node in enumerate(nodes):
        alone[node] = changed(_export(args.model, out / f"alone{i}", data, "int8", [n for n in nodes if n != node]))
        print(f"{node}: {alone[node]} training answers changed when it alone is int8", flush=True)
    ranked = sorted(nodes, key=lambda n: -alone[n])
    rows = {"int8 (all)": int8, "fp32": fp32}
    for k in args.keep:
        rows[f"int8, top {k} fp32"] = _export(args.model, out / f"keep{k}", data, "int8", ranked[:k])
    original_int8 = _export(args.original, out / "original-int8", task_for(args.original, data_dir=args.data_dir),
                            "int8", [])  # fmt: skip
    dev_texts = list(dev.texts)
    latency = _p50_ms({**rows, "ORT int8 of the original": original_int8}, dev_texts[: args.latency_texts])
    print(f"\nModel {args.model}; {len(train)} training-file texts rank the matrices, dev decides nothing.")
    print(f"Ranked (alone-int8 changes): {', '.join(f'{n} {alone[n]}' for n in ranked[:8])}\n")
    print(f"| artifact | training answers changed vs fp32 | dev {spec.main_metric} at batch 1 / 32 / 64 | "
          "batch-1 p50 ms | vs int8 (all) | vs ORT int8 of the original |\n|---|---|---|---|---|---|")  # fmt: skip
    base, orig = latency["int8 (all)"], latency["ORT int8 of the original"]
    for name, path in rows.items():
        # dynamic int8 quantizes activations with one scale per batch tensor: answers depend on the batch
        metric = " / ".join(f"{score(spec, dev.labels, _outputs_as(path, dev_texts, b)).main:.2f}" for b in (1, 32, 64))
        ms = latency[name]
        print(
            f"| {name} | {changed(path)} of {len(train)} | {metric} | {ms:.2f} | {base / ms:.2f}x | {orig / ms:.2f}x |"
        )


def _outputs_as(path: Path, texts: list, batch_size: int):
    """The artifact's outputs in the form ``axformer.evaluation.score`` takes."""
    from axformer.inference import Outputs

    logits = _outputs(path, texts, batch_size)
    return Outputs(logits=logits, losses=np.zeros(len(logits)))  # the metric only: no loss is read


if __name__ == "__main__":
    main()
