"""Saving and reloading models whose structure axformer changed.

The structure goes into ``config.json`` under ``axformer_structure``. When a
stock config can express it (whole layers dropped, one FFN width everywhere,
all heads), the directory stays a plain transformers checkpoint that
``AutoModelForSequenceClassification.from_pretrained`` loads. Otherwise the
config's ``model_type`` becomes ``axformer-pruned`` (the real one is kept in
``axformer_base_model_type``), so that stock transformers refuses it with a
message naming that type instead of a cryptic shape mismatch, while
``axformer.load_model(dir)`` rebuilds it exactly, without ``trust_remote_code``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    PretrainedConfig,
)

from axformer.errors import AxformerError
from axformer.surgery.adapters import get_adapter
from axformer.surgery.prune import apply_structure
from axformer.surgery.recorded import BASE_TYPE_KEY, PRUNED_MODEL_TYPE, STRUCTURE_KEY, attention_settings, has_structure
from axformer.surgery.structure import ModelStructure


def load_config(path: str | Path) -> PretrainedConfig | None:
    """The config of an ``axformer-pruned`` directory (None for any other directory)."""
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        return None
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise AxformerError(f"{cfg_file} is not valid JSON ({exc.msg})") from None
    if raw.get("model_type") != PRUNED_MODEL_TYPE:
        return None
    base = raw.pop(BASE_TYPE_KEY, None)
    if base is None:
        raise AxformerError(f"{cfg_file} has model_type {PRUNED_MODEL_TYPE} but no {BASE_TYPE_KEY}")
    raw.pop("model_type")
    config = AutoConfig.for_model(base, **raw)
    setattr(config, BASE_TYPE_KEY, base)
    return config


def mark_if_not_stock(directory: str | Path, config: PretrainedConfig) -> bool:
    """After ``save_pretrained``: rewrite config.json's model_type when stock transformers cannot load it."""
    approximated = bool(attention_settings(config))  # stock transformers would silently run dense attention
    if not has_structure(config) or (
        not approximated and get_adapter(config).is_stock(ModelStructure.from_dict(getattr(config, STRUCTURE_KEY)))
    ):
        return False
    cfg_file = Path(directory) / "config.json"
    raw = json.loads(cfg_file.read_text())
    raw[BASE_TYPE_KEY] = getattr(config, BASE_TYPE_KEY, None) or raw["model_type"]
    raw["model_type"] = PRUNED_MODEL_TYPE
    cfg_file.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    return True


def _state_dict(path: Path, device) -> dict[str, torch.Tensor]:
    single = path / "model.safetensors"
    if single.is_file():
        files = [single]
    else:
        index = path / "model.safetensors.index.json"
        if not index.is_file():
            raise AxformerError(f"pruned model {path} has no model.safetensors")
        files = [path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(load_file(str(f), device=str(device)))
        except Exception as exc:  # safetensors raises its own error types on corrupt files
            raise AxformerError(
                f"cannot load the weights of {path} (corrupt checkpoint?): {type(exc).__name__}: {str(exc)[:200]}"
            ) from None
    return state


def load_pruned(model: str, config: PretrainedConfig, device, layout=None, bare: bool = False) -> torch.nn.Module:
    """Rebuild a pruned model: stock modules at the original sizes, reduced to the saved structure, then its weights.

    With a sentence-transformers ``layout``, or ``bare``: the transformer without a head (what ``AutoModel``
    builds), inside an embedder (the bare transformer is its ``.transformer``)."""
    target = ModelStructure.from_dict(getattr(config, STRUCTURE_KEY))
    adapter = get_adapter(config)
    build = config.__class__.from_dict(config.to_dict())
    adapter.set_config_dims(build, list(range(len(target.present_layers))), target.ffn_dim)
    setattr(build, STRUCTURE_KEY, None)
    if layout is None and not bare:
        span = any(a.endswith("ForQuestionAnswering") for a in config.architectures or [])  # a QA (span) head
        net = (AutoModelForQuestionAnswering if span else AutoModelForSequenceClassification).from_config(build)
    else:
        from axformer.embedding.model import SentenceEmbedder

        net = SentenceEmbedder(AutoModel.from_config(build), layout)
    weights_of = net if layout is None and not bare else net.transformer
    present = set(target.present_layers)
    full = ModelStructure.full(
        target.num_layers, target.num_heads, target.head_dim, target.ffn_dim, target.hidden, target.ffn_matrices
    )
    full.layers = [l if i in present else None for i, l in enumerate(full.layers)]
    adapter.prepare_rebuilt(net, target)
    apply_structure(net, target, adapter, current=full)
    state = _state_dict(Path(model), "cpu")
    missing, unexpected = weights_of.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("axformer_heads")]
    if missing or unexpected:
        raise AxformerError(
            f"weights of {model} do not match its saved structure (missing {missing[:3]}, unexpected "
            f"{list(unexpected)[:3]})"
        )
    config._attn_implementation = net.config._attn_implementation  # same kernels as a stock load (sdpa)
    net.config = config
    for mod in net.modules():  # every submodule that holds the config should see the saved one
        if hasattr(mod, "config") and isinstance(mod.config, PretrainedConfig):
            mod.config = config
    return net.to(device).eval()
