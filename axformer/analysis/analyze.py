"""``axformer analyze``: every significance score of a model for its task, on the held-out split.

Writes ``significance.json`` (all scores, the split, model and task),
``ablation_losses.npz`` (per-example held-out losses of every single removal,
for AxFormer's acceptance test), ``summary.md`` and PNG heatmaps. Rows are
logged as they are measured, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from axformer.analysis.ablation import AblationRow, ablation_candidates, run_ablation
from axformer.analysis.gradient import gradient_importance
from axformer.analysis.quantization import QuantRow, run_quant_sensitivity
from axformer.analysis.report import summary_markdown, write_heatmaps
from axformer.analysis.similarity import layer_similarity
from axformer.errors import AxformerError
from axformer.evaluation.context import load_context
from axformer.evaluation.engine import EvaluationEngine
from axformer.models.loading import is_local
from axformer.tasks.data import TaskData
from axformer.utils.device import run_environment
from axformer.utils.io import (
    append_jsonl,
    atomic_output_dir,
    claim_work_dir,
    read_json,
    read_jsonl,
    run_key,
    write_json,
)

SCORERS = ("ablation", "gradient", "similarity", "quantization")
SIGNIFICANCE_FILE = "significance.json"
LOSSES_FILE = "ablation_losses.npz"


@dataclass
class AnalyzeConfig:
    scorers: tuple[str, ...] = SCORERS
    max_examples: int | None = 2000  # held-out examples scored (stratified sample); None: all
    sample_seed: int = 0
    batch_size: int = 64
    groups: int = 12  # FFN neuron groups per layer (AxFormer: 12)
    normalize_heads: bool = False  # per-layer L2 normalisation of gradient head scores
    quant_bits: tuple[int, ...] = (8, 4)
    int4_block_size: int = 32
    prefix_cache: bool = True
    # share of the held-out split kept for the certificate and never analysed (the pipeline sets the search's):
    # significance feeds decisions (mixed precision), so it must not see the examples that judge them
    confirm_fraction: float = 0.0
    # a labelled file in the task's format that replaces the held-out split for every decision and the
    # certificate (--decision-data: inputs like the ones the model will serve); None: the held-out split
    decision_data: str | None = None
    device: str = "auto"
    allow_pickle: bool = False
    progress: bool = True

    def validate(self) -> None:
        if not 0 <= self.confirm_fraction < 1:
            raise AxformerError(f"analyze confirm_fraction {self.confirm_fraction}; expected a value from 0 to below 1")
        unknown = [s for s in self.scorers if s not in SCORERS]
        if unknown:
            raise AxformerError(f"unknown scorer {unknown[0]!r}; expected some of {', '.join(SCORERS)}")
        if self.groups < 1:
            raise AxformerError(f"--groups {self.groups}; expected a positive number of FFN neuron groups")
        bad = [b for b in self.quant_bits if b not in (4, 8)]
        if bad:
            raise AxformerError(f"quantization bits {bad[0]}; expected 8 and/or 4")


def default_output(model: str | os.PathLike) -> Path:
    return Path(model) / "analysis" if is_local(model) else Path("analysis-" + str(model).replace("/", "-"))


def analyze(
    model: str | os.PathLike,
    data: TaskData | None = None,
    data_dir: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    config: AnalyzeConfig | None = None,
    overwrite: bool = False,
) -> dict:
    """Run the requested scorers and write the analysis directory; returns the significance dict."""
    config = config or AnalyzeConfig()
    config.validate()
    output = Path(output) if output is not None else default_output(model)
    ctx = load_context(
        model,
        data,
        data_dir,
        config.max_examples,
        config.sample_seed,
        config.device,
        config.allow_pickle,
        confirm_fraction=config.confirm_fraction,
        decision_data=config.decision_data,
    )
    spec = ctx.data.spec
    torch.manual_seed(0)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    engine = EvaluationEngine(
        ctx.model, ctx.encoded, spec, config.batch_size, ctx.device, prefix_cache=config.prefix_cache
    )
    timings["reference pass and cache"] = time.perf_counter() - t0
    ref = engine.reference
    sig: dict = {
        "model": str(model),
        "task": {
            "name": spec.name,
            "display_name": spec.display_name,
            "metrics": list(spec.metrics),
            "main_metric": spec.main_metric,
        },
        "split": ctx.describe_split(),
        "structure": engine.structure.to_dict(),
        "config": asdict(config),
        "reference": {"mean_loss": ref.mean_loss, "metrics": ref.metrics},
        "warnings": ctx.warnings,
        "environment": run_environment(ctx.device),
    }
    key = run_key(
        {
            "model": str(Path(model).resolve()) if is_local(model) else str(model),
            "split": sig["split"],
            "task": spec.name,
            "config": {k: v for k, v in asdict(config).items() if k not in ("progress", "device", "scorers")},
        }
    )
    with atomic_output_dir(output, overwrite=overwrite) as work:
        resumed = claim_work_dir(work, key)
        if "ablation" in config.scorers:
            t = time.perf_counter()
            log = work / "ablation.jsonl"
            done = {
                r["row"]["component"]: (AblationRow(**r["row"]), np.asarray(r["losses"], dtype=np.float32))
                for r in read_jsonl(log, repair=True)
            }
            comps = ablation_candidates(engine.structure, config.groups)
            rows = run_ablation(
                engine,
                comps,
                done,
                on_row=lambda row, losses: append_jsonl(log, {"row": row.to_dict(), "losses": losses.tolist()}),
                progress=config.progress,
            )
            sig["ablation"] = {
                "rows": [rows[c][0].to_dict() for c in comps],
                "seconds": time.perf_counter() - t,
                "resumed_rows": len(done),
                "passes_layers_run": engine.layer_runs,
            }
            np.savez_compressed(
                work / LOSSES_FILE,
                components=np.asarray(comps),
                losses=np.stack([rows[c][1] for c in comps]),
                reference=ref.losses,
            )
            timings["ablation"] = time.perf_counter() - t
        if "gradient" in config.scorers:
            t = time.perf_counter()
            sig["gradient"] = gradient_importance(
                engine, config.groups, config.normalize_heads, config.progress
            ).to_dict()
            timings["gradient"] = time.perf_counter() - t
        if "similarity" in config.scorers:
            t = time.perf_counter()
            sig["similarity"] = layer_similarity(engine).to_dict()
            timings["similarity"] = time.perf_counter() - t
        if "quantization" in config.scorers:
            t = time.perf_counter()
            log = work / "quantization.jsonl"
            done_q = {f"{r['name']}@int{r['bits']}": QuantRow(**r) for r in read_jsonl(log, repair=True)}
            qrows = run_quant_sensitivity(
                engine,
                config.quant_bits,
                config.int4_block_size,
                done_q,
                on_row=lambda row: append_jsonl(log, row.to_dict()),
                progress=config.progress,
            )
            sig["quantization"] = {
                "rows": [r.to_dict() for r in qrows.values()],
                "seconds": time.perf_counter() - t,
                "int4_block_size": config.int4_block_size,
            }
            timings["quantization"] = time.perf_counter() - t
        sig["timings"] = timings
        sig["resumed"] = resumed
        write_json(work / SIGNIFICANCE_FILE, sig)
        write_heatmaps(sig, work)
        (work / "summary.md").write_text(summary_markdown(sig))
        for f in ("ablation.jsonl", "quantization.jsonl", "run.json"):
            (work / f).unlink(missing_ok=True)
    engine.close()
    return sig


def load_significance(path: str | os.PathLike) -> dict:
    """A written analysis (directory or significance.json)."""
    path = Path(path)
    return read_json(path / SIGNIFICANCE_FILE if path.is_dir() else path)
