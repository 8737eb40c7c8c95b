"""The plan `axformer optimize MODEL --preset fastest-within-1` would make, printed without training anything.

Usage:  python benchmarks/experiments/ladder_plan.py [--model runs/baselines/sst2]
            [--decision-data runs/decision/sst2-sentences-grouped.tsv] [--data-dir ../shared/data/glue]

Resolves the preset as the pipeline does (``--strategy auto``: the recipe's sizes and the smaller student it
tries first), gives the recipe what the pipeline gives it (``recipe_budget``: the whole budget, as if the
analysis took no time, less the export and benchmark it prices) and prints ``plan_ladder``'s table: the teacher
and each student timed on this machine, which students are tried and which the budget drops, and why (session 33:
SST-2's half-depth student does not fit beside its own five-layer one in 55 minutes). No dev data is read.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import environment_line  # noqa: E402

from axformer.distill.budget import plan_ladder  # noqa: E402
from axformer.models.record import task_for  # noqa: E402
from axformer.pipeline.config import PipelineConfig  # noqa: E402
from axformer.pipeline.run import _resolve_strategy, recipe_budget  # noqa: E402
from axformer.utils.device import resolve_device  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/baselines/sst2")
    ap.add_argument("--decision-data", default=None)
    ap.add_argument("--data-dir", default=os.environ.get("AXFORMER_DATA_DIR", "../shared/data/glue"))
    args = ap.parse_args()
    search = {"decision_data": args.decision_data} if args.decision_data else {}
    cfg = PipelineConfig.build(
        preset="fastest-within-1", overrides={"model": args.model, "data_dir": args.data_dir, "search": search}
    )
    data = task_for(args.model, None, cfg.data_dir)
    _resolve_strategy(cfg, data, finetune_needed=False)
    recipe = cfg.search.recipe()
    recipe.confirm_fraction = cfg.search.certificate.fraction
    recipe.decision_data = cfg.search.decision_data
    with tempfile.TemporaryDirectory() as tmp:  # no stage ran before the search: the whole budget is left
        left, downstream = recipe_budget(cfg, data, Path(tmp) / "3-search")
    plan = plan_ladder(args.model, data, recipe, 60 * left, resolve_device(recipe.distill.device), downstream)
    print(environment_line())
    print(f"{args.model}: students tried first {[r.describe() for r in recipe.trials]}")
    print(plan.table())


if __name__ == "__main__":
    main()
