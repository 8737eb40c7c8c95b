"""GPTQ rounding of int4 matrices: on ONNX Runtime's grid, stored exactly by its quantizer, closer in output."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from axformer.export.artifact import ExportConfig, export_model
from axformer.export.gptq import Calibration
from axformer.export.quantize import apply_plan
from axformer.surgery.fake_quant import fake_quantize, gptq_round


def _correlated_inputs(n: int, width: int, seed: int = 0) -> torch.Tensor:
    """Samples (``seed``) of one correlated distribution (the mixing matrix is fixed), as layer inputs are."""
    mix = torch.randn(width, width, generator=torch.Generator().manual_seed(99)) * 0.3
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed)) @ mix + torch.linspace(-1, 2, width)


@pytest.mark.parametrize("block", [16, 32])
def test_gptq_lies_on_the_export_grid_and_moves_the_output_less(block):
    w = torch.randn(48, 96, generator=torch.Generator().manual_seed(1))
    x = _correlated_inputs(1500, 96)
    q = gptq_round(w, x.T @ x, 4, block)
    assert torch.equal(fake_quantize(q, 4, block), q)  # re-rounding by the export's rule changes nothing
    blocks = q.reshape(48, -1, block)
    levels = blocks / blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True)) * -8  # each block's peak on -8
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert levels.round().min() == -8 and levels.round().max() <= 7
    nearest = fake_quantize(w, 4, block)
    held_out = _correlated_inputs(500, 96, seed=2)  # inputs like, but not, the ones GPTQ was fitted on
    gptq_err = ((held_out @ (w - q).T) ** 2).mean()
    nearest_err = ((held_out @ (w - nearest).T) ** 2).mean()
    assert gptq_err < 0.7 * nearest_err, (gptq_err, nearest_err)


def _two_layer_graph(path, tied: bool = False):
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 32)).astype(np.float32)
    w2 = rng.standard_normal((32, 32 if tied else 8)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="m1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "W2"], ["y0"], name="m2"),
    ]
    inits = [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")]
    out = "y0"
    if tied:  # the same weight read by two MatMuls
        nodes.append(helper.make_node("MatMul", ["y0", "W2"], ["y"], name="m3"))
        out = "y"
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, 16])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, None, None])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def _run(path, feeds):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.stack([s.run(None, f)[0] for f in feeds])


def test_onnx_runtime_stores_exactly_the_levels_gptq_chose(tmp_path):
    source = _two_layer_graph(tmp_path / "fp32.onnx")
    rng = np.random.default_rng(3)
    scales = np.linspace(0.1, 3, 16).astype(np.float32)
    feeds = [{"x": (rng.standard_normal((1, 12, 16)) * scales).astype(np.float32)} for _ in range(64)]
    calibration = Calibration(feeds)
    plan = {"m1": "int4/16", "m2": "int4/16"}
    gptq = apply_plan(source, tmp_path / "gptq.onnx", plan, 16, calibration=calibration)
    nearest = apply_plan(source, tmp_path / "nearest.onnx", plan, 16)
    rounded = calibration.round_matrices(source, tmp_path / "rounded.onnx", {"m1": 16, "m2": 16})
    assert [n.op_type for n in onnx.load(str(gptq)).graph.node] == ["MatMulNBits", "Relu", "MatMulNBits"]
    # the int4 artifact computes exactly what the fp32 graph with GPTQ's rounded weights computes
    np.testing.assert_array_equal(_run(gptq, feeds), _run(rounded, feeds))
    assert gptq.stat().st_size == nearest.stat().st_size  # same format, same bytes
    ref = _run(source, feeds)
    assert ((_run(gptq, feeds) - ref) ** 2).mean() < ((_run(nearest, feeds) - ref) ** 2).mean()
    # Hessians and rounded matrices are cached: a second plan over the same graph rounds nothing again
    calls = []
    real = calibration.hessians
    calibration.hessians = lambda *a: calls.append(a[1]) or real(*a)
    calibration.round_matrices(source, tmp_path / "again.onnx", {"m1": 16, "m2": 16})
    assert calls == [[]]


def test_a_weight_shared_by_two_matmuls_is_left_to_the_quantizer(tmp_path):
    source = _two_layer_graph(tmp_path / "tied.onnx", tied=True)
    feeds = [{"x": np.random.default_rng(i).standard_normal((1, 5, 16)).astype(np.float32)} for i in range(8)]
    out = Calibration(feeds).round_matrices(source, tmp_path / "r.onnx", {"m1": 16, "m2": 16, "m3": 16})
    before = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(source)).graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
    np.testing.assert_array_equal(before["W2"], after["W2"])
    assert not np.array_equal(before["W1"], after["W1"])


def test_int4_export_rounds_by_gptq_unless_asked_for_nearest(tiny_task, tmp_path):
    model, data, _ = tiny_task
    reports = {
        rounding: export_model(
            model,
            tmp_path / rounding,
            ExportConfig(precision="int4", int4_rounding=rounding, int4_block_size=16, gptq_examples=24, device="cpu"),
            data,
        )
        for rounding in ("gptq", "nearest")
    }
    assert reports["gptq"]["int4_rounding"]["method"] == "gptq"
    assert 0 < reports["gptq"]["int4_rounding"]["examples"] <= 24
    assert reports["nearest"]["int4_rounding"] == {"method": "nearest"}
    assert reports["gptq"]["size_bytes"] == reports["nearest"]["size_bytes"]
    with pytest.raises(Exception, match="int4-rounding"):
        ExportConfig(int4_rounding="best").validate()
