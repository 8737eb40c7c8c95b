"""Fine-tuning and evaluation on a tiny model: learning, saved artifacts, exact resume, recomputable metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import axformer.training.loop as ft
from axformer.evaluation import evaluate
from axformer.models.record import ModelRecord
from axformer.tasks.sources import load_custom
from axformer.training.finetune import FinetuneConfig, finetune
from tests.conftest import write_sentiment_files

CFG = {
    "epochs": 4,
    "learning_rate": 3e-3,
    "batch_size": 16,
    "eval_every": 3,
    "checkpoint_every": 2,
    "device": "cpu",
    "max_seq_length": 32,
}


@pytest.fixture
def sentiment(tmp_path):
    train, dev = write_sentiment_files(tmp_path / "data", n_train=120, n_dev=40)
    return load_custom(train, dev, ("text",), "label")


def test_finetune_learns_and_saves_everything(tiny_bert, sentiment, tmp_path):
    out = tmp_path / "out"
    res = finetune(tiny_bert, sentiment, out, FinetuneConfig(**CFG))
    assert not (tmp_path / "out.partial").exists()
    for f in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "axformer.json",
        "metrics.json",
        "train_log.jsonl",
        "predictions_dev.jsonl",
    ):
        assert (out / f).is_file(), f
    for f in ("checkpoint.pt", "best.safetensors", "run.json"):
        assert not (out / f).exists()
    rec = ModelRecord.load(out)
    assert rec.task["name"] == "custom" and rec.split is not None and len(rec.split.heldout_indices) == 18
    log = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["heldout"]["loss"] < np.log(2)  # below chance: it learned the 'good'/'bad' rule
    assert res.evaluation.splits["dev"].metrics["accuracy"] > 75
    # The saved model is the evaluation with the best held-out metric (all 18 held-out examples are used for selection).
    best_logged = max(e["heldout"]["accuracy"] for e in log)
    assert res.evaluation.splits["heldout"].metrics["accuracy"] == pytest.approx(best_logged)


def test_evaluate_matches_recomputation_from_predictions(tiny_bert, sentiment, tmp_path):
    out = tmp_path / "out"
    res = finetune(tiny_bert, sentiment, out, FinetuneConfig(**CFG))
    ev = evaluate(out, data=sentiment, output=tmp_path / "eval", device="cpu")
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    for split in ("heldout", "dev"):
        rows = [json.loads(l) for l in (tmp_path / "eval" / f"predictions_{split}.jsonl").read_text().splitlines()]
        y = np.array([r["label"] for r in rows])
        p = np.array([r["prediction"] for r in rows])
        from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

        assert saved["splits"][split]["metrics"]["accuracy"] == pytest.approx(100 * accuracy_score(y, p))
        assert saved["splits"][split]["metrics"]["f1"] == pytest.approx(100 * f1_score(y, p))
        assert saved["splits"][split]["metrics"]["mcc"] == pytest.approx(100 * matthews_corrcoef(y, p))
        # evaluate on the saved model gives what finetune reported for it
        assert ev.splits[split].metrics == pytest.approx(res.evaluation.splits[split].metrics)
        assert ev.splits[split].loss == pytest.approx(res.evaluation.splits[split].loss, abs=1e-5)


def test_interrupted_run_resumes_to_identical_result(tiny_bert, sentiment, tmp_path, monkeypatch):
    ref = finetune(tiny_bert, sentiment, tmp_path / "ref", FinetuneConfig(**CFG))
    calls = {"n": 0}
    real = ft.per_example_loss

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:  # killed in the middle of training
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ft, "per_example_loss", dying)
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny_bert, sentiment, tmp_path / "run", FinetuneConfig(**CFG))
    assert (tmp_path / "run.partial" / "checkpoint.pt").exists() and not (tmp_path / "run").exists()
    monkeypatch.setattr(ft, "per_example_loss", real)
    resumed = finetune(tiny_bert, sentiment, tmp_path / "run", FinetuneConfig(**CFG))
    a, b = (
        load_file(str(tmp_path / "ref" / "model.safetensors")),
        load_file(str(tmp_path / "run" / "model.safetensors")),
    )
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert resumed.evaluation.splits["dev"].metrics == ref.evaluation.splits["dev"].metrics


def test_regression_task(tiny_bert, tmp_path):
    train, dev = tmp_path / "t.csv", tmp_path / "d.csv"

    def rows(n):
        return "".join(f"{'good ' * (i % 4)}movie,{float(i % 4)}\n" for i in range(n))

    train.write_text("text,score\n" + rows(80))
    dev.write_text("text,score\n" + rows(20))
    data = load_custom(train, dev, ("text",), "score", problem="regression")
    res = finetune(tiny_bert, data, tmp_path / "out", FinetuneConfig(**{**CFG, "new_head": True}))
    assert set(res.evaluation.splits["dev"].metrics) == {"pearson", "spearman"}
    assert res.evaluation.splits["dev"].metrics["pearson"] > 50


@pytest.mark.real_data
@pytest.mark.slow
def test_minilm_sst2_subset_end_to_end(minilm_sst2):
    _, res, _ = minilm_sst2
    assert res.evaluation.splits["dev"].metrics["accuracy"] > 70


def test_training_precision_rules():
    """auto is bf16 only where the hardware multiplies it; fp16 only on CUDA; unknown names are refused."""
    from axformer.errors import AxformerError
    from axformer.utils.device import native_bf16, training_dtype

    cpu = torch.device("cpu")
    assert native_bf16(cpu, "flags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert native_bf16(cpu, "flags\t\t: avx2 amx_bf16 amx_tile\n")
    assert not native_bf16(cpu, "flags\t\t: avx2 avx512f avx512_vnni\n")
    assert training_dtype("auto", cpu) == (torch.bfloat16 if native_bf16(cpu) else None)
    assert training_dtype("fp32", cpu) is None
    assert training_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(AxformerError, match="fp16 needs a CUDA device"):
        training_dtype("fp16", cpu)
    with pytest.raises(AxformerError, match="--train-precision 'half'; expected one of auto, fp32, bf16, fp16"):
        FinetuneConfig(precision="half").validate()


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_mixed_precision_training_learns_and_keeps_fp32_weights(tiny_bert, sentiment, tmp_path, precision):
    """bf16 autocast trains as well on the toy rule, the saved weights stay fp32, and the history says which
    precision ran (fp32 and bf16 runs differ: they are not the same run)."""
    out = tmp_path / precision
    res = finetune(tiny_bert, sentiment, out, FinetuneConfig(**CFG, precision=precision))
    assert res.evaluation.splits["dev"].metrics["accuracy"] > 75
    assert {t.dtype for t in load_file(str(out / "model.safetensors")).values() if t.is_floating_point()} == {
        torch.float32
    }
    assert ModelRecord.load(out).history[-1]["precision"] == precision
