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


def test_residual_layer_norms_stay_unfused_in_the_file_and_the_cpu_session(tiny_arch_dir, tmp_path):
    """SkipLayerNormalization's CPU kernel is slower than Add + LayerNormalization: neither the export's fusion nor
    a CPU session made by axformer may create it (ONNX Runtime's session would, by default)."""
    import onnx
    import onnxruntime as ort

    from axformer.runtime.backends import inference_session, session_options

    arch, path = tiny_arch_dir
    model = load_model(path).eval()
    cfg = model.config
    fused = fuse(export_onnx(model, tmp_path / "m.onnx"), tmp_path / "f.onnx", cfg.model_type, cfg.hidden_size,
                 cfg.num_attention_heads).path  # fmt: skip
    ops = [n.op_type for n in onnx.load(str(fused)).graph.node]
    assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops

    def session_ops(disabled: bool) -> list[str]:
        opts = session_options()
        opts.optimized_model_filepath = str(tmp_path / f"session-{disabled}.onnx")
        if disabled:
            inference_session(fused, opts, ["CPUExecutionProvider"])
        else:
            ort.InferenceSession(str(fused), opts, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]

    if arch in ("bert", "roberta", "electra"):  # the test can fail: a plain session does fuse these graphs
        assert "SkipLayerNormalization" in session_ops(disabled=False)
    assert "SkipLayerNormalization" not in session_ops(disabled=True)
