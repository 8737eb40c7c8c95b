"""DeBERTa-v2 / v3: BERT-shaped layers with disentangled (relative-position) attention.

Head pruning also slices the separate position projections when the model has
them (``share_att_key`` false); with shared keys (v3) the Q/K slices cover both.
Models with a convolution after the first layer (``conv_kernel_size`` > 0, some
v2 checkpoints) apply it to whichever layer comes first, so their layer 0 cannot
be dropped as a whole.
"""

from __future__ import annotations

from axformer.errors import AxformerError
from axformer.surgery.adapters.base import AttentionParts
from axformer.surgery.adapters.bert import BertLikeAdapter, RemovedSelfAttentionBlock


class DebertaV2Adapter(BertLikeAdapter):
    model_types = ("deberta-v2",)
    family = "deberta-v2"

    def encoder(self, model):
        return model.deberta.encoder

    def attention(self, layer):
        att = layer.attention
        if isinstance(att, RemovedSelfAttentionBlock):
            return None
        return AttentionParts(att.self.query_proj, att.self.key_proj, att.self.value_proj, att.output.dense)

    def extra_head_projections(self, layer):
        sa = layer.attention.self
        return [getattr(sa, n) for n in ("pos_key_proj", "pos_query_proj") if hasattr(sa, n)]

    def attention_kernel(self, layer):
        return None  # disentangled attention is computed by the model itself

    def validate(self, model, target) -> None:
        if getattr(self.encoder(model), "conv", None) is not None and target.layers[0] is None:
            raise AxformerError(
                "this DeBERTa-v2 model applies a convolution after its first layer; layer L0 cannot "
                "be removed as a whole (remove its blocks instead)"
            )
