"""Device choice: CUDA when present, else CPU, unless the user says otherwise."""

from __future__ import annotations

import os
import platform

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
