"""Linear layers of the lean path as one oneDNN matmul each, with their bias and GELU fused in.

``F.linear`` on the CPU first writes the bias into its whole output and then accumulates the
matmul onto it, and a GELU after it is one more pass over that output (for an MLP's 4C-wide
hidden state, three passes of memory traffic around one matmul). oneDNN's matmul adds the bias
and applies the GELU in its epilogue, on the tile it has just computed. It reads the layer's own
weight: a copy reordered into oneDNN's blocked layout gained 3-5 % per matmul here but held a
second copy of every fused weight (57 MiB for ViT-S's MLPs, part of the 4872 x 6017 peak).
The results are those of ``F.linear`` and ``F.gelu`` (the same oneDNN arithmetic; the golden and
lean-vs-reference tests hold them to float round-off).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["fused_linear"]


def _fusable(x: Tensor, layer: nn.Linear) -> bool:
    """oneDNN's fused matmul serves float32 on the CPU outside autocast, and outside a JIT trace
    (fvcore's FLOP count traces the forward: the tracer cannot record the fused op, and counts
    the layer's own matmul, the same multiply-adds)."""
    return (
        x.device.type == "cpu"
        and x.dtype == layer.weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_tracing()
    )


def fused_linear(x: Tensor, layer: nn.Linear, gelu: nn.GELU | None = None) -> Tensor:
    """``layer(x)``, then ``gelu`` if given, as one oneDNN matmul where it serves (see the module
    docstring); elsewhere the layer's own call (its hooks run, autocast picks its dtype) and the
    GELU.

    Args:
        x: ``[N, C_in]`` rows.
        layer: the linear layer.
        gelu: a GELU applied to its output.
    """
    if not _fusable(x, layer):
        y = layer(x)
        return gelu(y) if gelu is not None else y
    attr, algorithm = ("gelu", gelu.approximate) if gelu is not None else ("none", None)
    return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, attr, [], algorithm)
