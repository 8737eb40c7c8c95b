"""The pipeline's report: one self-contained HTML page (images inlined) and the same in Markdown.

Every figure on the page is read from the stages' own outputs (search
report, benchmark.json, significance.json); nothing is re-measured here.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from axformer.benchmark.pricing import price_note
from axformer.benchmark.result import ORT_INT8, BenchmarkResult, batch1_speedups, ratios_text
from axformer.demo import model_display_name
from axformer.pipeline.config import DIRS
from axformer.search.report import certification_lines
from axformer.search.result import SearchReport
from axformer.surgery.components import layer_name
from axformer.utils.io import read_json, write_json

STYLE = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em
auto;padding:0 1em;color:#1d1d1f}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%;border:1px solid
#eee;margin:.5em 0}
code,pre{background:#f6f6f6;padding:2px 4px}.good{color:#107c10}.bad{color:#a4262c}.note{color:#555;font-size:13px}"""


def _table(headers: list[str], rows: list[list[str]]) -> tuple[str, str]:
    md = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + ["| " + " | ".join(r) + " |" for r in rows]
    h = (
        "<table><tr>"
        + "".join(f"<th>{html.escape(x)}</th>" for x in headers)
        + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        + "</table>"
    )
    return "\n".join(md), h


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _fmt(v, spec="{:.2f}") -> str:
    return "-" if v is None else spec.format(v)


