"""Does the certificate predict the dev set? Every finished `axformer optimize` run on this machine, read back.

Usage:  python benchmarks/experiments/certificate_calibration.py [--runs runs]
            [--out benchmarks/experiments/certificate_calibration.md]

For each run directory under ``--runs`` that has a search report with a certificate and a benchmark (searches,
not the recipe: it has no bootstrap interval), it takes the shipped model's certificate (difference of the main
metric to the original on the confirmation examples, with its 95% paired bootstrap interval) and the same
model's dev difference to the original (PyTorch rows of the benchmark, so precision plays no part), and asks:

- is the confirmation estimate an unbiased predictor of the dev change (mean and spread of dev minus
  confirmation, against what sampling alone explains: the two intervals' half-widths combined), and
- what the export's precision step added (the artifact's own confirmation check and dev change), and
- how each acceptance rule would have judged the shipped model: ``estimate`` (the default: the measured drop
  within the tolerance), the estimate less 1 standard error, and ``bound`` (the interval's lower end), each
  against whether dev kept the promise.

It reads what earlier runs left on disk (nothing is re-run, no dev data feeds a decision); runs of different
code versions are pooled, so it is evidence about the rule, not about one version. The tolerance per run is the
certificate's own allowance (0 for the accuracy goal).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import environment_line  # noqa: E402

from axformer.benchmark.result import BenchmarkResult  # noqa: E402
from axformer.benchmark.run import DYNAMIC  # noqa: E402
from axformer.search.result import SearchReport  # noqa: E402

Z = 1.959964  # the certificate's interval is 95%, two-sided


def collect(root: Path) -> list[dict]:
    found = []
    for report_path in sorted(root.glob("**/3-search/report.json")):
        run = report_path.parent.parent
        bench_path = run / "5-benchmark" / "benchmark.json"
        raw = json.loads(report_path.read_text())
        if raw.get("strategy") == "fastformers" or not bench_path.exists() or not raw.get("certification"):
            continue
        search = SearchReport.from_dict(raw)
        shipped = search.certification.shipped
        main = shipped.main_metric
        diff = shipped.differences[main]
        bench = BenchmarkResult.from_dict(json.loads(bench_path.read_text()))
        model = next((r for r in bench.rows if not r.baseline and r.kind == "pytorch"), None)
        if model is None:
            continue
        allowed = shipped.allowed_drop.get(main, 0.0)
        export = json.loads((run / "4-export" / "export.json").read_text())["validation"]
        found.append(
            {
                "run": str(run.relative_to(root)),
                "task": search.task.name,
                "goal": raw.get("config", {}).get("goal", "?"),
                "metric": main,
                "examples": diff.examples,
                "allowed": allowed,
                "confirmation": diff.difference,
                "se": (diff.high - diff.low) / (2 * Z),
                "low": diff.low,
                "dev": model.dev.metrics[main] - bench.row(DYNAMIC).dev.metrics[main],
                "dev_examples": bench.task.dev_examples,
                "changed": diff.difference != 0.0 or diff.high != diff.low,
                # the deployed artifact: the export's own check against the original on the confirmation
                # examples, and its dev change (the benchmark's last row)
                "artifact_confirmation": -export["drop"],
                "artifact_dev": bench.rows[-1].dev.metrics[main] - bench.row(DYNAMIC).dev.metrics[main],
            }
        )
    return found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--out", default="benchmarks/experiments/certificate_calibration.md")
    args = ap.parse_args()
    rows = [r for r in collect(Path(args.runs)) if r["changed"]]  # an unchanged model says nothing
    if not rows:
        sys.exit(f"no search run with a certificate and a benchmark under {args.runs}")
    lines = [
        "# Does the certificate predict the dev set?",
        "",
        f"Produced by `python benchmarks/experiments/certificate_calibration.py --runs {args.runs}` "
        f"({environment_line()}), "
        "reading back every finished `axformer optimize` search run there whose shipped model differs from the "
        "original. Differences are the shipped model's main metric minus the original's, in points, PyTorch "
        "rows of the benchmark for dev; SE is the confirmation interval's width / 3.92.",
        "",
        "| run | task | goal | confirmation (n) | SE | dev (n) | dev - confirmation | kept on dev | estimate | "
        "estimate - 1 SE | bound | artifact: confirmation | artifact: dev |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rules = {
        "estimate": lambda r: r["confirmation"] >= -r["allowed"],
        "estimate - 1 SE": lambda r: r["confirmation"] - r["se"] >= -r["allowed"],
        "bound": lambda r: r["low"] >= -r["allowed"],
    }
    for r in rows:
        kept = r["dev"] >= -r["allowed"]
        verdict = ["pass" if rule(r) else "fail" for rule in rules.values()]
        lines.append(
            f"| {r['run']} | {r['task']} | {r['goal']} | {r['confirmation']:+.2f} ({r['examples']}) | "
            f"{r['se']:.2f} | {r['dev']:+.2f} ({r['dev_examples']}) | {r['dev'] - r['confirmation']:+.2f} | "
            f"{'yes' if kept else 'no'} | "
            + " | ".join(verdict)
            + f" | {r['artifact_confirmation']:+.2f} | {r['artifact_dev']:+.2f} |"
        )
    gaps = [r["dev"] - r["confirmation"] for r in rows]
    mean = sum(gaps) / len(gaps)
    sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / max(1, len(gaps) - 1))
    lines += [
        "",
        f"Runs: {len(rows)}. Dev minus confirmation: mean {mean:+.2f} points, standard deviation {sd:.2f} "
        f"(the confirmation SE alone averages {sum(r['se'] for r in rows) / len(rows):.2f}; the dev set adds its own).",
        "",
        "| rule | passed | passed and kept on dev | passed and broken on dev | failed but kept on dev |",
        "|---|---|---|---|---|",
    ]
    for name, rule in rules.items():
        passed = [r for r in rows if rule(r)]
        kept = [r for r in passed if r["dev"] >= -r["allowed"]]
        missed = [r for r in rows if not rule(r) and r["dev"] >= -r["allowed"]]
        lines.append(f"| {name} | {len(passed)} | {len(kept)} | {len(passed) - len(kept)} | {len(missed)} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
