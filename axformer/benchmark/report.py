"""The benchmark's table (Markdown) and its accuracy/latency trade-off plot."""

from __future__ import annotations

from pathlib import Path

from axformer.benchmark.pricing import price_note
from axformer.benchmark.result import ORT_INT8, BenchmarkResult, Step


def _f(v, fmt: str = "{:.2f}", none: str = "-") -> str:
    return none if v is None else fmt.format(v)


def markdown(result: BenchmarkResult) -> str:
    rows = result.rows
    main = result.task.main_metric
    ref = rows[0]
    ref_lat, ref_thr = ref.timing.latency_p50_ms, ref.timing.throughput_per_s
    env = result.environment
    cfg = result.config
    cost = result.price_per_hour > 0
    lengths = list(rows[0].fixed)
    head = [
        "model",
        f"dev {main}",
        "batch-1 p50 ms",
        "p95 ms",
        "batch-1 speed-up",
        "batch-32 ex/s",
        "throughput gain",
        "multi-instance ex/s",
        *[f"{L} tok p50 ms" for L in lengths],
        "peak MiB",
        "size MiB",
        "params",
        "FLOPs/token @128",
    ] + (["USD / 100M req."] if cost else [])
    lines = [
        f"# Benchmark: {result.task.name} ({result.task.dev_examples} {result.task.dev_split} examples)",
        "",
        f"Hardware: {env['machine']}, {env['cpu'] or 'unknown CPU'} ({env['cores']} cores; "
        f"{env['cpu_flags'] or 'no AVX flags read'})"
        + (f", GPU {env['cuda']}" if env.get("cuda") else ", no GPU")
        + f". torch {env['torch']} ({env['torch_threads']} threads), transformers "
        f"{env['transformers']}, onnxruntime {env['onnxruntime']}, Python {env['python']}.",
        "All rows measured in the same run; speed-ups are against the first row. Batch-1 latency "
        f"over {cfg['latency_examples']} dev requests x "
        f"{cfg['rounds']} interleaved rounds"
        + (f", {cfg['threads']} thread(s) per row" if cfg.get("threads") else "")
        + "; throughput at batch 32 on "
        f"{cfg['throughput_examples']} dev examples (median of rounds)."
        + (
            f" Cost: USD {result.price_per_hour:.3f} per machine "
            f"hour{price_note(result.price_per_hour)}, at the best measured throughput."
            if cost
            else ""
        ),
        "",
        "What was measured: the dev metric of every row on the whole dev set (the padded baseline runs the "
        "dynamic-length row's weights with the padding masked, so its dev metric is that row's); batch-1 latency per "
        "request (p50/p95) on real dev texts, "
        "each padded only to its own length except the 'padded' baseline (padded to the maximum "
        "length, as a pipeline does out of the box); "
        "batch-32 throughput on dev texts (batches of similar length); batch-1 latency at fixed "
        "lengths on synthetic token ids; multi-instance "
        "throughput with one single-threaded worker process per core, each pinned to its core; peak "
        "resident memory of a fresh process that "
        "loads the model and runs the widest batch; size of the weights on disk.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        t = r.timing
        cells = [
            r.name + (" (baseline)" if r.baseline else ""),
            _f(r.dev.metrics.get(main)),
            _f(t.latency_p50_ms),
            _f(t.latency_p95_ms),
            _f(ref_lat / t.latency_p50_ms if t.latency_p50_ms else None, "{:.2f}x"),
            _f(t.throughput_per_s, "{:.1f}"),
            _f(t.throughput_per_s / ref_thr if ref_thr else None, "{:.2f}x"),
            _f(r.multi_instance.throughput_per_s if r.multi_instance else None, "{:.1f}"),
            *[_f(r.fixed[L].latency_p50_ms if L in r.fixed else None) for L in lengths],
            _f(r.peak_memory_mib, "{:.0f}"),
            _f(r.size_bytes / 2**20 if r.size_bytes else None, "{:.1f}"),
            _f(r.parameters / 1e6 if r.parameters else None, "{:.2f} M"),
            _f(r.flops_per_token / 1e6 if r.flops_per_token else None, "{:.1f} M"),
        ]
        if cost:
            cells.append(_f(r.usd_per_100m, "{:.2f}") + (f" ({r.cost_basis})" if r.usd_per_100m is not None else ""))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Fixed-length throughput (examples/s at batch "
        + str(cfg["fixed_batch"])
        + "): "
        + "; ".join(
            f"{r.name}: " + ", ".join(f"{L} tok {_f(t.throughput_per_s, '{:.1f}')}" for L, t in r.fixed.items())
            for r in rows
        ),
        "",
    ]
    lines += [
        "Parameters and FLOPs of an ONNX artifact are those of the PyTorch model it was exported "
        "from (quantization changes bytes, not counts).",
        "",
    ]
    lines += one_thread_markdown(result)
    lines += lean_markdown(result)
    lines += cumulative_markdown(result)
    return "\n".join(lines)


def one_thread_markdown(result: BenchmarkResult) -> list[str]:
    """Batch-1 latency with one intra-op thread per row, and each ONNX row at its faster thread count, against ONNX
    Runtime int8 of the original where it is a row (else the first row timed this way): on a 2-vCPU share the
    steadier ratios, and the one a deployer who sets threads per model gets."""
    timed = [r for r in result.rows if r.timing_one_thread and r.timing_one_thread.latency_p50_ms]
    if not timed:
        return []
    ref = next((r for r in timed if r.name == ORT_INT8), timed[0])
    ref_ms = ref.timing_one_thread.latency_p50_ms
    ref_faster = ref.faster_threads
    lines = [
        "## Batch 1 with one thread per row, and at each row's faster thread count",
        "",
        f"The first {result.config.get('one_thread_requests')} of the same dev requests, each row's session (or "
        f"PyTorch) limited to one intra-op thread, interleaved rounds as above; speed-up against {ref.name}. On a "
        "machine shared with other work the multi-threaded figure moves with what the other cores are doing; this "
        "one measures how much less work a row does. In the same rounds each ONNX row ran on its default threads "
        "too: its faster thread count is chosen on the even-numbered requests and timed on the odd-numbered ones, "
        "so that taking the faster of two noisy figures flatters no row; the last column compares each row at its "
        "own faster count, as a deployer who sets threads per model runs them.",
        "",
        "| model | batch-1 p50 ms (1 thread) | p95 ms | speed-up (1 thread) | speed-up (default threads) "
        "| faster thread count (p50 ms when choosing: 1 / default) | p50 ms there | speed-up (each at its faster) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ref_default = ref.timing.latency_p50_ms
    for r in timed:
        t, default_ms, f = r.timing_one_thread, r.timing.latency_p50_ms, r.faster_threads
        default = ref_default / default_ms if ref_default and default_ms else None
        faster = "-"
        if f:
            faster = f"{f.threads} ({f.choosing_p50_ms['1']:.2f} / {f.choosing_p50_ms['default']:.2f})"
        fastest = ref_faster.latency_p50_ms / f.latency_p50_ms if f and ref_faster else None
        lines.append(
            f"| {r.name} | {t.latency_p50_ms:.2f} | {_f(t.latency_p95_ms)} | {ref_ms / t.latency_p50_ms:.2f}x | "
            f"{_f(default, '{:.2f}x')} | {faster} | {_f(f.latency_p50_ms if f else None)} "
            f"| {_f(fastest, '{:.2f}x')} |"
        )
    return lines + [""]


def lean_markdown(result: BenchmarkResult) -> list[str]:
    """Where one request's time goes, text in and answer out, on the lean path and through Predictor."""
    served = [r for r in result.rows if r.lean]
    if not served:
        return []
    lines = [
        "## One request end to end (batch 1, text in, answer out)",
        "",
        "The lean path (`axformer.runtime.lean.LeanSession`) calls the fast tokenizer's backend once and feeds its ids "
        "to the session as they are, with session options chosen by timing them here (Predictor takes it for a "
        "single request); the batch path, which serves several, goes through a split, sorting, torch tensors "
        "and a scatter. Medians over "
        f"{result.config.get('breakdown_requests')} dev requests, ms.",
        "",
        "| model | session options (fastest here) | tokenize | prepare inputs | session run | post-process "
        "| lean total | batch path total | batch path overhead over the run | lean speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in served:
        b, c = r.lean.breakdown, r.lean.choice
        options = (
            f"{c['threads']} thread{'s' if c['threads'] > 1 else ''}, spinning {'on' if c['spinning'] else 'off'}, "
            f"{c['graph_level']}, {c['execution']}"
        )
        lines.append(
            f"| {r.name} | {options} | {b['tokenize']:.3f} | {b['prepare']:.3f} | {b['run']:.3f} | {b['post']:.3f} "
            f"| {b['lean']:.3f} | {b['predictor']:.3f} | {b['predictor_overhead']:.3f} "
            f"| {b['predictor'] / b['lean']:.2f}x |"
        )
    return lines + [""]


def cumulative(result: BenchmarkResult) -> list[Step]:
    """FastFormers' cumulative view: each step of the chain, its own speed-up over the previous step and the total.

    The chain is ``config.chain`` (row names in order) or every row; when the
    last step ran multi-instance, that mode is one more step (throughput only).
    """
    rows = {r.name: r for r in result.rows}
    names = [n for n in (result.config.get("chain") or [r.name for r in result.rows]) if n in rows]
    main = result.task.main_metric
    steps: list[Step] = []
    prev = None
    first = rows[names[0]] if names else None
    int8 = rows.get(ORT_INT8)
    int8_ms = int8.timing.latency_p50_ms if int8 else None
    for n in names:
        r = rows[n]
        lat, thr = r.timing.latency_p50_ms, r.timing.throughput_per_s
        steps.append(
            Step(
                step=n,
                metric=r.dev.metrics.get(main),
                latency_ms=lat,
                throughput_per_s=thr,
                step_latency_speedup=prev.timing.latency_p50_ms / lat if prev else 1.0,
                step_throughput_gain=thr / prev.timing.throughput_per_s if prev else 1.0,
                total_latency_speedup=first.timing.latency_p50_ms / lat,
                total_throughput_gain=thr / first.timing.throughput_per_s,
                latency_vs_ort_int8=int8_ms / lat if int8_ms and lat else None,
            )
        )
        prev = r
    if prev is not None and prev.multi_instance:
        mi = prev.multi_instance
        steps.append(
            Step(
                step=f"+ multi-instance ({mi.instances} x {mi.threads_per_instance} thread)",
                metric=prev.dev.metrics.get(main),
                latency_ms=None,
                throughput_per_s=mi.throughput_per_s,
                step_latency_speedup=None,
                step_throughput_gain=mi.throughput_per_s / prev.timing.throughput_per_s,
                total_latency_speedup=None,
                total_throughput_gain=mi.throughput_per_s / first.timing.throughput_per_s,
            )
        )
    return steps


def cumulative_markdown(result: BenchmarkResult) -> list[str]:
    steps = result.cumulative or cumulative(result)
    if len(steps) < 2:
        return []
    main = result.task.main_metric
    lines = [
        "## Cumulative view (FastFormers style)",
        "",
        "Each step adds one optimization to the previous row; throughput at batch 32, latency at batch 1. The "
        f"last column is each step's batch-1 speed-up over {ORT_INT8} of the unpruned model, what a user would "
        "otherwise deploy.",
        "",
        f"| step | dev {main} | batch-1 step speed-up | batch-1 total | batch-32 step gain | batch-32 total "
        "| batch-1 vs ONNX Runtime int8 of the original |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        lines.append(
            f"| {s.step} | {_f(s.metric)} | {_f(s.step_latency_speedup, '{:.2f}x')} | "
            f"{_f(s.total_latency_speedup, '{:.2f}x')} | "
            f"{_f(s.step_throughput_gain, '{:.2f}x')} | {_f(s.total_throughput_gain, '{:.2f}x')} "
            f"| {_f(s.latency_vs_ort_int8, '{:.2f}x')} |"
        )
    return lines + [""]


def plot(result: BenchmarkResult, path: str | Path) -> Path:
    """Dev metric against batch-1 latency: one point per row, baselines hollow, named in a legend.

    A legend rather than labels at the points: baselines of equal accuracy sit on one line and their labels
    would overlap. Latency on a log axis: rows span an order of magnitude (padded PyTorch to int8 ONNX)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    main = result.task.main_metric
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    markers = "osD^vP*Xh<>"
    for i, r in enumerate(result.rows):
        x, y = r.timing.latency_p50_ms, r.dev.metrics.get(main)
        if x is None or y is None:
            continue
        color = f"C{i % 10}"
        ax.scatter(
            [x],
            [y],
            s=70,
            marker=markers[i % len(markers)],
            facecolors="none" if r.baseline else color,
            edgecolors=color,
            linewidths=1.5,
            zorder=3,
            label=f"{r.name}{' (baseline)' if r.baseline else ''}: {y:.2f}, {x:.2f} ms",
        )
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("batch-1 latency on dev texts, p50 (ms, log scale)")
    ax.set_ylabel(f"dev {main}")
    ax.set_title(f"{result.task.name}: accuracy vs latency (hollow: baselines)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
