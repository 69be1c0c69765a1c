"""Pick MEMatte's token cap (``max_number_token``) from the free memory of the device.

Memory model of one inference forward (batch 1, patch decoder on), fitted to the peak-RSS
increments that ``tools/benchmark.py`` measured on the CPU for ViT-S in float32 (1024^2 to
4872x6017 with 16-25 % of the tokens routed: 265 to 1156 MiB, a straight line in the pixels to
within 3 %; then 20 of the 32.7 bytes per pixel were the padded input and the alpha) before the
routers, the last decoder stages and the input crops ran in chunks, scaled by the embedding
width C:

    peak(H, W, n) = FIXED_BYTES                                   (decoder tile, workspaces)
                  + INPUT_BYTES * H * W                           (the float32 image + trimap)
                  + PIXEL_BYTES * Hp * Wp                         (the float32 alpha)
                  + TOKEN_FLOATS_PER_CHANNEL * 4 * C * N          (token maps, LTRM/MLP chunks)
                  + ROUTED_FLOATS_PER_CHANNEL * 4 * C * n         (global attention, n tokens)

with ``Hp x Wp`` the padded input, ``N`` its tokens and ``n`` the routed tokens of one global
block. With the fused ``scaled_dot_product_attention`` kernels (CPU flash attention; CUDA flash
or memory-efficient attention) global attention needs memory linear in ``n`` and no ``n x n``
matrix: the routed term counts the tensors alive around one attention call (gathered and
normalised tokens, the qkv projection, q/k/v, output, projection) on top of the fitted line. It
is a safe-side bound: at 2048x2048 the measured peak was the same with 4096 and with 11597
routed tokens, since other stages peak higher, and with the chunked routers, decoder strips
and input crops the model over-estimates the measured increments (plus the inputs) by 12-37 %
(the README's benchmark table: 1024^2, 2048^2, 4096^2, 4872x6017). Where no fused kernel is
enabled, the ``n x n`` float32 logits and weights of every head are added:
``2 * heads * 4 * n**2``. bf16/fp16 autocast is planned as float32 (the residual stream stays
float32 and autocast adds cast copies; on the CPU the bf16 peak was within 3 % of fp32).

The rule: ``cap = largest n with peak(H, W, n) <= SAFETY * free_bytes``; ``None`` (no cap) when
every token fits, 0 when even ``n = 0`` does not fit (a warning is logged: the forward will
probably run out of memory anyway).
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

import torch
from torch import nn

from modeling.meta_arch.mematte import padded_size

__all__ = [
    "auto_max_number_token",
    "free_memory_bytes",
    "peak_bytes",
    "configure_malloc",
]

logger = logging.getLogger(__name__)

# Least-squares fit of the measured increments (ViT-S, fp32, random weights, patch decoder,
# glibc mmap threshold pinned): 232 MiB + 32.7 bytes per padded pixel; the per-pixel slope is
# split into the known pixel buffers (then 20 bytes: the padded input, now built crop by crop,
# and the alpha) and the token maps (the rest, per channel).
FIXED_BYTES = 232 * 2**20
INPUT_BYTES = 16  # float32 RGB + trimap given to the model
PIXEL_BYTES = 4  # the float32 alpha (the padded input is built crop by crop, never whole)
TOKEN_FLOATS_PER_CHANNEL = 2.2  # (32.7 - 20) bytes/px * 256 px/token / (4 bytes * 384 channels)
ROUTED_FLOATS_PER_CHANNEL = 12  # 2 C gathered/normed, 3 C qkv, 3 C q/k/v, 2 C output, 2 C proj
FLOAT_BYTES = 4
# Fraction of the free memory the forward may plan to use (allocator slack, other processes).
SAFETY = 0.8
MEMINFO = Path("/proc/meminfo")
# glibc mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Fixed glibc thresholds for inference. Every recurring large buffer of a ViT-S forward (token
# maps of 24 MiB at 2048^2, decoder-tile maps of up to 72 MiB) stays below MMAP_THRESHOLD_BYTES,
# so it is carved from the heap and reused by the next block or tile instead of being mapped,
# page-faulted in and unmapped again; only the few larger buffers (the input at 4096^2 and above)
# get their own mapping. The heap keeps up to TRIM_THRESHOLD_BYTES of free memory at its top.
MMAP_THRESHOLD_BYTES = 128 * 2**20
TRIM_THRESHOLD_BYTES = 256 * 2**20


def configure_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds (``MMAP_THRESHOLD_BYTES``, ``TRIM_THRESHOLD_BYTES``).

    By default glibc starts with a 128 KiB mmap threshold and raises it (up to 32 MiB) after
    large frees: buffers above 32 MiB are then mapped and page-faulted in on every use, and
    smaller ones come from a heap whose free chunks are neither reused in a pattern nor returned.
    Fixed thresholds make the per-block and per-tile buffers reuse the same heap memory: a
    2048x2048 ViT-S forward on 2 CPU cores spends about 1 s of system time on page faults by
    default and almost none with this setting. This is a process-wide allocator setting, so only
    entry-point scripts call it, explicitly (the benchmark does unless ``--default-malloc``).
    Returns False where it does not apply (no glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
            and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
        )
    except (OSError, AttributeError):
        return False


def free_memory_bytes(device: torch.device | str) -> int:
    """Free memory of ``device``: CUDA ``mem_get_info``; CPU ``MemAvailable`` of /proc/meminfo
    (psutil, then ``sysconf`` available pages, where /proc is missing)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if MEMINFO.exists():
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _fused_attention(device: torch.device) -> bool:
    """Whether SDPA has a kernel with memory linear in the sequence length on ``device``."""
    if device.type != "cuda":
        return True  # the CPU flash-attention kernel handles every dtype
    backends = torch.backends.cuda
    return backends.flash_sdp_enabled() or backends.mem_efficient_sdp_enabled()