def _candidates_plot(search: SearchReport, log: list[dict], main: str, path: Path) -> Path | None:
    """Held-out main metric of every candidate the search evaluated, against its predicted speed-up (or trial order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in log if r.get("metric") is not None]
    if not rows:
        return None
    x = [r.get("predicted_ratio_if_accepted", r["trial"]) for r in rows]
    by_ratio = any("predicted_ratio_if_accepted" in r for r in rows)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for accepted, colour, label in ((False, "#bbbbbb", "rejected"), (True, "#107c10", "accepted")):
        pts = [(xi, r["metric"]) for xi, r in zip(x, rows) if r["accepted"] == accepted]
        if pts:
            ax.scatter(*zip(*pts), s=14, c=colour, label=label)
    ax.axhline(search.original.heldout.metrics[main], color="#0063b1", lw=1, label="original")
    if search.search.threshold is not None:
        ax.axhline(search.search.threshold, color="#a4262c", lw=1, ls="--", label="tolerance")
    ax.set_xlabel("predicted batch-1 speed-up if accepted (calibrated cost model)" if by_ratio else "trial")
    ax.set_ylabel(f"held-out {main}")
    ax.set_title("every candidate the search evaluated (completed evaluations)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mib(b: int) -> str:
    return f"{b / 2**20:.2f} MiB"


def _part_cell(size: dict, part: str) -> str:
    formats = size["parts"].get(part, {})
    total = size["part_bytes"].get(part, 0)
    if not total:
        return "-"
    detail = ", ".join(f"{f} {b / 2**20:.2f}" for f, b in formats.items() if b)
    return f"{_mib(total)} ({detail})" if len(formats) > 1 else f"{_mib(total)} {next(iter(formats), '')}"


def _size_section(out: Path, model: str, export: dict, search, section, add_table) -> dict:
    """Bytes on disk by part and format: the fp32 original, ONNX Runtime int8 of it (the benchmark's baseline) and
    the artifact; the vocabulary kept and what it costs on the confirmation texts."""
    from axformer.export.size import breakdown_of
    from axformer.runtime.backends import is_onnx_artifact

    cols = {"original (fp32)": breakdown_of(model)}
    baseline = out / DIRS["benchmark"] / "baselines" / "onnx-int8"
    if is_onnx_artifact(baseline):
        cols["ONNX Runtime int8 (unpruned)"] = breakdown_of(baseline)
    cols["deployed artifact"] = export["size"]
    original = cols["original (fp32)"]
    rows = [[part] + [_part_cell(c, part) for c in cols.values()] for part in ("embeddings", "encoder", "head")]
    rows += [
        ["graph and other"] + [_mib(c["graph_bytes"] + c["part_bytes"].get("other", 0)) for c in cols.values()],
        ["model file"] + [_mib(c["file_bytes"]) for c in cols.values()],
        ["to serve (model, config, tokenizer)"] + [_mib(c["directory_bytes"]) for c in cols.values()],
        ["smaller than the original (model file)"]
        + [f"{original['file_bytes'] / c['file_bytes']:.2f}x" for c in cols.values()],
    ]
    text = "Read from the written files (formats: fp32/int8/int4 MiB of each part)."
    result = {
        "artifact_bytes": export["size"]["file_bytes"],
        "artifact_serving_bytes": export["size"]["directory_bytes"],
        "original_bytes": original["file_bytes"],
        "size_reduction_on_disk": original["file_bytes"] / export["size"]["file_bytes"],
    }
    cost = search.search.cost_model if search is not None else None
    if cost and cost.get("quantity") == "bytes" and search.search.predicted_ratio:
        predicted = cost["baseline"] / search.search.predicted_ratio
        size = export["size"]
        weights = size["file_bytes"] - size["graph_bytes"]
        result["artifact_weight_bytes_predicted"] = predicted
        result["artifact_weight_bytes"] = weights
        text += (
            f" The size search predicted {_mib(predicted)} of weights for this structure and format; the file "
            f"holds {_mib(weights)} ({100 * (weights / predicted - 1):+.1f}%) plus {_mib(size['graph_bytes'])} "
            "of graph (names, shapes, nodes: not predicted)."
        )
    compaction = export.get("compaction") or {}
    vocab = compaction.get("vocabulary")
    if vocab:
        cov = vocab["coverage"].get("confirmation", vocab["coverage"]["heldout"])
        where = "confirmation" if "confirmation" in vocab["coverage"] else "held-out"
        text += (
            f" Vocabulary: {vocab['kept_size']:,} of {vocab['original_size']:,} tokens kept (those the training "
            f"texts use{', plus every single character' if vocab['characters'] else ''}); on the {where} texts "
            f"{cov['outside_percent']:.2f}% of the original tokens fall outside it (re-spelled from kept pieces), "
            f"{cov['unknown_after_percent']:.2f}% became unknown."
            + (" It broke the promise and was undone." if compaction.get("undone") else "")
        )
        result["vocabulary_kept"] = vocab["kept_size"]
        result[f"{where.replace('-', '')}_tokens_outside_percent"] = cov["outside_percent"]
    if compaction.get("positions", {}).get("kept_rows"):
        text += f" Position embeddings kept for {compaction['positions']['max_seq_length']} tokens."
    section("Size on disk", text)
    add_table(["part", *cols], rows)
    return result


def _training_precision(model_dir: Path) -> str:
    """A sentence naming the training stages of the model's history that ran in mixed precision (empty if none)."""
    record = model_dir / "axformer.json"
    history = read_json(record).get("history", []) if record.exists() else []
    mixed = [f"{h['stage']} in {h['precision']}" for h in history if h.get("precision", "fp32") != "fp32"]
    if not mixed:
        return ""
    return (
        f" Training steps ran in mixed precision where the hardware has it ({', '.join(mixed)}; weights kept in "
        "fp32); every evaluation and decision ran in fp32."
    )


def write_report(out: Path, cfg, times: dict, model: str, finetuned: bool, stopped: str | None = None) -> dict:
    """Write report.html and report.md into ``out``; returns the summary (also in summary.json)."""
    md: list[str] = []
    body: list[str] = []

    def section(title: str, text: str = "") -> None:
        md.extend([f"## {title}", "", text, ""] if text else [f"## {title}", ""])
        body.append(f"<h2>{html.escape(title)}</h2>" + (f"<p>{html.escape(text)}</p>" if text else ""))

    def add_table(headers, rows) -> None:
        m, h = _table(headers, rows)
        md.extend([m, ""])
        body.append(h)

    def add_paragraph(text: str) -> None:
        md.extend([text, ""])
        body.append(f"<p>{html.escape(text)}</p>")

    search_dir, bench_dir, analysis_dir = out / DIRS["search"], out / DIRS["benchmark"], out / DIRS["analyze"]
    raw = read_json(search_dir / "report.json") if (search_dir / "report.json").exists() else None
    recipe = raw if raw is not None and raw.get("strategy") == "fastformers" else None  # the recipe's own report
    search = SearchReport.from_dict(raw) if raw is not None and recipe is None else None
    bench = (
        BenchmarkResult.from_dict(read_json(bench_dir / "benchmark.json"))
        if (bench_dir / "benchmark.json").exists()
        else None
    )
    task_name = search.task.name if search else bench.task.name if bench else (recipe or {}).get("task", {}).get("name")
    main = search.task.main_metric if search else bench.task.main_metric if bench else "metric"
    display = search.task.display_name if search else (recipe or {}).get("task", {}).get("display_name", task_name)
    title = f"axformer: {model_display_name(cfg.model)} on {display or cfg.task}"
    goal = cfg.search.goal if cfg.search.strategy == "search" else "FastFormers recipe"
    stages = ", ".join(
        f"{s} ({times[s] / 60:.1f} min)" for s in ("finetune", "analyze", "search", "export", "benchmark") if s in times
    )
    why = {
        "accuracy": "AxFormer's accuracy-driven search: keep only the changes that lower the held-out loss and "
        "make most examples no worse.",
        "speed": f"the fastest model whose held-out metrics stay within {cfg.search.tolerance.max_drop} points of the "
        "original (latency measured on this machine).",
        "size": f"the smallest model whose held-out metrics stay within {cfg.search.tolerance.max_drop} points of "
        "the original.",
    }.get(goal, "distil, prune, distil again.")
    md += [f"# {title}", ""]
    body.append(f"<h1>{html.escape(title)}</h1>")
    section(
        "What was done and why",
        f"Goal: {goal}: {why} Stages: "
        f"{'fine-tuned first (the checkpoint had no task head); ' if finetuned else ''}{stages}. "
        f"Decisions used the held-out part of the training data only; the dev set only reports."
        + _training_precision(search_dir),
    )
    summary: dict = {"output": str(out), "task": task_name, "goal": goal}
    if stopped is not None:
        section("The run stopped early", f"{stopped}. Everything below is what the finished stages produced.")
        summary["stopped"] = stopped
    export_dir = out / DIRS["export"]
    export = read_json(export_dir / "export.json") if (export_dir / "export.json").exists() else None
    promise = [line for line in certification_lines(search) if line] if search is not None else []
    if export is not None:
        v = export["validation"]
        promise.append(
            f"The deployed {export['precision']} artifact against {Path(v['reference_model']).name} on the "
            f"{v['checked_on']} examples: {main} {v['pytorch']['metrics'][main]:.2f} -> "
            f"{v['onnx']['metrics'][main]:.2f} ({-v['drop']:+.2f}; limit {v['max_drop']} points)."
        )
        if export.get("fallback"):
            promise.append(export["fallback"]["note"] + ".")
        if export.get("backtracked"):  # first: what follows describes the original's artifact
            promise.insert(0, export["backtracked"]["note"] + ".")
    if promise:
        section("The promise, on examples no decision used", " ".join(promise))
    if search is not None and search.certification is not None:
        c = search.certification
        summary.update(
            {
                "certificate_passed": c.shipped.passed,
                "confirmation_original": c.shipped.main.original,
                "confirmation_optimized": c.shipped.main.candidate,
                "undone": c.shipped_undone,
            }
        )
    if recipe is not None and recipe["recipe"].get("trials"):  # the smaller students tried, and which was kept
        summary["student_trials"] = recipe["recipe"]["trials"]
        summary["student"] = recipe["recipe"].get("student")
    if export is not None:
        summary["export_precision"] = export["precision"]
        summary["export_fallback"] = export.get("fallback")
        summary["export_backtracked"] = export.get("backtracked")
    if bench is not None:
        rows = bench.rows
        original = next(r for r in rows if r.baseline and not r.padded and r.kind == "pytorch")
        artifact = rows[-1]
        # the searched model: the last PyTorch row (a recipe's student before pruning comes before it)
        torch_opt = next((r for r in reversed(rows) if not r.baseline and r.kind == "pytorch"), None)
        price = bench.price_per_hour
        headers = (
            ["", "original (PyTorch)"]
            + (["optimized (PyTorch)"] if torch_opt else [])
            + ["optimized (deployed artifact)", "artifact vs original"]
        )
        cols = [original] + ([torch_opt] if torch_opt else []) + [artifact]
        lat = [c.timing.latency_p50_ms for c in cols]
        thr = [c.timing.throughput_per_s for c in cols]
        table = []
        for metric in original.dev.metrics:
            table.append(
                [f"dev {metric}"]
                + [_fmt(c.dev.metrics.get(metric)) for c in cols]
                + [f"{artifact.dev.metrics[metric] - original.dev.metrics[metric]:+.2f}"]
            )
        if search is not None:
            o, p = search.original.heldout.metrics, search.optimized.heldout.metrics
            for metric in o:
                table.append(
                    [f"held-out {metric}", _fmt(o[metric])]
                    + ([_fmt(p[metric])] if torch_opt else [])
                    + ["-", f"{p[metric] - o[metric]:+.2f} (PyTorch)"]
                )
        table += [
            ["latency, batch 1, dev texts (p50)"] + [f"{v:.2f} ms" for v in lat] + [f"{lat[0] / lat[-1]:.2f}x faster"],
            ["throughput, batch 32"] + [f"{v:.0f}/s" for v in thr] + [f"{thr[-1] / thr[0]:.2f}x"],
            ["size"]
            + [_fmt(c.size_bytes / 2**20, "{:.1f} MiB") if c.size_bytes else "-" for c in cols]
            + [f"{original.size_bytes / artifact.size_bytes:.2f}x smaller" if artifact.size_bytes else "-"],
            ["parameters"] + [_fmt(c.parameters / 1e6 if c.parameters else None, "{:.2f} M") for c in cols] + ["-"],
        ]
        if price:
            table.append(
                [f"USD per 100M requests (at {price}/h{price_note(price)})"]
                + [_fmt(c.usd_per_100m) for c in cols]
                + [f"{original.usd_per_100m / artifact.usd_per_100m:.1f}x cheaper" if artifact.usd_per_100m else "-"]
            )
        section(
            "Original vs optimized",
            f"Measured in one benchmark run on this machine ({bench.environment['cpu']}, "
            f"{bench.environment['cores']} cores), "
            f"medians of {bench.config['rounds']} interleaved rounds"
            + (f", {bench.config['threads']} thread(s) per row." if bench.config.get("threads") else "."),
        )
        add_table(headers, table)
        int8 = next((r for r in rows if r.name == ORT_INT8), None)
        ratios = batch1_speedups(original, artifact, int8)
        if int8 is not None:
            add_paragraph(
                "Against ONNX Runtime int8 of the unpruned model (what a user would otherwise deploy), the artifact "
                f"at batch 1: {ratios_text(ratios)}. On a machine shared with other work the multi-threaded "
                "ratio moves with what the other cores do; the one-thread ratio measures the work the model saves."
            )
        summary.update(
            {
                **{k: v for k, v in ratios.items() if k != "speedup_vs_original"},
                "dev_original": original.dev.metrics[main],
                "dev_optimized": artifact.dev.metrics[main],
                "latency_speedup": lat[0] / lat[-1],
                "throughput_gain": thr[-1] / thr[0],
                "size_reduction": original.size_bytes / artifact.size_bytes if artifact.size_bytes else None,
                "artifact": artifact.path,
            }
        )
        section(
            "Cumulative view (FastFormers)",
            "Each step's speed-up over the step before, over the out-of-the-box baseline and over ONNX Runtime int8 "
            "of the unpruned model (what a user would otherwise deploy).",
        )
        add_table(
            [
                "step",
                f"dev {main}",
                "batch-1 latency",
                "step speed-up",
                "total speed-up",
                "vs ORT int8 of the original",
                "batch-32 total gain",
            ],
            [
                [
                    Path(c.step).name if "/" in c.step else c.step,
                    _fmt(c.metric),
                    _fmt(c.latency_ms, "{:.2f} ms"),
                    _fmt(c.step_latency_speedup, "{:.2f}x"),
                    _fmt(c.total_latency_speedup, "{:.2f}x"),
                    _fmt(c.latency_vs_ort_int8, "{:.2f}x"),
                    _fmt(c.total_throughput_gain, "{:.2f}x"),
                ]
                for c in bench.cumulative
            ],
        )
        section("All rows of the benchmark")
        add_table(
            ["row", f"dev {main}", "p50", "p95", "throughput", "size", "USD/100M"],
            [
                [
                    r.name,
                    _fmt(r.dev.metrics[main]),
                    _fmt(r.timing.latency_p50_ms, "{:.2f} ms"),
                    _fmt(r.timing.latency_p95_ms, "{:.2f} ms"),
                    _fmt(r.timing.throughput_per_s, "{:.0f}/s"),
                    _fmt(r.size_bytes / 2**20 if r.size_bytes else None, "{:.1f} MiB"),
                    _fmt(r.usd_per_100m),
                ]
                for r in rows
            ],
        )
    if export is not None and export.get("size"):
        summary.update(_size_section(out, model, export, search, section, add_table))
    if search is not None:
        s = search.search
        section(
            "The search",
            f"Rule: {s.rule}. {s.trials} trials ({s.accepted} accepted) in {s.seconds / 60:.1f} min. "
            f"Removed ({len(search.removed)}): {', '.join(search.removed) or 'nothing'}. "
            f"Approximate attention: {', '.join(layer_name(int(k)) for k in search.attention) or 'no layer'}."
            + "".join(f" {n}." for n in s.attention_notes),
        )
        plots = []
        log_path = search_dir / "search_log.jsonl"
        if log_path.exists():
            log = [json.loads(l) for l in log_path.read_text().splitlines() if l.strip()]
            p = _candidates_plot(search, log, main, out / "search_candidates.png")
            if p is not None:
                plots.append(p)
        if (bench_dir / "tradeoff.png").exists():
            plots.append(bench_dir / "tradeoff.png")
        if plots:
            section(
                "Accuracy / latency trade-off",
                "First: every candidate the search evaluated (held-out metric against the speed-up "
                "the calibrated cost model predicts). Second: the measured models and the baselines "
                "(dev metric against measured latency).",
            )
            body.append("".join(_img(p) for p in plots))
            md.extend([f"![{p.stem}]({p.relative_to(out)})" for p in plots] + [""])
    elif recipe is not None:
        from axformer.distill.recipe import rounding_note

        section("FastFormers recipe", rounding_note(recipe["recipe"]))
        stages_rows = recipe["recipe"]["stages"]
        add_table(
            ["stage", f"held-out {main}", "parameters", "stage time"],
            [
                [
                    s["stage"],
                    _fmt(s["heldout"]["metrics"][main]),
                    _fmt(s.get("parameters", 0) / 1e6, "{:.2f} M"),
                    _fmt((s["seconds"] or 0) / 60, "{:.1f} min"),
                ]
                for s in stages_rows
            ],
        )
        if recipe["recipe"].get("trials"):
            from axformer.distill.recipe import trials_table

            intro, headers, rows = trials_table(recipe["recipe"])
            add_paragraph(intro)
            add_table(headers, rows)
    heatmaps = sorted(analysis_dir.glob("*.png")) if analysis_dir.exists() else []
    if heatmaps:
        section(
            "Significance (held-out split)",
            "What each component is worth to this task: the analysis the search ranks its candidates by.",
        )
        body.append("".join(_img(p) for p in heatmaps))
        md.extend([f"![{p.stem}]({p.relative_to(out)})" for p in heatmaps] + [""])
    if bench is not None:
        env = bench.environment
        section("Hardware and versions", ", ".join(f"{k} {v}" for k, v in env.items() if v is not None) + ".")
    section("Reproduce", f"axformer optimize --config {out / 'config.yaml'}")
    (out / "report.md").write_text("\n".join(md) + "\n")
    head = f"<meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style>"
    page = f"<!doctype html><html><head>{head}</head><body>{''.join(body)}</body></html>"
    (out / "report.html").write_text(page)
    write_json(out / "summary.json", summary)
    return summary
