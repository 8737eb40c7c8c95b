"""The benchmark's result as typed objects: what ``benchmark.json`` holds, read and written by one converter.

The report writers (the benchmark's table and plot, the pipeline's page) work on these, not on nested
string keys; ``benchmark.json`` keeps its layout (``to_dict``), so earlier results still read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from axformer.utils.config import from_mapping, to_mapping

# the baseline rows' names
PADDED, DYNAMIC, ORT_FP32, ORT_INT8 = (
    "PyTorch fp32, padded to max length (out of the box)",
    "PyTorch fp32, dynamic length",
    "ONNX Runtime fp32 (fused)",
    "ONNX Runtime int8 (dynamic, per-channel)",
)


@dataclass
class TimingSummary:
    latency_p50_ms: float | None = None  # per request at batch 1, over every request of every round
    latency_p95_ms: float | None = None
    throughput_per_s: float | None = None  # examples per second at batch 32 (median of rounds)


@dataclass
class Scores:
    """A split's scores, as :class:`axformer.evaluation.SplitResult` writes them."""

    num_examples: int = 0
    loss: float = 0.0
    main_metric: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class MultiInstance:
    instances: int
    threads_per_instance: int
    throughput_per_s: float


@dataclass
class LeanRequest:
    """One request end to end on the lean batch-1 path (``axformer.runtime.lean``): the session options timed fastest
    here, every option's median, and where the time goes (ms: tokenize, prepare, run, post, lean total, and the
    same request through Predictor with its overhead over the session run)."""

    choice: dict
    choices: list[dict]
    breakdown: dict[str, float]


@dataclass
class ThreadChoice:
    """Batch 1 at the faster of two thread counts, one intra-op thread or the runtime's default, as a deployer sets
    it for each model. On a 2-vCPU machine the second thread makes a small model slower at batch 1 and the
    original's int8 a little faster (docs/promises.md, session 31), so equal threads for every row favour the
    larger model either way. The choice is made on the even-numbered timed requests and the figures are the
    odd-numbered ones': picking the faster of two noisy figures then flatters neither row."""

    threads: str  # "1", or "default" (the runtime's own count; the benchmark's --threads when given)
    choosing_p50_ms: dict[str, float]  # p50 on the choosing half, per thread count
    latency_p50_ms: float  # on the other half, at the chosen count
    latency_p95_ms: float


@dataclass
class Row:
    name: str
    path: str
    kind: str  # pytorch / onnx
    padded: bool
    baseline: bool
    dev: Scores = field(default_factory=Scores)
    timing: TimingSummary = field(default_factory=TimingSummary)  # on dev texts
    timing_one_thread: TimingSummary | None = None  # batch 1 on dev texts, one intra-op thread (not the padded row)
    fixed: dict[str, TimingSummary] = field(default_factory=dict)  # sequence length -> timing on synthetic ids
    multi_instance: MultiInstance | None = None
    peak_memory_mib: float | None = None
    size_bytes: int | None = None
    parameters: int | None = None
    flops_per_token: float | None = None
    usd_per_100m: float | None = None
    cost_basis: str | None = None
    lean: LeanRequest | None = None  # ONNX rows of classification, regression and embedding tasks
    faster_threads: ThreadChoice | None = None  # ONNX rows, timed beside the one-thread pass


@dataclass
class BenchmarkTask:
    name: str
    main_metric: str
    dev_split: str
    dev_examples: int


@dataclass
class Step:
    """One step of FastFormers' cumulative view."""

    step: str
    metric: float | None
    latency_ms: float | None
    throughput_per_s: float | None
    step_latency_speedup: float | None
    step_throughput_gain: float | None
    total_latency_speedup: float | None
    total_throughput_gain: float | None
    # batch-1 p50 of ONNX Runtime int8 of the unpruned model over the step's: what a user would otherwise deploy
    latency_vs_ort_int8: float | None = None


@dataclass
class BenchmarkResult:
    task: BenchmarkTask
    config: dict  # the BenchmarkConfig of the run, with its chain resolved to row names
    rows: list[Row]
    reference: str
    environment: dict
    seconds: float
    cumulative: list[Step] = field(default_factory=list)

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    @property
    def price_per_hour(self) -> float:
        return float(self.config.get("price_per_hour") or 0.0)

    @classmethod
    def from_dict(cls, values: dict) -> BenchmarkResult:
        return from_mapping(cls, values, "benchmark.json")

    def to_dict(self) -> dict:
        return to_mapping(self)


def batch1_speedups(original: Row, artifact: Row, int8: Row | None) -> dict:
    """Batch-1 p50 ratios of the artifact: against the original (PyTorch, dynamic length) and against ONNX Runtime
    int8 of the unpruned model with each runtime's default threads, with one thread per row, and with each at its
    faster thread count, where the run measured them. Three ratios because on a shared 2-vCPU machine the
    two-thread figure moves with the machine's state (one artifact: 1.29x and 1.57x in two runs) and the
    one-thread one does not (docs/promises.md, sessions 30-32)."""
    out = {"speedup_vs_original": original.timing.latency_p50_ms / artifact.timing.latency_p50_ms}
    if int8 is None:
        return out
    out["speedup_vs_ort_int8"] = int8.timing.latency_p50_ms / artifact.timing.latency_p50_ms
    if int8.timing_one_thread and artifact.timing_one_thread:
        out["speedup_vs_ort_int8_one_thread"] = (
            int8.timing_one_thread.latency_p50_ms / artifact.timing_one_thread.latency_p50_ms
        )
    if int8.faster_threads and artifact.faster_threads:
        out["speedup_vs_ort_int8_faster_threads"] = (
            int8.faster_threads.latency_p50_ms / artifact.faster_threads.latency_p50_ms
        )
        out["faster_threads"] = {"ort_int8": int8.faster_threads.threads, "artifact": artifact.faster_threads.threads}
    return out


# the ratios of ``batch1_speedups`` against ONNX Runtime int8 of the original, as reports name them
ORT_INT8_RATIOS = (
    ("speedup_vs_ort_int8", "with each runtime's default threads"),
    ("speedup_vs_ort_int8_one_thread", "with one thread per row"),
    ("speedup_vs_ort_int8_faster_threads", "with each at its faster thread count"),
)


def ratios_text(ratios: dict, skip_default: bool = False) -> str:
    """The measured ratios against ONNX Runtime int8 of the original in words ("1.46x with each runtime's default
    threads, 1.67x with one thread per row, ..."); ``skip_default`` leaves out the first, for a report that
    states it already."""
    return ", ".join(
        f"{ratios[k]:.2f}x {what}" for k, what in ORT_INT8_RATIOS[skip_default:] if ratios.get(k) is not None
    )
