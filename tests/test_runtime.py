"""The runtime: the predictor serves model directories and artifacts alike, in every mode."""

from __future__ import annotations

import numpy as np

from axformer.export.artifact import ExportConfig, export_model


def test_predictor_gives_the_same_predictions_in_every_mode(tiny_task, tmp_path):
    from axformer.runtime import Predictor

    model, data, _ = tiny_task
    export_model(model, tmp_path / "onnx", ExportConfig(precision="fp32", device="cpu"), data)
    texts = [t[0] for t in next(iter(data.dev.values())).texts]
    ref = Predictor(model).predict(texts, batch_size=8)
    by_backend = {}
    for path in (model, tmp_path / "onnx"):
        single = Predictor(path).predict(texts, batch_size=8)
        with Predictor(path, instances=2) as p:  # multi-instance, PyTorch and ONNX Runtime alike
            multi = p.predict(texts, batch_size=8)
        # the same predictions within a backend, whatever the mode; logits to float rounding: a kernel splits its
        # sums by thread count (one thread per instance here, two alone), which on some CPUs moves the last bit
        np.testing.assert_allclose(multi, single, rtol=0, atol=1e-6)
        assert (multi.argmax(-1) == single.argmax(-1)).all()
        by_backend[str(path)] = single
    onnx_logits = by_backend[str(tmp_path / "onnx")]
    np.testing.assert_array_equal(by_backend[str(model)], ref)
    # across backends: the same predictions, logits to float tolerance (other kernels, other summation order)
    np.testing.assert_allclose(onnx_logits, ref, atol=1e-4)
    assert (onnx_logits.argmax(-1) == ref.argmax(-1)).all()
    # one long input is truncated the way training truncates, not rejected
    long = " ".join(["good"] * 5000)
    assert Predictor(tmp_path / "onnx").predict([long]).shape == (1, 2)
