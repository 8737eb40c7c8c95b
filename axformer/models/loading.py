"""Loading and saving models for a task, with the checks users of this field wish they had.

A head whose size or label names do not fit the task is an error, not a silent
re-initialisation; a new head is created only for a base checkpoint that has
none, or when the user asks for one. Weights load from safetensors; pickle
checkpoints (``pytorch_model.bin``) are refused unless explicitly allowed.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.utils import logging as hf_logging

from axformer.attention.hard import install_from_config
from axformer.embedding.layout import is_sentence_model, read_layout
from axformer.embedding.model import SentenceEmbedder
from axformer.errors import AxformerError
from axformer.models.span_head import QA_SUFFIX, install_span_logits
from axformer.surgery import restore as surgery_restore
from axformer.surgery.restore import mark_if_not_stock
from axformer.tasks.spec import TaskSpec

log = logging.getLogger("axformer")

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")


def _check_local_dir(path: Path, allow_pickle: bool) -> None:
    if not (path / "config.json").is_file():
        raise AxformerError(f"model directory {path} has no config.json; expected a Hugging Face model directory")
    if any((path / f).is_file() for f in SAFE_WEIGHTS):
        return
    if any((path / f).is_file() for f in PICKLE_WEIGHTS):
        if allow_pickle:
            return
        raise AxformerError(
            f"model directory {path} has only pickle weights (pytorch_model.bin), which can run "
            "arbitrary code when loaded; "
            "convert them to safetensors or pass --allow-pickle if you trust the source"
        )
    raise AxformerError(f"model directory {path} has no weights; expected model.safetensors")


def is_local(model: str | os.PathLike) -> bool:
    p = Path(model)
    return p.exists() or p.is_absolute() or str(model).startswith((".", "~")) or str(model).count("/") > 1


def _load_config(model: str, **kwargs: Any) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(model, **kwargs)
    except OSError as exc:
        raise AxformerError(
            f"cannot load the config of {model!r} ({str(exc).splitlines()[0]}); expected a local "
            "model directory or a reachable hub id"
        ) from None
    except ValueError as exc:
        raise AxformerError(f"config of {model!r} is not usable: {str(exc).splitlines()[0]}") from None


def has_task_head(config: PretrainedConfig) -> bool:
    return head_kind(config) is not None


def head_kind(config: PretrainedConfig) -> str | None:
    """The task head a checkpoint declares: "classification" (also regression), "qa" (a span head), or None."""
    for a in config.architectures or []:
        if a.endswith("ForSequenceClassification"):
            return "classification"
        if a.endswith(QA_SUFFIX):
            return "qa"
    return None


def _label_names(config: PretrainedConfig) -> list[str] | None:
    names = [config.id2label[i] for i in sorted(config.id2label)] if config.id2label else []
    if not names or all(_DEFAULT_LABEL.match(str(n)) for n in names):
        return None
    return [str(n) for n in names]


def configure_for_task(config: PretrainedConfig, spec: TaskSpec) -> None:
    config.num_labels = spec.num_labels
    if spec.is_qa:  # a span head: a start and an end logit per token, no labels
        config.problem_type = None
        config.id2label = {0: "start", 1: "end"}
    elif spec.is_regression:
        config.problem_type = "regression"
        config.id2label = {0: "score"}
    else:
        config.problem_type = "single_label_classification"
        config.id2label = dict(enumerate(spec.label_names))
    config.label2id = {v: k for k, v in config.id2label.items()}


def load_model(
    model: str | os.PathLike,
    task: TaskSpec | None = None,
    new_head: bool = False,
    allow_pickle: bool = False,
    device: torch.device | str = "cpu",
) -> PreTrainedModel:
    """A sequence-classification model for ``task`` from a directory (or hub id when online).

    Pruned models saved by axformer come back with their per-layer structure.
    """
    model = str(model)
    local = is_local(model)
    if local:
        path = Path(model).expanduser()
        if not path.is_dir():
            raise AxformerError(f"model directory {path} does not exist")
        _check_local_dir(path, allow_pickle)
        model = str(path)
    if task.is_embedding if task is not None else is_embedding_model(model):
        return load_embedder(model, allow_pickle=allow_pickle, device=device)
    config = (surgery_restore.load_config(model) if local else None) or _load_config(model)
    if surgery_restore.has_structure(config):
        if task is not None:
            check_head_fits(config, task, model)
        net = surgery_restore.load_pruned(model, config, device)
        _install_approximations(net)
        return net
    had_head = has_task_head(config)
    if task is not None:
        if had_head and not new_head:
            check_head_fits(config, task, model)
        configure_for_task(config, task)
    span = task.is_qa if task is not None else head_kind(config) == "qa"
    auto = AutoModelForQuestionAnswering if span else AutoModelForSequenceClassification
    try:
        net, info = auto.from_pretrained(
            model,
            config=config,
            use_safetensors=None if allow_pickle else True,
            ignore_mismatched_sizes=new_head,
            output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AxformerError(f"cannot load the weights of {model}: {first}") from None
    except Exception as exc:  # safetensors raises its own error types on corrupt files
        raise AxformerError(
            f"cannot load the weights of {model} (corrupt checkpoint?): {type(exc).__name__}: {str(exc)[:200]}"
        ) from None
    missing = set(info.get("missing_keys", ()))
    encoder_missing = [k for k in missing if not _is_head_key(k)]
    if encoder_missing:
        raise AxformerError(
            f"checkpoint {model} lacks {len(encoder_missing)} encoder weights (e.g. "
            f"{sorted(encoder_missing)[0]}); it does not match its config.json"
        )
    if missing and had_head and not new_head:
        raise AxformerError(
            f"checkpoint {model} declares a classification head but its weights lack it "
            f"({sorted(missing)[0]}); pass --new-head to train a new one"
        )
    if missing:
        log.info("no classification head in %s: a new %d-output head was initialised", model, config.num_labels)
    _install_approximations(net)
    return net.to(device)


def is_embedding_model(model: str) -> bool:
    """With no task to say otherwise: a sentence-transformers directory without a task head is an embedding model
    (a classifier axformer fine-tuned from one has a head and no modules.json)."""
    if not (is_local(model) and is_sentence_model(model)):
        return False
    try:
        return not has_task_head(surgery_restore.load_config(model) or _load_config(model))
    except AxformerError:
        return False


def load_embedder(model: str, allow_pickle: bool = False, device: torch.device | str = "cpu") -> SentenceEmbedder:
    """A sentence-transformers model as axformer runs it (pooling and normalisation from its layout);
    pruned ones come back with their per-layer structure."""
    if not is_local(model):  # a hub id: users with a network get the whole sentence-transformers layout
        from huggingface_hub import snapshot_download

        try:
            model = snapshot_download(model)
        except Exception as exc:
            raise AxformerError(f"cannot download {model!r} from the hub: {str(exc).splitlines()[0]}") from None
    layout = read_layout(model)
    config = surgery_restore.load_config(model) or _load_config(model)
    if surgery_restore.has_structure(config):
        net = surgery_restore.load_pruned(model, config, device, layout=layout)
    else:
        try:
            transformer, info = AutoModel.from_pretrained(
                model, config=config, use_safetensors=None if allow_pickle else True, output_loading_info=True
            )
        except Exception as exc:  # safetensors raises its own error types on corrupt files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AxformerError(f"cannot load the weights of {model} (corrupt checkpoint?): {first[:200]}") from None
        missing = [k for k in info.get("missing_keys", ()) if not _is_head_key(k)]
        if missing:
            raise AxformerError(
                f"checkpoint {model} lacks {len(missing)} encoder weights (e.g. {sorted(missing)[0]}); it does not "
                "match its config.json"
            )
        net = SentenceEmbedder(transformer, layout)
    _install_approximations(net)
    return net.to(device).eval()


def _install_approximations(net: PreTrainedModel) -> None:
    install_from_config(net)
    install_span_logits(net)


_HEAD_PREFIXES = ("classifier", "pre_classifier", "score", "pooler", "sequence_summary", "qa_outputs")


def _is_head_key(key: str) -> bool:
    parts = key.split(".")
    return any(p in _HEAD_PREFIXES for p in parts[:2])


def check_head_fits(config: PretrainedConfig, spec: TaskSpec, where: str) -> None:
    """Refuse a checkpoint whose head cannot serve ``spec`` (kind, size or label names)."""
    kind = head_kind(config)
    wanted = "qa" if spec.is_qa else "classification"
    if kind is not None and kind != wanted:
        names = {"qa": "a question answering (span) head", "classification": "a classification head"}
        raise AxformerError(
            f"model {where} has {names[kind]} but task {spec.display_name} needs {names[wanted]}; "
            "pass --new-head to replace the head (fine-tuning only)"
        )
    if spec.is_qa:
        return
    if config.num_labels != spec.num_labels:
        raise AxformerError(
            f"model {where} has a {config.num_labels}-output head but task {spec.display_name} needs "
            f"{spec.num_labels}; "
            "pass --new-head to replace the head (fine-tuning only)"
        )
    names = _label_names(config)
    if names is not None and not spec.is_regression and names != list(spec.label_names):
        raise AxformerError(
            f"model {where} predicts labels {names} but task {spec.display_name} has labels {list(spec.label_names)}"
        )


def load_tokenizer(model: str | os.PathLike):
    try:
        return AutoTokenizer.from_pretrained(str(model))
    except (OSError, ValueError, TypeError) as exc:
        raise AxformerError(
            f"cannot load a tokenizer from {model} "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); expected tokenizer "
            "files beside the weights"
        ) from None


def save_model(model: PreTrainedModel, tokenizer, directory: str | os.PathLike) -> None:
    """Weights as safetensors, config and tokenizer: a directory any later stage can load.

    A pruned model's per-layer structure is saved in its config and comes back with :func:`load_model`.
    """
    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True)
    mark_if_not_stock(directory, model.config)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def read_config_json(directory: str | os.PathLike) -> dict:
    try:
        return json.loads((Path(directory) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AxformerError(f"cannot read {directory}/config.json: {exc}") from None
