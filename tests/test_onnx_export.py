"""ONNX export (plain and fused by ONNX Runtime's optimizer) of pruned models with different structures in every layer
matches PyTorch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from axformer.export.fusion import fuse
from axformer.export.onnx_export import export_onnx, model_input_names, onnx_logits, onnx_session
from axformer.models.loading import load_model
from axformer.surgery.prune import prune

HETEROGENEOUS = [
    "L0.attn.head1",
    "L0.attn.head2",
    "L0.ffn.group0of12",
    "L0.ffn.group5of12",
    "L1.attn",
    "L1.ffn.neuron3",
    "L2.attn.head0",
    "L2.ffn",
]


@pytest.mark.parametrize("pruned", [False, True], ids=["unpruned", "pruned"])
@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_onnx_matches_pytorch(tiny_arch_dir, tmp_path, pruned, fused):
    arch, path = tiny_arch_dir
    model = load_model(path).eval()
    if pruned:
        prune(model, HETEROGENEOUS)
    exported = export_onnx(model, tmp_path / "model.onnx")
    assert not model.training  # exporting must not switch dropout on in the caller's model
    if fused:
        result = fuse(
            exported,
            tmp_path / "fused.onnx",
            model.config.model_type,
            model.config.hidden_size,
            model.config.num_attention_heads,
        )
        if arch in (
            "bert",
            "roberta",
            "electra",
        ):  # ORT's BERT patterns: every layer with heads becomes one Attention op
            assert result.fused.get("Attention", 0) == (2 if pruned else 3), result.fused
        exported = result.path
    session = onnx_session(exported)
    names = model_input_names(model)
    for batch_size, seq in ((1, 5), (3, 29)):  # dynamic batch and sequence axes
        ids = torch.randint(5, 150, (batch_size, seq))
        mask = torch.ones_like(ids)
        mask[-1, seq // 2 :] = 0
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
        with torch.no_grad():
            ref = model(**{k: v for k, v in feed.items() if k in names}).logits.numpy()
        np.testing.assert_allclose(onnx_logits(session, feed), ref, rtol=0, atol=1e-4)
