"""Device-agnostic check: the training, distillation, search and attention code on a CUDA GPU (run where one is lent).

Usage:  python benchmarks/device_check.py [--device cuda]

Tiny random BERT on the toy sentiment task (tests/conftest.py): fine-tune, distil a 1-layer student with
every loss term, a speed search with recovery by distillation, and the approximate-attention kernels
(reference vs gather, float32 and bfloat16), all on the given device. Prints one line per check and
exits non-zero on the first failure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import make_tiny_model_dir, write_sentiment_files  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    dev = args.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device here")
    from axformer.attention import kernels
    from axformer.distill import DistillConfig, distill
    from axformer.search.config import Recovery, Tolerance
    from axformer.search.optimize import OptimizeConfig, optimize
    from axformer.tasks.sources import load_custom
    from axformer.training.finetune import FinetuneConfig, finetune

    print(
        "torch",
        torch.__version__,
        "device",
        torch.cuda.get_device_name(0) if dev.startswith("cuda") else dev,
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = make_tiny_model_dir(root / "base", "bert", labels=["neg", "pos"])
        train, dev_file = write_sentiment_files(root / "data", n_train=400, n_dev=60)
        data = load_custom(train, dev_file, ("text",), "label", "classification", None, "toy")
        t = time.perf_counter()
        tuned = finetune(
            base,
            data,
            root / "tuned",
            FinetuneConfig(
                epochs=4, learning_rate=3e-3, batch_size=16, max_seq_length=32, device=dev, eval_max_examples=None
            ),
        )
        print(
            f"finetune on {tuned.log[-1:] and dev}: held-out "
            f"{tuned.evaluation.splits['heldout'].main:.1f}, {time.perf_counter() - t:.1f} s",
            flush=True,
        )
        assert tuned.evaluation.splits["heldout"].main > 70
        t = time.perf_counter()
        st = distill(
            tuned.output,
            root / "student",
            student_layers="1",
            data=data,
            config=DistillConfig(
                epochs=3,
                learning_rate=3e-3,
                batch_size=16,
                max_seq_length=32,
                device=dev,
                eval_max_examples=None,
                hard_weight=0.5,
                hidden_weight=1.0,
                attention_weight=1.0,
            ),
        )
        terms = [e["train_terms"] for e in st.log]
        print(
            f"distill (soft+hard+hidden+attention) on {dev}: held-out "
            f"{st.evaluation.splits['heldout'].main:.1f}, hidden MSE {terms[0]['hidden']:.4f} -> "
            f"{terms[-1]['hidden']:.4f}, "
            f"{time.perf_counter() - t:.1f} s",
            flush=True,
        )
        assert terms[-1]["hidden"] < terms[0]["hidden"]
        t = time.perf_counter()
        rep = optimize(
            tuned.output,
            data,
            None,
            root / "speed",
            OptimizeConfig(
                goal="speed",
                groups=4,
                device=dev,
                progress=False,
                latency_examples=10,
                tolerance=Tolerance(max_drop=3.0, max_loss_increase=40.0),
                recovery=Recovery(mode="distill", epochs=1, learning_rate=3e-3),
            ),
        )
        print(
            f"speed search + distillation recovery on {dev}: {rep['search']['trials']} trials, "
            f"{rep['results']['original']['parameters']} -> "
            f"{rep['results']['optimized']['parameters']} parameters, {rep['speedup_batch1']:.2f}x "
            f"batch 1, notes {rep['search'].get('attention_notes')}, {time.perf_counter() - t:.1f} s",
            flush=True,
        )
    for dtype in (torch.float32, torch.bfloat16):
        g = torch.Generator(device=dev).manual_seed(0)
        q, k, v = (torch.randn(2, 12, 512, 32, device=dev, generator=g).to(dtype) for _ in range(3))
        mask = torch.zeros(2, 1, 1, 512, device=dev, dtype=dtype)
        mask[1, ..., 300:] = torch.finfo(dtype).min
        tol = 1e-5 if dtype == torch.float32 else 3e-2
        for name, ref, fast in (
            (
                "top-K",
                lambda: kernels.topk_reference(q, k, v, mask, 32**-0.5, 30, True)[0],
                lambda: kernels.topk_gather(q, k, v, mask, 32**-0.5, 30, True),
            ),
            (
                "sign",
                lambda: kernels.sign_match_reference(q, k, v, mask, 32**-0.5, 30)[0],
                lambda: kernels.sign_match_gather(q, k, v, mask, 32**-0.5, 30),
            ),
        ):
            diff = (ref().float() - fast().float()).abs().max().item()
            print(f"{name} gather vs reference on {dev}, {dtype}: max |diff| {diff:.2e}", flush=True)
            assert diff < tol, diff
    print("all device checks passed")


if __name__ == "__main__":
    main()
