"""Pick MEMatte's token cap (``max_number_token``) from the free memory of the device.

Memory model of one inference forward (batch 1, patch decoder on): a straight line in the pixels,
fitted by least squares to the peak-RSS increments that ``tools/benchmark.py`` measured on the CPU
for ViT-S in float32 (16-25 % of the tokens routed), with the per-token part scaled by the
embedding width C:

    peak(H, W, n) = FIXED_BYTES                                   (decoder tile, workspaces)
                  + INPUT_BYTES * H * W                           (the float32 image + trimap)
                  + PIXEL_BYTES * Hp * Wp                         (the float32 alpha)
                  + TOKEN_FLOATS_PER_CHANNEL * 4 * C * N          (token maps, LTRM/MLP chunks)
                  + ROUTED_FLOATS_PER_CHANNEL * 4 * C * n         (global attention, n tokens)

with ``Hp x Wp`` the padded input, ``N`` its tokens and ``n`` the routed tokens of one global
block. With the fused ``scaled_dot_product_attention`` kernels (CPU flash attention; CUDA flash
or memory-efficient attention) global attention needs memory linear in ``n`` and no ``n x n``
matrix: the routed term counts the tensors alive around one attention call (gathered and
normalised tokens, the qkv projection, q/k/v, output, projection). Where no fused kernel is
enabled, the ``n x n`` float32 logits and weights of every head are added:
``2 * heads * 4 * n**2``. bf16/fp16 autocast is planned as float32 (the residual stream stays
float32 and autocast adds cast copies). The measurements are the README's benchmark table;
``tests/test_token_budget.py`` checks that each measured peak lies within the plan / SAFETY.

The rule: ``cap = largest n with peak(H, W, n) <= SAFETY * free_bytes``; ``None`` (no cap) when
every token fits, 0 when even ``n = 0`` does not fit (a warning is logged: the forward will
probably run out of memory anyway).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from modeling.meta_arch.mematte import padded_size
from utils.memory import MIB, free_memory_bytes

__all__ = ["auto_max_number_token", "peak_bytes"]

logger = logging.getLogger(__name__)

# Least-squares fit of the measured increments (ViT-S, fp32, random weights, patch decoder, glibc
# thresholds fixed): 232 MiB + 32.7 bytes per padded pixel. The slope is split into the pixel
# buffers of the input and the alpha (16 + 4 bytes per pixel) and the token maps (the rest, per
# channel).
FIXED_BYTES = 232 * MIB
INPUT_BYTES = 16  # float32 RGB + trimap given to the model
PIXEL_BYTES = 4  # the float32 alpha (the padded input is built crop by crop, never whole)
TOKEN_FLOATS_PER_CHANNEL = 2.2  # (32.7 - 20) bytes/px * 256 px/token / (4 bytes * 384 channels)
ROUTED_FLOATS_PER_CHANNEL = 12  # 2 C gathered/normed, 3 C qkv, 3 C q/k/v, 2 C output, 2 C proj
FLOAT_BYTES = 4
# Fraction of the free memory the forward may plan to use (allocator slack, other processes).
SAFETY = 0.8


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
