"""Is ONNX Runtime's SkipLayerNormalization worth fusing on this CPU? (issue: four times faster than ONNX Runtime int8)

Usage:  python benchmarks/experiments/skip_layer_norm.py MODEL_DIR [MODEL_DIR ...] [--lengths 16 50 128]
            [--repeats 50] [--rounds 7] [--out FILE.md]
        e.g. runs/baselines/mrpc runs/promises29/<run>/3-search (the original and a pruned model)

Each model (a PyTorch directory) is exported and fused by ONNX Runtime's transformer optimizer twice: as the
export did up to session 29 (each residual Add and the LayerNormalization after it fused into one
SkipLayerNormalization, which a default session also does at load) and as it does now (the pair left as two ops,
and the session told not to fuse them: ``axformer.runtime.backends.inference_session``). Both in fp32 and in
dynamic int8. Batch-1 latency on synthetic token ids of each length, interleaved rounds, medians; the largest
difference between the two graphs' logits on the same ids. Prints a markdown table (and writes it to --out).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import environment_line  # noqa: E402


def graphs(model_dir: str, tmp: Path) -> dict[str, tuple[Path, bool]]:
    """{variant: (graph, served by axformer's session)} for one model."""
    from axformer.export.fusion import fuse
    from axformer.export.onnx_export import export_onnx
    from axformer.export.quantize import gemm_as_matmul, quantize_int8
    from axformer.models.loading import load_model

    model = load_model(model_dir).eval()
    cfg = model.config
    raw = export_onnx(model, tmp / "raw.onnx")
    out = {}
    for skip in (True, False):
        tag = "skip" if skip else "pair"
        fused = fuse(raw, tmp / f"{tag}.onnx", cfg.model_type, cfg.hidden_size, cfg.num_attention_heads,
                     skip_layer_norm=skip).path  # fmt: skip
        fp32 = gemm_as_matmul(fused, tmp / f"{tag}-fp32.onnx")
        int8 = quantize_int8(fp32, tmp / f"{tag}-int8.onnx")
        label = "SkipLayerNormalization" if skip else "Add + LayerNormalization"
        out[f"fp32, {label}"] = (fp32, not skip)
        out[f"int8, {label}"] = (int8, not skip)
    return out


def op_alone(hidden: int) -> dict[str, bytes]:
    """One residual block's normalization as a one-op graph (SkipLayerNormalization) and as the pair."""
    from onnx import TensorProto, helper

    weights = [
        helper.make_tensor(name, TensorProto.FLOAT, [hidden], np.full(hidden, value, np.float32))
        for name, value in (("gamma", 1.0), ("beta", 0.0), ("bias", 0.0))
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "tokens", hidden]) for n in ("x", "skip")]
    output = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    skip = [helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"], ["y"],
                             domain="com.microsoft", epsilon=1e-12)]  # fmt: skip
    pair = [
        helper.make_node("Add", ["x", "skip"], ["sum"]),
        helper.make_node("Add", ["sum", "bias"], ["biased"]),
        helper.make_node("LayerNormalization", ["biased", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12),
    ]
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return {
        name: helper.make_model(
            helper.make_graph(nodes, name, inputs, output, weights), opset_imports=opsets
        ).SerializeToString()
        for name, nodes in (("SkipLayerNormalization", skip), ("Add + LayerNormalization", pair))
    }


def session(path: Path, ours: bool):
    import onnxruntime as ort

    from axformer.runtime.backends import inference_session, session_options

    opts = session_options()
    if ours:
        return inference_session(path, opts, ["CPUExecutionProvider"])
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])  # fuses at load, as before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 50, 128])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out")
    args = parser.parse_args()

    from axformer.runtime.backends import inference_session, session_options
    from axformer.runtime.timing import interleaved_medians

    lines = [
        "# SkipLayerNormalization against Add + LayerNormalization in ONNX Runtime (batch 1)",
        "",
        f"Produced by `python benchmarks/experiments/skip_layer_norm.py {' '.join(sys.argv[1:])}` "
        f"({environment_line()}).",
        f"Median ms per request over {args.rounds} interleaved rounds of {args.repeats}, synthetic token ids; "
        "speed-up: SkipLayerNormalization's time over the pair's; max |diff|: the largest logit difference between "
        "the two graphs of one precision.",
        "",
        "| model | tokens | precision | SkipLayerNormalization ms | Add + LayerNormalization ms | speed-up | "
        "max diff |",
        "|---|---|---|---|---|---|---|",
    ]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp_root:
        for i, model_dir in enumerate(args.models):
            tmp = Path(tmp_root) / str(i)
            tmp.mkdir()
            sessions = {name: session(path, ours) for name, (path, ours) in graphs(model_dir, tmp).items()}
            names = {x.name for x in next(iter(sessions.values())).get_inputs()}
            for length in args.lengths:
                ids = rng.integers(1000, 20000, size=(1, length), dtype=np.int64)
                feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
                feed = {k: v for k, v in feed.items() if k in names}
                for precision in ("fp32", "int8"):  # a precision's two graphs timed against each other only
                    skip, pair = f"{precision}, SkipLayerNormalization", f"{precision}, Add + LayerNormalization"
                    calls = {name: (lambda s=sessions[name]: s.run(None, feed)) for name in (skip, pair)}
                    ms = {k: 1e3 * v for k, v in interleaved_medians(calls, args.repeats, args.rounds).items()}
                    diff = np.abs(sessions[skip].run(None, feed)[0] - sessions[pair].run(None, feed)[0]).max()
                    lines.append(
                        f"| {model_dir} | {length} | {precision} | {ms[skip]:.3f} | {ms[pair]:.3f} | "
                        f"{ms[skip] / ms[pair]:.2f}x | {diff:.1e} |"
                    )
                print("\n".join(lines[-2:]), flush=True)
    lines += [
        "",
        "The operator alone, hidden size 384 (MiniLM's), random inputs, microseconds per call (each graph served by "
        "axformer's session, which does not fuse the pair):",
        "",
        "| tokens | SkipLayerNormalization us | Add + LayerNormalization us | ratio |",
        "|---|---|---|---|",
    ]
    ops = {k: inference_session(v, session_options(), ["CPUExecutionProvider"]) for k, v in op_alone(384).items()}
    for length in args.lengths:
        feed = {k: rng.standard_normal((1, length, 384)).astype(np.float32) for k in ("x", "skip")}
        calls = {k: (lambda s=s: s.run(None, feed)) for k, s in ops.items()}
        us = {k: 1e6 * v for k, v in interleaved_medians(calls, 20 * args.repeats, args.rounds).items()}
        skip, pair = us["SkipLayerNormalization"], us["Add + LayerNormalization"]
        lines.append(f"| {length} | {skip:.1f} | {pair:.1f} | {skip / pair:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
