"""Device and numeric-precision selection: the precision names of the trainer, the evaluator,
inference and the benchmark, autocast for inference, and pixel levels moved to a device as
floats (:func:`to_unit_float`).

``autocast(device, "bf16")`` runs the matmul-heavy ops that ``torch.autocast`` covers (linear,
conv, matmul/einsum, scaled_dot_product_attention) in bfloat16, which uses the CPU's bf16 units
(AMX / AVX512-BF16) where present; norms, softmax and the residual stream stay float32, and
``MEMatte.inference`` returns float32 alpha. On a CPU without native bf16 support oneDNN
emulates bf16 and is slower than float32: :func:`autocast` logs a warning then.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import torch

from utils.arguments import PRECISION_NAMES
from utils.levels import UINT8_MAX, UINT16_MAX

__all__ = ["PRECISIONS", "autocast", "cpu_has_native_bf16", "resolve_device", "to_unit_float"]

logger = logging.getLogger(__name__)

PRECISIONS: dict[str, torch.dtype] = dict(
    zip(PRECISION_NAMES, (torch.float32, torch.bfloat16, torch.float16), strict=True)
)


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


def to_unit_float(
    levels: np.ndarray | torch.Tensor,
    device: torch.device | str | None = None,
    *,
    copy: bool = False,
) -> torch.Tensor:
    """Pixel levels as float32 in [0, 1]: uint8 / 255, uint16 / 65535, floats as they are. The
    levels travel to ``device`` first, so the float copy is made there, once.

    Args:
        levels: an array or tensor of any shape (flipped numpy views too).
        device: where the float copy goes; None: where ``levels`` are (the CPU for arrays).
        copy: return a new contiguous tensor also where ``levels`` are float32 already on
            ``device`` (by default they are returned as they are).

    Returns:
        a float32 tensor of the shape of ``levels``.
    """
    if isinstance(levels, np.ndarray) and any(stride < 0 for stride in levels.strides):
        levels = np.ascontiguousarray(levels)  # a flipped view (BGR -> RGB): torch needs a copy
    tensor = torch.as_tensor(levels)
    if device is not None:
        tensor = tensor.to(device, non_blocking=True)
    memory_format = torch.contiguous_format if copy else torch.preserve_format
    if tensor.dtype == torch.uint8:
        return tensor.to(torch.float32, memory_format=memory_format).div_(UINT8_MAX)
    if tensor.dtype == torch.uint16:
        return tensor.to(torch.float32, memory_format=memory_format).div_(UINT16_MAX)
    return tensor.to(torch.float32, memory_format=memory_format, copy=copy)
