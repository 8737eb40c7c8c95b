"""Device choice: CUDA when present, else CPU, unless the user says otherwise; and the precision training
computes in on it."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from pathlib import Path

import torch

from axformer.errors import AxformerError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AxformerError(f"--device {name} requested but CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise AxformerError(f"--device {name!r}; expected auto, cpu or cuda[:N]") from None


def run_environment(device) -> dict:
    """What a report records of where it ran (the figures of a run are only comparable on the same)."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """PyTorch's intra-op thread count inside the block (None: unchanged), restored after it."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.cache
def _proc_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The instruction-set flags the CPU reports (Linux's /proc/cpuinfo; empty elsewhere)."""
    text = _proc_cpuinfo() if cpuinfo is None else cpuinfo
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name as Linux reports it ("" elsewhere)."""
    text = _proc_cpuinfo() if cpuinfo is None else cpuinfo
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")


# The instruction sets int8 and bf16 kernels depend on: two "AMD EPYC"s with and without VNNI rank the same int8
# artifact differently against ONNX Runtime int8 (docs/promises.md), so every figure names them.
INT8_BF16_FLAGS = ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile")
KERNEL_FLAGS = ("avx2", "avx512f", *INT8_BF16_FLAGS)


def cpu_description(cpuinfo: str | None = None) -> str:
    """Model name and kernel-relevant instruction sets, e.g. "AMD EPYC (avx512_vnni, avx512_bf16)"."""
    name = cpu_model(cpuinfo) or platform.processor() or platform.machine()
    flags = cpu_flags(cpuinfo)
    kinds = [f for f in INT8_BF16_FLAGS if f in flags] or [f for f in ("avx512f", "avx2") if f in flags][:1]
    return f"{name} ({', '.join(kinds)})" if kinds else name


def native_bf16(device: torch.device | str, cpuinfo: str | None = None) -> bool:
    """Whether ``device`` multiplies bf16 in hardware: a CUDA GPU that supports it, an x86 CPU with AVX512_BF16 or
    AMX. Elsewhere PyTorch emulates bf16 and it is slower than fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool({"avx512_bf16", "amx_bf16"} & cpu_flags(cpuinfo))


def training_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The dtype training's matrix products run in under autocast (None: fp32).

    Mixed precision: weights, optimiser state, losses and checkpoints stay fp32; only the forward and backward
    products drop to 16 bits, which is where training spends its time. ``auto`` takes bf16 where the hardware
    has it (measured on an AMD EPYC with AVX512_BF16, `axformer optimize --demo`: fine-tuning 147 s in fp32, 107 s
    in bf16; the distillation's teacher pass ~100 s against 44; docs/promises.md runs 12-13)
    and fp32 everywhere else. fp16 needs a CUDA device
    (its loss is scaled against underflow); bf16 has fp32's range and needs no scaling."""
    if precision not in PRECISIONS:
        raise AxformerError(f"--train-precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise AxformerError(f"--train-precision fp16 needs a CUDA device, got {device}; expected auto, fp32 or bf16")
    return _DTYPES.get(precision)


def precision_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def autocast(dtype: torch.dtype | None, device: torch.device | str) -> contextlib.AbstractContextManager:
    """Mixed precision on ``device`` in ``dtype`` (None: a no-op context, fp32 throughout)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
