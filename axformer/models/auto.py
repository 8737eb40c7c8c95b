"""``import axformer`` makes transformers' Auto classes load pruned models.

A pruned model whose structure a stock config cannot express (per-layer head counts or FFN widths) is saved
with ``model_type: axformer-pruned`` (see :mod:`axformer.surgery.restore`). Registering that type with
``AutoConfig``, ``AutoModel`` and ``AutoModelForSequenceClassification`` lets the tools users already call
(``AutoModelForSequenceClassification.from_pretrained``, ``pipeline(...)``, ``SentenceTransformer(OUT)``, which
loads its transformer through ``AutoModel``) rebuild it with axformer's loader, without ``trust_remote_code``:
the code that runs is installed, not downloaded. What they get back is the stock family's model class (e.g.
``BertForSequenceClassification``) with smaller modules, so everything downstream works as usual.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PretrainedConfig

from axformer.surgery.recorded import PRUNED_MODEL_TYPE


class AxformerPrunedConfig(PretrainedConfig):
    """The config of an ``axformer-pruned`` directory as transformers reads it (the family's own fields plus the
    recorded structure); the loaders below turn it back into the family's config."""

    model_type = PRUNED_MODEL_TYPE


def _local(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_dir():  # a hub id: fetch the directory first (users with a network)
        from huggingface_hub import snapshot_download

        p = Path(snapshot_download(str(path)))
    return p


class _PrunedLoader:
    config_class = AxformerPrunedConfig
    bare = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, **kwargs):
        from axformer.surgery.restore import load_config, load_pruned

        path = _local(pretrained_model_name_or_path)
        family_config = load_config(path)
        net = load_pruned(str(path), family_config, kwargs.get("device_map") or "cpu", bare=cls.bare)
        return net.transformer if cls.bare else net

    @classmethod
    def from_config(cls, config, **kwargs):
        raise NotImplementedError("an axformer-pruned model is built from its directory: use from_pretrained")


class AxformerPrunedModel(_PrunedLoader):
    """``AutoModel``: the pruned transformer without a head (what sentence-transformers loads)."""

    bare = True


class AxformerPrunedForSequenceClassification(_PrunedLoader):
    """``AutoModelForSequenceClassification``: the pruned classifier or regressor."""


def register() -> None:
    """Idempotent: registering twice is a no-op."""
    AutoConfig.register(PRUNED_MODEL_TYPE, AxformerPrunedConfig, exist_ok=True)
    AutoModel.register(AxformerPrunedConfig, AxformerPrunedModel, exist_ok=True)
    AutoModelForSequenceClassification.register(
        AxformerPrunedConfig, AxformerPrunedForSequenceClassification, exist_ok=True
    )


register()
