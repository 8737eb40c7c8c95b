"""Adapter registry: model_type -> adapter. Adding a family = one module + one line here."""

from __future__ import annotations

from transformers import PretrainedConfig, PreTrainedModel

from axformer.errors import AxformerError
from axformer.surgery.adapters.base import Adapter, AttentionParts, FFNParts
from axformer.surgery.adapters.bert import BertLikeAdapter
from axformer.surgery.adapters.deberta_v2 import DebertaV2Adapter
from axformer.surgery.adapters.distilbert import DistilBertAdapter
from axformer.surgery.adapters.modernbert import ModernBertAdapter
from axformer.surgery.adapters.mpnet import MPNetAdapter

ADAPTERS: tuple[type[Adapter], ...] = (
    BertLikeAdapter,
    DebertaV2Adapter,
    DistilBertAdapter,
    MPNetAdapter,
    ModernBertAdapter,
)

_BY_TYPE = {t: cls for cls in ADAPTERS for t in cls.model_types}


def supported_model_types() -> list[str]:
    return sorted(_BY_TYPE)


def get_adapter(model_or_config: PreTrainedModel | PretrainedConfig | str) -> Adapter:
    if isinstance(model_or_config, str):
        model_type = model_or_config
    else:
        config = getattr(model_or_config, "config", model_or_config)
        model_type = getattr(config, "axformer_base_model_type", None) or config.model_type
    try:
        return _BY_TYPE[model_type]()
    except KeyError:
        raise AxformerError(
            f"architecture {model_type!r} is not supported by axformer's surgery; supported: "
            f"{', '.join(supported_model_types())}"
        ) from None


__all__ = ["Adapter", "AttentionParts", "FFNParts", "get_adapter", "supported_model_types"]
