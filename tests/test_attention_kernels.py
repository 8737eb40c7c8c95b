"""Approximate attention kernels: exactness where they must be exact, reference = gather, padding, models that save,
reload and export.
"""

from __future__ import annotations

import pytest
import torch

from axformer.attention import kernels
from axformer.attention.hard import attention_settings, set_attention
from axformer.models.loading import load_model
from tests.conftest import make_tiny_model_dir

MIN = torch.finfo(torch.float32).min


def _inputs(seed=0, b=2, h=3, n=12, d=8):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g) for _ in range(3))
    mask = torch.zeros(b, 1, 1, n)
    mask[1, ..., 7:] = MIN  # the second example has 7 real tokens
    return q, k, v, mask, d**-0.5


def _dense(q, k, v, mask, scaling):
    return torch.softmax(kernels.scores(q, k, mask, scaling), -1) @ v


@pytest.mark.parametrize("k", [3, 7, 12, 40])
@pytest.mark.parametrize("renormalize", [False, True])
def test_topk_gather_equals_reference(k, renormalize):
    q, key, v, mask, sc = _inputs()
    ref, _ = kernels.topk_reference(q, key, v, mask, sc, k, renormalize)
    torch.testing.assert_close(kernels.topk_gather(q, key, v, mask, sc, k, renormalize), ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("k", [3, 7, 12, 40])
def test_sign_gather_equals_reference(k):
    q, key, v, mask, sc = _inputs(1)
    ref, _ = kernels.sign_match_reference(q, key, v, mask, sc, k)
    torch.testing.assert_close(kernels.sign_match_gather(q, key, v, mask, sc, k), ref, atol=1e-6, rtol=1e-5)


def test_k_at_least_length_is_dense_attention():
    q, key, v, mask, sc = _inputs(2)
    dense = _dense(q, key, v, mask, sc)
    for out in (
        kernels.topk_reference(q, key, v, mask, sc, 12)[0],
        kernels.topk_gather(q, key, v, mask, sc, 12),
        kernels.topk_gather(q, key, v, mask, sc, 12, True),
        kernels.sign_match_reference(q, key, v, mask, sc, 30)[0],
        kernels.sign_match_gather(q, key, v, mask, sc, 12),
    ):
        torch.testing.assert_close(out, dense, atol=1e-6, rtol=1e-5)


def test_padding_keys_are_never_attended():
    """With K at least the number of real tokens, the padded example equals dense attention over its real tokens
    only.
    """
    q, key, v, mask, sc = _inputs(3)
    real = _dense(q[1:, :, :, :], key[1:, :, :7], v[1:, :, :7], None, sc)
    for out in (kernels.topk_gather(q, key, v, mask, sc, 7, True), kernels.sign_match_gather(q, key, v, mask, sc, 9)):
        torch.testing.assert_close(out[1:], real, atol=1e-6, rtol=1e-5)


def test_paper_exact_topk_keeps_unrenormalised_probabilities():
    q, key, v, mask, sc = _inputs(4)
    _, probs = kernels.topk_reference(q, key, v, mask, sc, 2)
    full = torch.softmax(kernels.scores(q, key, mask, sc), -1)
    assert ((probs > 0).sum(-1) == 2).all()
    assert (probs.sum(-1) < 1).all()  # not renormalised
    kept = probs > 0
    torch.testing.assert_close(probs[kept], full[kept])


def test_sign_selection_is_by_sign_agreement():
    q = torch.tensor([[[[1.0, 1.0, -1.0, 1.0]]]])
    key = torch.tensor([[[[-1.0, -1.0, 1.0, -1.0], [5.0, 0.1, -0.2, 3.0], [1.0, -1.0, -1.0, 1.0]]]])
    agree = kernels.sign_agreement(q, key, None)
    assert agree.topk(1).indices.item() == 1  # all four signs agree
    assert agree[0, 0, 0, 0] < agree[0, 0, 0, 2] < agree[0, 0, 0, 1]


@pytest.mark.parametrize("mode", ["topk", "sign"])
def test_model_with_approximate_layers_reloads_and_exports(tmp_path, mode):
    from axformer.export.onnx_export import export_onnx, onnx_logits, onnx_session
    from axformer.models.loading import load_tokenizer, save_model

    path = make_tiny_model_dir(tmp_path / "m", "bert")
    model = load_model(path).eval()
    ids = torch.randint(5, 150, (3, 20))
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        dense = model(**batch, output_hidden_states=True).hidden_states[1]
    settings = {
        0: {"mode": mode, "k": 4, "renormalize": True, "kernel": "gather"},
        2: {"mode": mode, "k": 6, "renormalize": False, "kernel": "gather"},
    }
    set_attention(model, settings)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    approx = out.logits
    assert not torch.allclose(out.hidden_states[1], dense, atol=1e-3)  # the approximation changes layer 0's computation
    set_attention(model, {layer: {**s, "kernel": "reference"} for layer, s in settings.items()})
    with torch.no_grad():
        torch.testing.assert_close(
            model(**batch).logits, approx, atol=1e-5, rtol=1e-4
        )  # gather = reference, in the model
    set_attention(model, settings)
    save_model(model, load_tokenizer(path), tmp_path / "saved")
    reloaded = load_model(tmp_path / "saved").eval()
    assert attention_settings(reloaded.config) == settings
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, approx, atol=0, rtol=0)
    onnx = export_onnx(reloaded, tmp_path / "model.onnx")
    import onnx as onnx_lib

    ops = {n.op_type for n in onnx_lib.load(str(onnx)).graph.node}
    assert "TopK" in ops and "GatherElements" in ops
    out = onnx_logits(onnx_session(onnx), batch)
    assert abs(out - approx.numpy()).max() < 1e-4
