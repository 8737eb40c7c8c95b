"""``axformer benchmark``: models and artifacts against the baselines a user would otherwise pick, in one run.

Baselines (from the unpruned model, always measured alongside): PyTorch fp32
padded to the maximum length (out of the box), PyTorch fp32 with dynamic
length, ONNX Runtime fp32 (fused), and ONNX Runtime int8 (what Optimum's
dynamic quantization gives). Every figure is measured in this run on this
machine; ratios are against the out-of-the-box baseline.

Cost per 100M requests follows FastFormers: the hours a machine needs to serve
10^8 requests at the measured throughput, times its hourly price. It uses the
best throughput the candidate reached (one process at batch 32, or several
single-threaded instances), and says which; the default price is an
assumption (see ``axformer.benchmark.pricing``).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from axformer.benchmark.measure import Candidate, peak_memory_mib
from axformer.benchmark.pricing import DEFAULT_PRICE_PER_HOUR, usd_per_100m
from axformer.benchmark.report import cumulative, markdown, plot
from axformer.benchmark.result import (
    DYNAMIC,
    ORT_FP32,
    ORT_INT8,
    PADDED,
    BenchmarkResult,
    BenchmarkTask,
    LeanRequest,
    MultiInstance,
    Row,
    Scores,
    ThreadChoice,
    TimingSummary,
)
from axformer.data.batching import Encoded, encode
from axformer.errors import AxformerError
from axformer.evaluation import score
from axformer.inference import Outputs
from axformer.models.loading import load_tokenizer, read_config_json
from axformer.models.record import ModelRecord, task_for
from axformer.runtime.backends import is_onnx_artifact, load_runnable, max_input_length, onnx_file, position_limit
from axformer.runtime.timing import Timing, pad_to, prepare, synthetic, time_candidates
from axformer.tasks.data import TaskData
from axformer.utils.device import KERNEL_FLAGS, cpu_flags, cpu_model, torch_threads
from axformer.utils.io import write_json

BASELINE_CHAIN = (PADDED, DYNAMIC, ORT_FP32, ORT_INT8)  # FastFormers' cumulative order of the baseline rows


@dataclass
class BenchmarkConfig:
    baselines: bool = True
    baseline_model: str | None = (
        None  # the unpruned model; default: the first model's recorded origin, else the first model
    )
    lengths: tuple[int, ...] = (64, 128, 512)
    latency_examples: int = 200  # dev requests timed one by one per round
    throughput_examples: int = 512  # dev examples in the batch-32 pass
    fixed_requests: int = 20  # batch-1 requests per fixed length
    fixed_batch: int = 8  # 32 inputs of 512 tokens take seconds per pass on a small CPU
    rounds: int = 3
    warmup: int = 1
    instances: int | None = None  # multi-instance workers (default: one per core; 0 or 1: skip)
    price_per_hour: float = (
        DEFAULT_PRICE_PER_HOUR  # USD per machine hour (assumed unless given); 0: cost column omitted
    )
    memory: bool = True
    # ONNX rows: one request end to end on the lean batch-1 path, with session options chosen by timing
    breakdown_requests: int = 100  # 0: skip
    seed: int = 0
    # threads of every timed row (ONNX Runtime's intra-op pool, PyTorch's); None: each runtime's default, what a
    # user gets. On a shared 2-vCPU machine one thread is the steady measure: the demo's artifact over ONNX
    # Runtime int8 of the original measured 1.56-1.76x alone with one thread, 1.36-2.65x with two (docs/promises.md)
    threads: int | None = None
    # batch-1 dev requests timed once more with one thread per row (PyTorch rows as well; not the padded one), unless
    # ``threads`` is 1 already; 0 skips. On a 2-vCPU share the two-thread figure has two levels per process: the
    # same MRPC int8 pair measured 1.37-1.43x in some runs and 1.53-1.60x in others, and 1.67-1.76x with one thread
    # in every run (docs/promises.md, session 30)
    one_thread_requests: int = 100
    chain: list[str] | None = None  # row names (or model paths) for the cumulative view, in order; default: every row

    @property
    def worker_count(self) -> int:
        """Multi-instance workers this run starts: ``instances``, else one per core this process may use."""
        if self.instances is not None:
            return self.instances
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    def validate(self) -> None:
        if any(length < 2 for length in self.lengths):
            raise AxformerError(f"--lengths {self.lengths}; expected token counts of at least 2")
        if self.rounds < 1 or self.latency_examples < 1:
            raise AxformerError("--rounds and --latency-examples must be positive")
        if self.breakdown_requests < 0:
            raise AxformerError(f"--breakdown-requests {self.breakdown_requests}; expected a count (0: skip)")
        if self.price_per_hour < 0:
            raise AxformerError(f"--price-per-hour {self.price_per_hour}; expected a non-negative price in USD")
        if self.one_thread_requests < 0:
            raise AxformerError(f"--one-thread-requests {self.one_thread_requests}; expected a count (0: skip)")
        if self.threads is not None and self.threads < 1:
            raise AxformerError(f"--threads {self.threads}; expected a thread count of at least 1 (omit: defaults)")


def _origin(model: str) -> str | None:
    """The unpruned model a directory came from, as its axformer.json history records it."""
    for h in ModelRecord.load(model).history:
        if h.get("stage") in ("optimize", "export", "distill") and h.get("base_model"):
            base = h["base_model"]
            return _origin(base) or base if Path(base).is_dir() else None
    return None


def _tokenizer_key(path: str) -> str:
    """Candidates with the same tokenizer file share one encoding of the dev texts."""
    import hashlib

    f = Path(path) / "tokenizer.json"
    return hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else str(path)


def _size(path: str) -> int | None:
    p = Path(path)
    if is_onnx_artifact(p):
        return onnx_file(p).stat().st_size
    files = list(p.glob("*.safetensors")) + list(p.glob("*.bin"))
    return sum(f.stat().st_size for f in files) or None


def _structure_source(path: str) -> str | None:
    """A PyTorch model with this candidate's structure (an artifact's own source model)."""
    if not is_onnx_artifact(path):
        return path
    for h in reversed(ModelRecord.load(path).history):
        if h.get("stage") == "export" and Path(h.get("base_model", "")).is_dir():
            return h["base_model"]
    return None


def _params_flops(path: str) -> tuple[int | None, float | None]:
    src = _structure_source(path)
    if src is None:
        return None, None
    from axformer.models.loading import load_model
    from axformer.surgery.prune import count_parameters, current_structure

    net = load_model(src)
    return count_parameters(net), current_structure(net).flops_per_token(128)


def _dev_outputs(model, enc, regression: bool) -> Outputs:
    from axformer.inference import run_model

    return run_model(model, enc, regression, 32, "cpu")


def benchmark(
    models: list[str],
    output: str | os.PathLike,
    data: TaskData | None = None,
    data_dir=None,
    config: BenchmarkConfig | None = None,
    progress=print,
) -> dict:
    """Benchmark ``models`` (model directories or exported artifacts) and the baselines; writes benchmark.{json,md} and
    a plot.
    """
    config = config or BenchmarkConfig()
    config.validate()
    if not models:
        raise AxformerError("no model given; expected at least one model directory or exported artifact")
    for m in models:
        if not Path(m).is_dir():
            raise AxformerError(f"model {m} does not exist; expected a model directory or an exported artifact")
    output = Path(output)
    first = models[0]
    data = task_for(first, data, data_dir)
    spec = data.spec
    spec.require_stage("benchmark")
    dev_name, dev_split = next(iter(data.dev.items()))
    if not len(dev_split) or not dev_split.is_labelled:
        raise AxformerError(
            f"the {dev_name} split of {spec.name} has no labels; the benchmark needs a labelled dev set"
        )
    t0 = time.perf_counter()
    candidates: list[Candidate] = []
    if config.baselines:
        base = config.baseline_model or _origin(first) or first
        if is_onnx_artifact(base):
            raise AxformerError(
                f"baseline model {base} is an exported artifact; expected the unpruned PyTorch model (--baseline-model)"
            )
        candidates += [Candidate(PADDED, base, padded=True, baseline=True), Candidate(DYNAMIC, base, baseline=True)]
        from axformer.export.artifact import ExportConfig, export_model

        for precision, label in (("fp32", ORT_FP32), ("int8", ORT_INT8)):
            target = output / "baselines" / f"onnx-{precision}"
            if not is_onnx_artifact(target):
                progress(f"exporting baseline: {label}")
                export_model(
                    base,
                    target,
                    ExportConfig(precision=precision, check=False),  # reported on the dev set below, never rejected
                    data,
                    data_dir,
                    overwrite=True,
                )
            candidates.append(Candidate(label, str(target), baseline=True))
    same_as_baseline = {
        str(Path(c.path).resolve()) for c in candidates if not c.padded and not is_onnx_artifact(c.path)
    }
    # the unpruned model itself is the dynamic-length baseline
    resolved = {m: str(Path(m).resolve()) for m in models}
    first = {r: m for m, r in reversed(resolved.items())}  # a model named twice is measured once
    kept = [m for m, r in resolved.items() if first[r] == m and r not in same_as_baseline]
    candidates += [Candidate(n, m) for n, m in zip(row_names(kept, {c.name for c in candidates}), kept, strict=True)]
    max_len = max_input_length(candidates[0].path)
    # every candidate reads the dev texts through its own tokenizer (a pruned vocabulary numbers tokens
    # differently); the same texts are timed for all of them
    by_tokenizer: dict[str, Encoded] = {}
    encodings: dict[str, Encoded] = {}
    for c in candidates:
        key = _tokenizer_key(c.path)
        if key not in by_tokenizer:
            by_tokenizer[key] = encode(load_tokenizer(c.path), dev_split, max_len, separate=spec.is_embedding)
        encodings[c.name] = by_tokenizer[key]
    # an embedding model is timed as a service embeds: one text per request (a pair's texts are two requests)
    timed = {name: e.ungrouped() for name, e in encodings.items()}
    enc = timed[candidates[0].name]
    rng = np.random.default_rng(config.seed)
    lat_idx = rng.permutation(len(enc))[: config.latency_examples]
    thr_idx = rng.permutation(len(enc))[: config.throughput_examples]
    loaded = {c.name: load_runnable(c.path, device="cpu", threads=config.threads) for c in candidates}
    rows = {
        c.name: Row(c.name, c.path, "onnx" if is_onnx_artifact(c.path) else "pytorch", c.padded, c.baseline)
        for c in candidates
    }
    scored_rows = [c for c in candidates if not c.padded]
    progress(f"dev metric of {len(scored_rows)} candidates on {len(dev_split)} {dev_name} examples")
    for c in scored_rows:
        scored = score(spec, dev_split.labels, _dev_outputs(loaded[c.name], encodings[c.name], spec.is_regression))
        rows[c.name].dev = Scores(**scored.to_dict())
    for c in candidates:
        if c.padded:  # the same weights as the dynamic-length row, and padding is masked: the same predictions
            # (tested to 1e-6), so its dev metric is that row's; at 384 tokens (QA) it was the slowest pass
            rows[c.name].dev = rows[next(d.name for d in scored_rows if d.path == c.path)].dev
    progress(
        f"timing on dev texts: {len(lat_idx)} requests at batch 1 and {len(thr_idx)} at batch 32, "
        f"{config.rounds} interleaved rounds"
    )

    def requests(c: Candidate, idx: np.ndarray, batch: int):
        own = timed[c.name]
        return prepare(own.subset(idx), batch, max_len if c.padded else None, own.pad_token_id)

    single = {c.name: requests(c, lat_idx, 1) for c in candidates}
    big = {c.name: requests(c, thr_idx, 32) for c in candidates}
    pad_id = enc.pad_token_id
    with torch_threads(config.threads):  # the PyTorch rows run on as many threads as the ONNX ones
        for name, t in time_candidates(loaded, single, big, config.rounds, config.warmup).items():
            rows[name].timing = TimingSummary(**t.summary())
        # synthetic ids every candidate has (a pruned vocabulary is smaller)
        vocab = min(int(read_config_json(c.path).get("vocab_size", 30522)) for c in candidates)
        # the fewest positions any candidate has (a size-optimized artifact keeps only those it is run at)
        positions = min(position_limit(read_config_json(c.path)) or 512 for c in candidates)
        for length in config.lengths:
            if length > positions:
                progress(f"length {length} skipped: a candidate has only {positions} positions")
                continue
            syn = synthetic(length, max(config.fixed_requests, config.fixed_batch), vocab, pad_id, config.seed)
            s1 = {c.name: prepare(syn, 1, None, pad_id, config.fixed_requests) for c in candidates}
            sb = {c.name: prepare(syn, config.fixed_batch, None, pad_id, config.fixed_batch) for c in candidates}
            progress(f"timing at a fixed {length} tokens")
            for name, t in time_candidates(loaded, s1, sb, max(2, config.rounds // 2), config.warmup).items():
                rows[name].fixed[str(length)] = TimingSummary(**t.summary())
    if config.one_thread_requests and config.threads != 1:
        progress(
            f"timing {config.one_thread_requests} requests at batch 1 with one thread per row (ONNX rows also with "
            "their default threads, for each one's faster count)"
        )
        timed_alone = [c for c in candidates if not c.padded]
        one = {c.name: load_runnable(c.path, device="cpu", threads=1) for c in timed_alone}
        # the ONNX rows' default-thread sessions again, in the same rounds on the same requests as their one-thread
        # ones (PyTorch's threads are per process, so its rows cannot take both in one interleaving)
        default = {c.name: loaded[c.name] for c in timed_alone if is_onnx_artifact(c.path)}
        variants = {**{(n, "1"): m for n, m in one.items()}, **{(n, "default"): m for n, m in default.items()}}
        few = {key: single[key[0]][: config.one_thread_requests] for key in variants}
        with torch_threads(1):
            timings = time_candidates(variants, few, {k: [] for k in variants}, config.rounds, config.warmup)
        for name in one:
            t = timings[(name, "1")]
            rows[name].timing_one_thread = TimingSummary(**{**t.summary(), "throughput_per_s": None})
            if name in default:
                count = len(few[(name, "1")])
                rows[name].faster_threads = faster_threads({k: timings[(name, k)] for k in ("1", "default")}, count)
        del one
    instances = config.worker_count
    if instances and instances > 1:
        from axformer.runtime.predictor import Predictor

        progress(f"multi-instance throughput: {instances} single-threaded instances")
        for c in candidates:
            if c.padded:
                continue
            batches = [{k: v.numpy() for k, v in b.items()} for b in big[c.name]]
            with Predictor(c.path, instances=instances) as p:
                p.run_batches(batches)  # warm-up
                rates = []
                for _ in range(max(2, config.rounds // 2)):
                    t1 = time.perf_counter()
                    p.run_batches(batches)
                    rates.append(sum(len(b["input_ids"]) for b in batches) / (time.perf_counter() - t1))
            rows[c.name].multi_instance = MultiInstance(instances, 1, float(np.median(rates)))
    if config.breakdown_requests and not spec.is_qa:
        _lean_requests(candidates, rows, dev_split, spec.is_embedding, config, progress)
    if config.memory:
        for c in candidates:
            own = timed[c.name]
            widest = prepare(own.subset(thr_idx), 32, None, own.pad_token_id)[0]
            rows[c.name].peak_memory_mib = peak_memory_mib(
                c.path, pad_to(widest, max_len, own.pad_token_id) if c.padded else widest
            )
    for c in candidates:
        r = rows[c.name]
        r.size_bytes = _size(c.path)
        r.parameters, r.flops_per_token = _params_flops(c.path)
        best = max(
            [(r.timing.throughput_per_s, "batch 32, one process")]
            + (
                [(r.multi_instance.throughput_per_s, f"batch 32, {r.multi_instance.instances} instances")]
                if r.multi_instance
                else []
            )
        )
        r.cost_basis = best[1]
        if config.price_per_hour > 0:
            r.usd_per_100m = usd_per_100m(best[0], config.price_per_hour)
    by_path = {c.path: c.name for c in candidates}
    chain = [by_path.get(n, n) for n in config.chain] if config.chain else None
    result = BenchmarkResult(
        task=BenchmarkTask(spec.name, spec.main_metric, dev_name, len(dev_split)),
        config={**asdict(config), "chain": chain},
        rows=[rows[c.name] for c in candidates],
        reference=candidates[0].name,
        environment=environment(),
        seconds=time.perf_counter() - t0,
    )
    result.cumulative = cumulative(result)
    output.mkdir(parents=True, exist_ok=True)  # without baselines nothing has made it yet
    write_json(output / "benchmark.json", result.to_dict())
    plot(result, output / "tradeoff.png")
    (output / "benchmark.md").write_text(markdown(result))
    return result.to_dict()


def row_names(models: list[str], taken: set[str]) -> list[str]:
    """Each model's row name: its directory's name, or the path as given where that name is not unique (two runs'
    ``4-export`` directories compared side by side must not share a row)."""
    names = [Path(m).name for m in models]
    return [n if names.count(n) == 1 and n not in taken else m for n, m in zip(names, models, strict=True)]


def faster_threads(by_threads: dict[str, Timing], requests: int) -> ThreadChoice:
    """The thread count with the lower batch-1 p50 on the even-numbered requests, and its p50 and p95 on the
    odd-numbered ones (``Timing.latency_ms`` holds each round's ``requests`` in order)."""

    def half(t: Timing, parity: int) -> np.ndarray:
        lat = np.asarray(t.latency_ms)
        return lat[(np.arange(lat.size) % requests) % 2 == parity]

    choosing = {k: float(np.percentile(half(t, 0), 50)) for k, t in by_threads.items()}
    threads = min(choosing, key=choosing.get)
    measured = half(by_threads[threads], 1) if requests > 1 else half(by_threads[threads], 0)
    return ThreadChoice(threads, choosing, float(np.percentile(measured, 50)), float(np.percentile(measured, 95)))


def _lean_requests(candidates, rows, dev_split, embedding: bool, config: BenchmarkConfig, progress) -> None:
    """Every ONNX row served one request at a time on the lean path: session options chosen by timing on half of
    the sampled dev requests, the breakdown measured on all of them."""
    from axformer.runtime.breakdown import request_breakdown
    from axformer.runtime.lean import as_request, choose_session

    # an embedding model serves single texts; a classifier a text or a pair, as in its task
    texts = [t for row in dev_split.texts for t in row] if embedding else list(dev_split.texts)
    pick = np.random.default_rng(config.seed + 1).permutation(len(texts))[: config.breakdown_requests]
    requests = [texts[i] if embedding else as_request(texts[i]) for i in pick]
    for c in candidates:
        if c.padded or not is_onnx_artifact(c.path):
            continue
        progress(f"one request end to end on the lean path: {c.name}")
        choice, table = choose_session(c.path, requests[: max(1, len(requests) // 2)], rounds=max(2, config.rounds))
        rows[c.name].lean = LeanRequest(
            asdict(choice), table, request_breakdown(c.path, requests, choice, rounds=config.rounds)
        )


def environment() -> dict:
    import onnxruntime
    import transformers

    have = cpu_flags()
    flags = ", ".join(f for f in KERNEL_FLAGS if f in have)
    return {
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_flags": flags,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
