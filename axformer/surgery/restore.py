"""Reloading models whose structure was changed by axformer (filled in by the surgery package)."""

from __future__ import annotations

from transformers import PretrainedConfig

STRUCTURE_KEY = "axformer_structure"


def has_structure(config: PretrainedConfig) -> bool:
    return getattr(config, STRUCTURE_KEY, None) is not None


def load_pruned(model: str, config: PretrainedConfig, device):
    raise NotImplementedError
