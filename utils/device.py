"""Device and numeric-precision selection: the precision names of the trainer, the evaluator,
inference and the benchmark, and autocast for inference.

``autocast(device, "bf16")`` runs the matmul-heavy ops that ``torch.autocast`` covers (linear,
conv, matmul/einsum, scaled_dot_product_attention) in bfloat16, which uses the CPU's bf16 units
(AMX / AVX512-BF16) where present; norms, softmax and the residual stream stay float32, and
``MEMatte.inference`` returns float32 alpha. On a CPU without native bf16 support oneDNN
emulates bf16 and is slower than float32: :func:`autocast` logs a warning then.
"""

from __future__ import annotations

import contextlib
import logging

import torch

__all__ = ["PRECISIONS", "autocast", "cpu_has_native_bf16", "resolve_device"]

logger = logging.getLogger(__name__)

PRECISIONS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU; anything else is checked and returned.

    Raises:
        ValueError: a CUDA device is requested but none is available.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA device is available")
    return resolved


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 matmuls/convs natively on this CPU (AVX512-BF16 or AMX)."""
    if not torch.backends.mkldnn.is_available():
        return False
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast(device: str | torch.device, precision: str) -> contextlib.AbstractContextManager[None]:
    """Context manager that runs a forward pass in ``precision`` on ``device``.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, or a ``torch.device``.
        precision: ``"fp32"`` (no autocast), ``"bf16"`` (CPU or CUDA) or ``"fp16"`` (CUDA only).

    Raises:
        ValueError: unknown precision, or fp16 on a CPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {sorted(PRECISIONS)}")
    device_type = torch.device(device).type
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device_type != "cuda":
        raise ValueError("fp16 inference needs a CUDA device; use bf16 (or fp32) on the CPU")
    if precision == "bf16" and device_type == "cpu" and not cpu_has_native_bf16():
        logger.warning("this CPU has no native bf16 (AVX512-BF16/AMX): bf16 is emulated and slow")
    return torch.autocast(device_type=device_type, dtype=PRECISIONS[precision])
