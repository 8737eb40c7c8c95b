"""What axformer records in a model's config: its per-layer structure and its approximate-attention settings.

These keys are read by surgery (pruning, reloading) and by the attention package alike, so they live
below both: nothing here imports the rest of axformer.
"""

from __future__ import annotations

from transformers import PretrainedConfig

STRUCTURE_KEY = "axformer_structure"
ATTENTION_KEY = "axformer_attention"
PRUNED_MODEL_TYPE = "axformer-pruned"
BASE_TYPE_KEY = "axformer_base_model_type"


def has_structure(config: PretrainedConfig) -> bool:
    return getattr(config, STRUCTURE_KEY, None) is not None


def attention_settings(config: PretrainedConfig) -> dict[int, dict]:
    """Per original layer index, the approximate attention the config records (empty: dense everywhere)."""
    return {int(k): v for k, v in (getattr(config, ATTENTION_KEY, None) or {}).items()}