def peak_bytes(
    image_hw: tuple[int, int],
    routed: int,
    embed_dim: int,
    num_heads: int,
    patch_size: int = 16,
    size_divisibility: int = 32,
    fused_attention: bool = True,
) -> int:
    """The memory model above: peak bytes of one forward with ``routed`` global tokens."""
    H, W = image_hw
    Hp, Wp = padded_size(image_hw, size_divisibility)
    tokens = (Hp // patch_size) * (Wp // patch_size)
    width = embed_dim * FLOAT_BYTES
    total = FIXED_BYTES + INPUT_BYTES * H * W + PIXEL_BYTES * Hp * Wp
    total += TOKEN_FLOATS_PER_CHANNEL * width * tokens + ROUTED_FLOATS_PER_CHANNEL * width * routed
    if not fused_attention:
        total += 2 * num_heads * FLOAT_BYTES * routed**2
    return int(total)


def auto_max_number_token(
    model: nn.Module,
    image_hw: tuple[int, int],
    device: torch.device | str,
    free_bytes: int | None = None,
) -> int | None:
    """Largest token cap whose forward fits the free memory (see the module docstring).

    Args:
        model: a :class:`MEMatte` (reads ``backbone.embed_dim``, the attention heads, the patch
            size and ``size_divisibility``).
        image_hw: input ``(H, W)`` before padding.
        device: where the forward runs.
        free_bytes: free memory to plan for; default: :func:`free_memory_bytes` of ``device``.

    Returns:
        the cap, or None when every token of the image fits.
    """
    device = torch.device(device)
    backbone = model.backbone
    patch = backbone.patch_embed.proj.kernel_size[0]
    heads = backbone.blocks[0].attn.num_heads
    Hp, Wp = padded_size(image_hw, model.size_divisibility)
    tokens = (Hp // patch) * (Wp // patch)
    if free_bytes is None:
        free_bytes = free_memory_bytes(device)
    budget = SAFETY * free_bytes
    fused = _fused_attention(device)

    def fits(n: int) -> bool:
        peak = peak_bytes(
            image_hw, n, backbone.embed_dim, heads, patch, model.size_divisibility, fused
        )
        return peak <= budget

    if fits(tokens):
        return None
    if not fits(0):
        logger.warning(
            "%.1f GiB free is not enough for a %dx%d input even without global attention",
            free_bytes / 2**30,
            *image_hw,
        )
        return 0
    # fits() is monotone in n: bisect for the largest n that fits.
    lo, hi = 0, tokens
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    logger.info(
        "auto token cap: %d of %d tokens (%.1f GiB free, %s attention memory)",
        lo,
        tokens,
        free_bytes / 2**30,
        "linear" if fused else "quadratic",
    )
    return lo
