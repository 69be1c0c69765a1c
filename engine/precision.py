"""Device and numeric-precision selection for inference and benchmarks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["PRECISIONS", "autocast", "resolve_device"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA device is available")
    return device


@contextlib.contextmanager
def autocast(device: torch.device, precision: str = "fp32") -> Iterator[None]:
    """Run the enclosed forward in ``precision`` (``fp32``, ``bf16`` or ``fp16``).

    bf16 and fp16 use ``torch.autocast`` (matmuls and convolutions in half precision, reductions
    and softmax in float32); fp16 needs CUDA.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {sorted(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        yield
        return
    if dtype == torch.float16 and device.type != "cuda":
        raise ValueError("fp16 inference needs a CUDA device; use bf16 on the CPU")
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
