"""An embedding model as axformer runs it: the transformer, then the pooling and normalisation its
sentence-transformers layout declares.

Every stage of axformer reads a model's ``.logits``. An embedder's logits are its sentence embeddings, or, for a
batch of text pairs (``group_size`` 2, which :func:`axformer.data.batching.collate` adds to batches of pairs
embedded text by text), the cosine of each pair: the score the STS metrics and the training loss
(sentence-transformers' ``CosineSimilarityLoss``: squared error of the cosine against the gold score scaled to
[0, 1]) compare. The batch says what it holds, so no mode can be left switched on: single texts (timing, ONNX
export, the runtime) always give embeddings. The
transformer is a submodule under its own ``base_model_prefix`` (``bert``, ``mpnet``, ...), where the surgery
adapters look for it, so analysis, search, pruning, distillation and ONNX export need nothing else.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from axformer.embedding.layout import SentenceLayout, write_layout


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """sentence-transformers' pooling modes over the non-padding tokens (right padding)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(1)
    if mode == "lasttoken":
        last = mask.long().sum(1).clamp(min=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if mode == "weightedmean":
        m = m * torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=hidden.dtype).view(1, -1, 1)
    summed = (hidden * m).sum(1)
    count = m.sum(1).clamp(min=1e-9)
    if mode == "mean_sqrt_len_tokens":
        return summed / count.sqrt()
    return summed / count  # mean, weightedmean


def score_groups(embeddings: torch.Tensor, group_size: torch.Tensor | int | None) -> torch.Tensor:
    """Embeddings of single texts as they are; of pairs (consecutive rows, ``group_size`` 2): their cosines."""
    if group_size is None or int(group_size) == 1:
        return embeddings
    rows = embeddings.view(-1, int(group_size), embeddings.shape[-1])
    return F.cosine_similarity(rows[:, 0], rows[:, 1], dim=-1).unsqueeze(-1)


class SentenceEmbedder(nn.Module):
    """Transformer + pooling + normalisation; ``logits`` are embeddings, or pair cosines for a batch of pairs."""

    def __init__(self, transformer: PreTrainedModel, layout: SentenceLayout) -> None:
        super().__init__()
        self.base_model_prefix = transformer.base_model_prefix
        self.add_module(self.base_model_prefix, transformer)
        self.layout = layout
        accepted = inspect.signature(transformer.forward).parameters
        self.input_names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted]

    @property
    def transformer(self) -> PreTrainedModel:
        return getattr(self, self.base_model_prefix)

    @property
    def config(self) -> PretrainedConfig:
        return self.transformer.config

    @config.setter
    def config(self, value: PretrainedConfig) -> None:
        self.transformer.config = value

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def get_input_embeddings(self) -> nn.Module:
        return self.transformer.get_input_embeddings()

    def set_attn_implementation(self, impl: str) -> None:
        self.transformer.set_attn_implementation(impl)

    def embed(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and "token_type_ids" in self.input_names:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.transformer(**inputs).last_hidden_state
        out = pool(hidden, attention_mask, self.layout.pooling)
        return F.normalize(out, p=2, dim=-1) if self.layout.normalize else out

    def forward(
        self, input_ids, attention_mask=None, token_type_ids=None, group_size=None, labels=None
    ) -> SequenceClassifierOutput:
        emb = self.embed(input_ids, attention_mask, token_type_ids)
        return SequenceClassifierOutput(logits=score_groups(emb, group_size))

    def save_pretrained(self, directory: str | os.PathLike, **kwargs) -> None:
        """The transformer as transformers saves it (what ``AutoModel`` loads), plus the module files."""
        self.transformer.save_pretrained(directory, **kwargs)
        write_layout(self.layout, Path(directory))
