"""The examples these experiments judge on: the deciding part of a baseline's held-out examples (or of a decision
file), as the pipeline's own decisions see them; the confirmation part and the dev set stay unread."""

from __future__ import annotations

from axformer.evaluation.context import TaskContext, load_context


def deciding_context(task: str, decision_data: str | None = None, confirm_fraction: float = 0.0) -> TaskContext:
    """``runs/baselines/TASK`` with up to 2,000 deciding examples, on the CPU."""
    return load_context(
        f"runs/baselines/{task}",
        data_dir="../shared/data/glue",
        max_examples=2000,
        device="cpu",
        confirm_fraction=confirm_fraction,
        decision_data=decision_data,
    )
