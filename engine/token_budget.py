"""``--max-number-token auto``: a routed-token cap derived from the device's free memory.

The rule (conservative, so it holds even where attention falls back to the math kernel that
materializes the scores):

1. budget = ``MEMORY_FRACTION`` x free memory (CUDA: ``torch.cuda.mem_get_info``; CPU:
   ``MemAvailable`` of ``/proc/meminfo``);
2. minus what the forward needs regardless of routing: the normalized input (4 float32 channels
   per pixel), ``ACTIVATION_COPIES`` float32 copies of the token map (``N x C``, the blocks' live
   activations: residual stream, MLP hidden, LTRM hidden), and one decoder tile;
3. the rest pays for one global attention over ``n`` routed tokens: per head a float32 ``n x n``
   score matrix and its softmax, ``heads x n^2 x 4 x 2`` bytes, so
   ``n = floor(sqrt(rest / (heads x 8)))``.

The cap is then clamped to at least ``MIN_TOKENS``; ``None`` (no cap) when it would not bind.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn

__all__ = ["auto_max_number_token", "free_memory_bytes"]

logger = logging.getLogger(__name__)

MEMORY_FRACTION = 0.5  # of the free memory, leaving room for the allocator and other processes
ACTIVATION_COPIES = 16  # live N x C float32 maps in a block (stream, 4C MLP hidden, 2C LTRM hidden)
INPUT_CHANNELS = 4  # normalized RGB + trimap, float32
FLOAT32_BYTES = 4
SCORE_COPIES = 2  # attention scores and their softmax
DECODER_TILE_BYTES = 512 * 1024**2  # one 640 px decoder tile of MEMatte-B, rounded up
MIN_TOKENS = 1024  # never cap below one 512 x 512 crop's worth of tokens
MEMINFO = Path("/proc/meminfo")
KIB = 1024


def free_memory_bytes(device: torch.device) -> int:
    """Free memory of ``device`` in bytes (CUDA: driver's free memory; CPU: MemAvailable)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    for line in MEMINFO.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * KIB
    raise RuntimeError(f"cannot read MemAvailable from {MEMINFO}")


def auto_max_number_token(
    model: nn.Module,
    image_hw: tuple[int, int],
    device: torch.device,
    free_bytes: int | None = None,
) -> int | None:
    """Largest routed-token count per image and block that fits the memory budget.

    Args:
        model: MEMatte (reads ``backbone.embed_dim`` and the attention heads).
        image_hw: input ``(H, W)`` in pixels.
        device: where inference runs.
        free_bytes: free memory to plan with; read from the device when None.

    Returns:
        the cap, or None when every token fits.
    """
    if free_bytes is None:
        free_bytes = free_memory_bytes(device)
    backbone = model.backbone
    patch = backbone.patch_embed.proj.stride[0]
    heads = backbone.blocks[0].attn.num_heads
    H, W = image_hw
    tokens = math.ceil(H / patch) * math.ceil(W / patch)
    fixed = (
        INPUT_CHANNELS * H * W * FLOAT32_BYTES
        + ACTIVATION_COPIES * tokens * backbone.embed_dim * FLOAT32_BYTES
        + DECODER_TILE_BYTES
    )
    rest = MEMORY_FRACTION * free_bytes - fixed
    per_square_token = heads * FLOAT32_BYTES * SCORE_COPIES
    cap = max(MIN_TOKENS, math.floor(math.sqrt(max(rest, 0) / per_square_token)))
    logger.info(
        "auto token cap for %dx%d (%d tokens) with %.1f GiB free: %s",
        H,
        W,
        tokens,
        free_bytes / KIB**3,
        cap if cap < tokens else "none",
    )
    return cap if cap < tokens else None
