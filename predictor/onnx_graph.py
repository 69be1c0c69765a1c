"""The ONNX deployment of a MEMatte (or ViTMatte) inference model, for onnxruntime
(:mod:`predictor.onnx_predictor`); ``tools/export_onnx.py`` is its command line.

The deployment is a folder (layout in ``docs/deployment.md``): ``mematte.json``, the manifest,
names the graphs and holds what the runtime needs besides them (normalisation, padding rule,
decoder geometry, default token cap, routed blocks, where the weights came from); the graphs
run one image (batch 1) at dynamic sizes, in float32:

- ``embed.onnx``: the patch embedding, called on row strips of the normalised input (``input``
  ``[1, 4, h, W]`` -> ``tokens`` ``[1, h / 16, W / 16, C]``), so that the float input never
  exists whole;
- ``blocks.onnx``: the position embedding and every block, with the official inference routing
  (argmax of each router, then the ``max_number_token`` tokens of largest margin ``s0 - s1``,
  as ``TopK``); ``tokens`` and ``max_number_token`` (int64 scalar) -> ``features``
  ``[1, h, w, C]`` (channels last) and per routed block ``i`` ``keep_block{i}``
  ``[1, h, w, 1]`` and ``router_scores_block{i}`` ``[1, h, w, 2]`` (log-probabilities). The
  routed tokens attend among themselves in one onnxruntime ``com.microsoft``
  ``MultiHeadAttention`` (a flash attention on CPU: no scores matrix exists); window attention
  folds its rel-pos bias into the query-key product (:func:`_attention_in_windows`). Token
  maps are processed in chunks: window attention in ``WINDOW_CHUNKS`` chunks of windows, the
  MLPs, routers, LTRMs and residual conv blocks in ``ROW_CHUNKS`` strips of token rows (with
  the rows their convs read above and below), so that no wide intermediate exists for the
  whole map;
- ``decoder_*.onnx``: one graph per decoder stage, called per box of the block-sparse plan
  (:mod:`modeling.lean.blocks`), exactly the per-box computations of the PyTorch lean decoder
  (:class:`modeling.lean.block_decode.DecoderStages`, BatchNorm folded in): ``convstream{k}``
  (``x``, ``pads``), ``fusion{i}`` (``detail``, ``coarse``, ``starts``, ``pads``) and ``head``
  (``x``, ``pads``) -> ``y``; ``pads`` is ``int64 [8]`` in the order of ONNX ``Pad``.

The embedding and blocks are traced with the TorchScript exporter (opset ``OPSET``) from the
reference modules; the decoder graphs are written with the ``onnx`` helpers; ``onnx.checker``
validates each. Tracing freezes the Python branches on shapes of the reference forward (window
padding, position-embedding resizing) as the export input takes them; that input
(:func:`export_input_size`) takes the general branch of each, which is exact at every size, and
``tests/predictor/test_onnx.py`` checks other sizes against PyTorch.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn

from modeling.backbone.attention import (
    Attention,
    get_rel_pos,
    window_partition,
    window_unpartition,
)
from modeling.backbone.ltrm import LTRM
from modeling.backbone.router import Router
from modeling.backbone.vit import Block, ResBottleneckBlock, ViT, get_abs_pos
from modeling.lean.blocks import DecoderSpec
from modeling.lean.constants import EMBED_STRIP_PATCH_ROWS
from modeling.lean.decoder import fold_batchnorm
from modeling.lean.mode import to_reference
from modeling.meta_arch.mematte import MEMatte
from predictor.onnx_predictor import (
    BLOCKS_FILE,
    EMBED_FILE,
    FORMAT,
    KEEP_OUTPUT,
    MANIFEST_FILE,
    MAX_NUMBER_TOKEN_INPUT,
    SCORES_OUTPUT,
    STAGE_FILE,
)
from predictor.weights import build_inference_model, load_inference_weights
from utils.file_io import atomic_write

__all__ = [
    "OPSET",
    "ROW_CHUNKS",
    "WINDOW_CHUNKS",
    "build_deployment",
    "export_input_size",
    "export_onnx",
    "write_deployment",
]

logger = logging.getLogger(__name__)

OPSET = 17
# onnxruntime's operator domain (its contrib operators, in every onnxruntime build) and the
# version of it the graphs use.
MS_DOMAIN, MS_OPSET = "com.microsoft", 1
# Window attention runs over this many chunks of windows; the MLPs, routers, LTRMs and residual
# blocks over this many strips of token rows (at 4872 x 6017 a whole-map MLP hidden state alone
# takes 0.7 GB, an LTRM one 0.35 GB).
WINDOW_CHUNKS = 8
ROW_CHUNKS = 16
# The smallest token-grid side the export input may have (it must exceed a window or two).
_MIN_EXPORT_GRID = 30
# Graph input and output names.
_INPUT, _TOKENS, _FEATURES = "input", "tokens", "features"


def _topk_routing(scores: Tensor, max_number_token: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Inference routing of one image as the official code (argmax, then the cap), as top-k.

    The routed tokens are the ``k = min(#{s0 > s1}, cap)`` tokens of largest margin ``s0 - s1``.
    At least one token is gathered (``k_eff = max(k, 1)``) so that no tensor is ever empty; the
    extra one is marked invalid and leaves the token to the LTRM.

    Args:
        scores: router log-probabilities ``[1, N, 2]``.
        max_number_token: int64 scalar cap.

    Returns:
        token index ``[1, k_eff]``, validity ``[1, k_eff, 1]`` (float 0/1) and decisions
        ``[1, N, 1]`` (1 = global attention).
    """
    margin = scores[..., 0] - scores[..., 1]  # [1, N]
    count = torch.minimum((margin > 0).sum(), max_number_token)
    index = margin.topk(torch.clamp(count, min=1), dim=1).indices  # [1, k_eff], sorted
    valid = (torch.arange(index.shape[1]).reshape(1, -1, 1) < count).to(scores.dtype)
    keep = torch.zeros_like(margin).unsqueeze(-1).scatter(1, index.unsqueeze(-1), valid)
    return index, valid, keep


class _Split(torch.autograd.Function):
    """``x`` cut along ``dim`` into ``chunks`` pieces of ``sizes`` (int64 ``[chunks]``, computed
    in the graph from the run's shapes): in the graph one ONNX ``Split``, where indexing gives a
    ``Slice`` per piece. Cutting a 2048 x 2048 image's token map (ViT-S) into 16 strips took
    1.1 ms less as one ``Split`` than as 16 ``Slice`` nodes here, and the blocks graph's
    slicing 0.31 s instead of 0.40 s in onnxruntime's profiler."""

    @staticmethod
    def forward(ctx, x: Tensor, sizes: Tensor, dim: int, chunks: int) -> tuple[Tensor, ...]:
        return x.split(sizes.tolist(), dim)

    @staticmethod
    def symbolic(g, x, sizes, dim: int, chunks: int):  # g, x, sizes: the exporter's values
        parts = g.op("Split", x, sizes, axis_i=dim, outputs=chunks)
        parts = parts if chunks > 1 else (parts,)  # one output comes as a value, not a tuple
        for part in parts:  # the rank of x, its sizes known only at run time
            part.setType(x.type().with_sizes([None] * x.type().dim()))
        return parts


def _split(x: Tensor, dim: int, chunks: int) -> tuple[Tensor, ...]:
    """``x`` in ``chunks`` pieces along ``dim``: piece ``i`` holds the indices
    ``[i * n // chunks, (i + 1) * n // chunks)`` of its ``n``; some are empty when
    ``n < chunks``."""
    size = torch._shape_as_tensor(x)[dim]  # traced: the run's size, not the export input's
    bounds = torch.div(torch.arange(chunks + 1) * size, chunks, rounding_mode="floor")
    return _Split.apply(x, bounds[1:] - bounds[:-1], dim, chunks)


def _in_slices(fn: Callable[..., Tensor], xs: Sequence[Tensor], dim: int, chunks: int) -> Tensor:
    """``fn`` over ``chunks`` pieces along ``dim`` of the equally long ``xs`` (:func:`_split`),
    concatenated: the graph copies each input once into its pieces and the outputs once into
    the result, and only one piece's intermediates exist at a time. ``fn`` gets one piece of
    each of ``xs`` and must accept empty ones (``n < chunks``)."""
    pieces = zip(*(_split(x, dim, chunks) for x in xs))
    return torch.cat([fn(*piece) for piece in pieces], dim)


class _FusedAttention(torch.autograd.Function):
    """Multi-head ``softmax(q k^T / sqrt(d)) v`` of ``q``, ``k``, ``v`` ``[1, n, C]`` (heads
    side by side in C): the reference's ``scaled_dot_product_attention`` when traced, and in the
    graph onnxruntime's fused ``com.microsoft`` ``MultiHeadAttention`` (:data:`MS_DOMAIN`), which
    on CPU runs a flash attention: no ``heads x n x n`` scores exist. A ViT-S block's attention
    with its projections took 0.16 s for 4096 routed tokens and 2.38 s for 18500 here, against
    0.30 s and 5.32 s for the 128 query chunks of standard ops it replaces and 0.18 s and 2.82 s
    for the PyTorch layer (outputs within 1e-7 of it)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
        n, C = q.shape[1], q.shape[2]
        # [1, n, C] -> [1, heads, n, d] per input -> [1, n, C]
        q, k, v = (t.reshape(1, n, heads, C // heads).transpose(1, 2) for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, n, C)

    @staticmethod
    def symbolic(g, q, k, v, heads: int):  # g, q, k, v: the TorchScript exporter's graph values
        out = g.op(f"{MS_DOMAIN}::MultiHeadAttention", q, k, v, num_heads_i=heads)
        # The query's type, its sizes unknown: the exporter cannot infer them, and the query's
        # own symbolic sizes would be shared by every routed block's node (onnxruntime would
        # then plan one buffer for blocks whose routed-token counts differ).
        out.setType(q.type().with_sizes([None] * 3))
        return out


def _global_attention(attn: Attention, x: Tensor) -> Tensor:
    """``attn`` (no rel-pos) over ``x [1, k, C]``, as one fused attention."""
    C = x.shape[2]
    qkv = attn.qkv(x)  # [1, k, 3C]: q, k, v, each heads x d
    q, key, value = (qkv[..., i * C : (i + 1) * C] for i in range(3))
    return attn.proj(_FusedAttention.apply(q, key, value, attn.num_heads))


def _attention_in_windows(attn: Attention, windows: Tensor, size: int) -> Tensor:
    """``attn`` over ``windows`` ``[b, s, s, C]`` of side ``s = size``, its decomposed rel-pos
    bias (if it has one) folded into the query-key product; ``b`` may be 0.

    The bias of query ``(i, j)`` on key ``(m, n)`` is ``rel_h[i, j, m] + rel_w[i, j, n]``; with
    ``q' = [q * scale, rel_h, rel_w]`` and ``k' = [k, e_m, e_n]`` (``e`` one-hot rows of the
    key's row and column) one product ``q' k'^T`` holds logits and bias: the reference's two
    broadcast additions over the ``heads x s^2 x s^2`` logits took 0.2 s of onnxruntime's
    window attention at 2048 x 2048 (equal within float round-off). Only ``b`` is a size of the
    run, every other size a constant of the graph: onnxruntime's reshapes then take an empty
    chunk of windows too (a size of the run becomes a -1, undefined for an empty tensor).
    """
    b, C, n, heads = windows.shape[0], attn.qkv.in_features, size * size, attn.num_heads
    d = C // heads
    # [b, n, 3C] -> [b, n, 3, heads, d] -> 3 x [b, heads, n, d]
    qkv = attn.qkv(windows.reshape(b, n, C)).reshape(b, n, 3, heads, d)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    query, key = q * attn.scale, k
    if attn.use_rel_pos:
        # decomposed_rel_pos_terms as two broadcast matrix products, the second over transposed
        # windows (onnxruntime's Einsum took 1.5x as long): [b * heads, s, s, d] @ [s, d, s]
        r_q = q.reshape(b * heads, size, size, d)
        table_h, table_w = (
            get_rel_pos(size, size, table).transpose(1, 2)  # [s, d, s]
            for table in (attn.rel_pos_h, attn.rel_pos_w)
        )
        rel_h = r_q @ table_h  # [b * heads, s, s, s]: query (i, j), key row m
        rel_w = (r_q.transpose(1, 2) @ table_w).transpose(1, 2)  # query (i, j), key column n
        query = torch.cat(
            [query, rel_h.reshape(b, heads, n, size), rel_w.reshape(b, heads, n, size)], -1
        )
        eye = torch.eye(size, dtype=k.dtype)
        # key (m, n) -> [e_m, e_n]: [s, s, 2s] -> [1, 1, n, 2s]
        selectors = torch.cat(
            [eye[:, None, :].expand(size, size, size), eye[None, :, :].expand(size, size, size)],
            -1,
        ).reshape(1, 1, n, 2 * size)
        key = torch.cat([k, selectors.expand(b, heads, n, 2 * size)], -1)
    out = (query @ key.transpose(-2, -1)).softmax(-1) @ v  # [b, heads, n, d]
    return attn.proj(out.transpose(1, 2).reshape(b, size, size, C))


def _window_attention(block: Block, x: Tensor) -> Tensor:
    """:meth:`Block.attend` of a window block, windows in ``WINDOW_CHUNKS`` chunks."""
    H, W = x.shape[1], x.shape[2]
    size = block.window_size
    windows, pad_hw = window_partition(x, size)
    attend = partial(_attention_in_windows, block.attn, size=size)
    out = _in_slices(attend, [windows], dim=0, chunks=WINDOW_CHUNKS)
    return window_unpartition(out, size, pad_hw, (H, W))


def _in_row_strips(
    fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, halo: int, chunks: int
) -> Tensor:
    """``fn`` over ``chunks`` strips of rows of ``x`` ``[1, H, W, C]``, each with ``halo`` rows of
    its neighbours above and below, concatenated: only one strip's intermediates exist at a time.

    ``fn(strip, valid)`` gets the strip with its halo rows (``step + 2 * halo`` rows; rows beyond
    the map hold zeros) and ``valid`` ``[1, rows, 1, 1]``, 1 on the rows inside the map (a conv
    of radius ``halo`` zeroes its input with it, as its padding would), and returns its output
    for the strip's own ``step`` rows.
    """
    height = x.shape[1]
    pad = (-height) % chunks
    padded = F.pad(x, (0, 0, 0, 0, halo, pad + halo))  # [1, halo + H + pad + halo, W, C]
    step = (height + pad) // chunks
    rows = torch.arange(padded.shape[1]) - halo  # the map row of each padded row
    valid = ((rows >= 0) & (rows < height)).to(x.dtype).reshape(1, -1, 1, 1)
    parts = [
        fn(
            padded[:, i * step : (i + 1) * step + 2 * halo],
            valid[:, i * step : (i + 1) * step + 2 * halo],
        )
        for i in range(chunks)
    ]
    return torch.cat(parts, 1)[:, :height]


def _ltrm(ltrm: LTRM, x: Tensor) -> Tensor:
    """:meth:`LTRM.forward` of ``[1, H, W, C]``, its local part in row strips."""
    halo = ltrm.dwconv.padding[0]

    def local(strip: Tensor, valid: Tensor) -> Tensor:
        hidden = ltrm.act1(ltrm.fc1(strip)) * valid  # the dwconv's zero padding beyond the map
        # [1, rows, W, 2C] -> [1, 2C, rows, W]; rows are not padded: the halo holds them
        out = F.conv2d(
            hidden.permute(0, 3, 1, 2),
            ltrm.dwconv.weight,
            ltrm.dwconv.bias,
            padding=(0, ltrm.dwconv.padding[1]),
            groups=ltrm.dwconv.groups,
        )
        return ltrm.fc2(ltrm.act2(out.permute(0, 2, 3, 1)))

    y = _in_row_strips(local, x, halo, ROW_CHUNKS)
    gate = ltrm.eca.gate(y.permute(0, 3, 1, 2))  # [1, C, 1, 1]
    return y + y * gate.permute(0, 2, 3, 1)


def _residual(block: ResBottleneckBlock, x: Tensor) -> Tensor:
    """:meth:`ResBottleneckBlock.forward` of tokens ``[1, H, W, C]`` in row strips."""
    halo = block.conv2.padding[0]

    def strip_residual(strip: Tensor, valid: Tensor) -> Tensor:
        tokens = strip.permute(0, 3, 1, 2)  # [1, rows, W, C] -> [1, C, rows, W]
        out = block.act1(block.norm1(block.conv1(tokens))) * valid.permute(0, 3, 1, 2)
        out = F.conv2d(out, block.conv2.weight, padding=(0, block.conv2.padding[1]))
        out = block.norm3(block.conv3(block.act2(block.norm2(out))))
        return (tokens[:, :, halo:-halo] + out).permute(0, 2, 3, 1)

    return _in_row_strips(strip_residual, x, halo, ROW_CHUNKS)


def _router(router: Router, x: Tensor) -> Tensor:
    """:meth:`Router.forward` of ``[1, N, C]`` in two passes over ``ROW_CHUNKS`` token chunks
    (tokens ``[i * N // chunks, (i + 1) * N // chunks)``, as the lean router): the local halves
    and the sum of the global halves, then the MLP. The chunks are slices of ``x`` itself, not
    of a padded copy of the whole map (176 MB at 4872 x 6017)."""
    size = x.shape[1]
    locals_, global_sum = [], 0.0
    for part in _split(x, 1, ROW_CHUNKS):
        h = router.in_conv(part)
        half = h.shape[-1] // 2
        locals_.append(h[..., :half])
        global_sum = global_sum + h[..., half:].sum(1, keepdim=True)
    global_x = global_sum / size  # [1, 1, C/2] image context
    scores = [
        router.out_conv(torch.cat([local, global_x.expand_as(local)], dim=-1)) for local in locals_
    ]
    return torch.cat(scores, 1)


def _routed_update(block: Block, x: Tensor, index: Tensor, valid: Tensor) -> Tensor:
    """The attention branch of a routed block in inference (:meth:`Block.forward_sparse`), with
    the routed tokens given by ``index [1, k]`` (``valid`` ``[1, k, 1]`` marks the real ones).

    The routed rows are gathered and scattered back whole (``Gather`` and ``ScatterND`` on the
    ``[N, C]`` map): the elementwise ``GatherElements`` / ``ScatterElements`` would need an int64
    index as large as the routed tokens themselves (57 MB for 18500 of them) and took 24 ms per
    scatter at 2048 x 2048."""
    _, H, W, C = x.shape
    update = _ltrm(block.efficient_block, x).reshape(H * W, C)
    rows = index[0]  # [k]
    routed = x.reshape(H * W, C).index_select(0, rows).unsqueeze(0)  # [1, k, C]
    attended = block.drop_path(_global_attention(block.attn, block.norm1(routed)))[0]
    attended = torch.where(valid[0] > 0, attended, update.index_select(0, rows))
    return torch.index_put(update, (rows,), attended).reshape(1, H, W, C)


def _block(block: Block, x: Tensor, attention: Tensor) -> Tensor:
    """:meth:`Block.forward` given its attention branch ``[1, H, W, C]``; the two residual
    additions and the MLP, then the conv residual block, run over ``ROW_CHUNKS`` strips of token
    rows (no whole-map sum exists between them)."""

    def mlp_residual(rows: Tensor, attended: Tensor) -> Tensor:
        rows = rows + attended
        return rows + block.drop_path(block.mlp(block.norm2(rows)))

    x = _in_slices(mlp_residual, [x, attention], dim=1, chunks=ROW_CHUNKS)
    return _residual(block.residual, x) if block.use_residual_block else x


def _abs_pos(abs_pos: Tensor, has_cls_token: bool, hw: tuple[int, int]) -> Tensor:
    """:func:`get_abs_pos` as two matrix products (``[1, h, w, C]``): bicubic resizing is linear
    and separable, ``R_h @ grid @ R_w^T`` with ``R_h`` ``[h, s]`` and ``R_w^T`` ``[s, w]`` the
    same resize of the ``[s, s]`` identity along one axis. onnxruntime's ``Resize`` of the whole
    ``[1, C, h, w]`` map took 0.4 s at 2048 x 2048, a seventh of the backbone graph's non-matmul
    time; the identities' resizes and the products cost milliseconds (equal within float
    round-off)."""
    h, w = hw
    side = math.isqrt(abs_pos.shape[1] - int(has_cls_token))
    grid = get_abs_pos(abs_pos, has_cls_token, (side, side))[0]  # [s, s, C]
    eye = torch.eye(side, dtype=grid.dtype).reshape(1, 1, side, side)
    rows = F.interpolate(eye, size=(h, side), mode="bicubic", align_corners=False)[0, 0]
    cols = F.interpolate(eye, size=(side, w), mode="bicubic", align_corners=False)[0, 0]
    resized = (rows @ grid.reshape(side, -1)).reshape(h, side, -1)  # [h, s, C]
    # [w, s] @ [h, s, C] (broadcast over h) -> [h, w, C]: channels last without a transpose
    return (cols.t() @ resized).unsqueeze(0)


class _EmbedGraph(nn.Module):
    """The patch embedding of a strip of the normalised input: ``[1, 4, h, W]`` ->
    ``[1, h / p, W / p, C]``."""

    def __init__(self, backbone: ViT) -> None:
        super().__init__()
        self.patch_embed = backbone.patch_embed

    def forward(self, x: Tensor) -> Tensor:
        return self.patch_embed(x)


class _BlocksGraph(nn.Module):
    """The position embedding and the blocks of one image's tokens, with inference routing."""

    def __init__(self, backbone: ViT) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, tokens: Tensor, max_number_token: Tensor) -> tuple:
        backbone = self.backbone
        x = tokens
        if backbone.pos_embed is not None:
            x = x + _abs_pos(backbone.pos_embed, backbone.pretrain_use_cls_token, x.shape[1:3])
        _, h, w, C = x.shape
        keeps, scores = [], []
        routers = iter(backbone.routers)
        for block in backbone.blocks:
            if block.use_efficient_block:
                score = _router(next(routers), x.reshape(1, h * w, C))
                index, valid, keep = _topk_routing(score, max_number_token)
                x = _block(block, x, _routed_update(block, x, index, valid))
                keeps.append(keep.reshape(1, h, w, 1))
                scores.append(score.reshape(1, h, w, 2))
            elif block.window_size:
                x = _block(block, x, block.drop_path(_window_attention(block, block.norm1(x))))
            else:
                x = _block(block, x, block.drop_path(block.attend(block.norm1(x))))
        # Channels last, as the blocks leave it: a transposed copy would be one more token map
        # at the graph's end (the runtime transposes each decoder tile's crop instead).
        return (x, *keeps, *scores)


def export_input_size(model: MEMatte) -> tuple[int, int]:
    """``(H, W)`` of the tracing input: off the padding grid, with token-grid sides that need
    window padding and differ from the grids of the position embedding and of the global
    rel-pos tables, so that every shape branch of the reference forward takes its general
    (size-independent) side for both axes."""
    backbone: ViT = model.backbone
    patch = backbone.patch_embed.proj.stride[0]
    windows = {block.window_size for block in backbone.blocks if block.window_size}
    # grids that a resize branch compares with: the position embedding's, the rel-pos tables'
    special = {
        (block.attn.rel_pos_h.shape[0] + 1) // 2
        for block in backbone.blocks
        if block.attn.use_rel_pos
    }
    if backbone.pos_embed is not None:
        special.add(int((backbone.pos_embed.shape[1] - backbone.pretrain_use_cls_token) ** 0.5))
    step = model.size_divisibility // patch  # the padded grid moves in these steps
    grids, grid = [], step * -(-_MIN_EXPORT_GRID // step)
    while len(grids) < 2:  # two different sides, each taking the general branches
        if grid not in special and all(grid % window for window in windows):
            grids.append(grid)
        grid += step
    return tuple(g * patch - patch // 2 for g in grids)  # off the padding grid: padded up


def _trace(
    module: nn.Module,
    args: tuple,
    inputs: list[str],
    outputs: list[str],
    axes: dict,
    custom_opsets: dict[str, int] | None = None,
) -> onnx.ModelProto:
    """One graph, traced with the TorchScript exporter, as an ``onnx.ModelProto``;
    ``custom_opsets`` names the operator domains besides ONNX's that it uses."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # Expected: the exporter's deprecation notice and tracer warnings on the shape branches
        # frozen as the export input takes them (see the module docstring).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            custom_opsets=custom_opsets,
        )
    return onnx.load_from_string(buffer.getvalue())


def _routed_outputs(model: MEMatte) -> list[str]:
    blocks = model.backbone.routed_block_indexes
    return [KEEP_OUTPUT.format(i) for i in blocks] + [SCORES_OUTPUT.format(i) for i in blocks]


def _backbone_graphs(model: MEMatte) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The embedding and blocks graphs of a reference (not lean) model."""
    backbone: ViT = model.backbone
    height, width = (
        -(-v // model.size_divisibility) * model.size_divisibility for v in export_input_size(model)
    )
    inputs = torch.rand(
        1,
        backbone.patch_embed.proj.in_channels,
        height,
        width,
        generator=torch.Generator().manual_seed(0),
    )
    routing = _routed_outputs(model)
    with torch.no_grad():
        embed = _trace(
            _EmbedGraph(backbone),
            (inputs,),
            [_INPUT],
            [_TOKENS],
            {_INPUT: {2: "height", 3: "width"}, _TOKENS: {1: "grid_h", 2: "grid_w"}},
        )
        tokens = backbone.patch_embed(inputs)
        blocks = _trace(
            _BlocksGraph(backbone),
            (tokens, torch.tensor(tokens.shape[1] * tokens.shape[2] // 4, dtype=torch.int64)),
            [_TOKENS, MAX_NUMBER_TOKEN_INPUT],
            [_FEATURES, *routing],
            {
                _TOKENS: {1: "grid_h", 2: "grid_w"},
                _FEATURES: {1: "grid_h", 2: "grid_w"},
                **{name: {1: "grid_h", 2: "grid_w"} for name in routing},
            },
            {MS_DOMAIN: MS_OPSET},
        )
    return embed, blocks


def _conv_node(name: str, x: str, weight: Tensor, bias: Tensor, stride: Sequence[int], out: str):
    """A Conv node without padding and its weight and bias initializers."""
    inits = [
        numpy_helper.from_array(weight.detach().float().numpy(), f"{name}.weight"),
        numpy_helper.from_array(bias.detach().float().numpy(), f"{name}.bias"),
    ]
    node = helper.make_node(
        "Conv", [x, f"{name}.weight", f"{name}.bias"], [out], strides=list(stride), name=name
    )
    return node, inits


def _stage_model(name: str, inputs: list, nodes: list, inits: list, output: str) -> onnx.ModelProto:
    """A decoder stage graph: float ``[N, C, h, w]`` maps in, ``output`` out."""
    outputs = [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", None, None, None])]
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _map_input(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", None, None, None])


def _int_input(name: str, length: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.INT64, [length])


def _decoder_graphs(model: MEMatte) -> dict[str, onnx.ModelProto]:
    """One graph per decoder stage (see the module docstring), BatchNorm folded in."""
    decoder = model.decoder
    graphs = {}
    pads = _int_input("pads", 8)
    for k, block in enumerate(decoder.convstream.convs, start=1):
        conv, inits = _conv_node(
            "conv", "padded", *fold_batchnorm(block.conv, block.bn), block.conv.stride, "z"
        )
        nodes = [
            helper.make_node("Pad", ["x", "pads"], ["padded"], mode="constant"),
            conv,
            helper.make_node("Relu", ["z"], ["y"]),
        ]
        graphs[f"convstream{k}"] = _stage_model(
            f"convstream{k}", [_map_input("x"), pads], nodes, inits, "y"
        )
    for i, fusion in enumerate(decoder.fusion_blks):
        block = fusion.conv
        conv, inits = _conv_node(
            "conv", "padded", *fold_batchnorm(block.conv, block.bn), block.conv.stride, "z"
        )
        inits += [
            numpy_helper.from_array(np.array([1.0, 1.0, 2.0, 2.0], np.float32), "scales"),
            numpy_helper.from_array(np.array([2, 3], np.int64), "spatial"),
        ]
        nodes = [
            # x2 bilinear, align_corners=False: half-pixel sampling, clamped at the border
            helper.make_node(
                "Resize",
                ["coarse", "", "scales"],
                ["up"],
                mode="linear",
                coordinate_transformation_mode="half_pixel",
            ),
            helper.make_node("Shape", ["detail"], ["detail_shape"]),
            helper.make_node("Gather", ["detail_shape", "spatial"], ["size"], axis=0),
            helper.make_node("Add", ["starts", "size"], ["ends"]),
            helper.make_node("Slice", ["up", "starts", "ends", "spatial"], ["up_box"]),
            helper.make_node("Concat", ["detail", "up_box"], ["fused"], axis=1),
            helper.make_node("Pad", ["fused", "pads"], ["padded"], mode="constant"),
            conv,
            helper.make_node("Relu", ["z"], ["y"]),
        ]
        inputs = [_map_input("detail"), _map_input("coarse"), _int_input("starts", 2), pads]
        graphs[f"fusion{i}"] = _stage_model(f"fusion{i}", inputs, nodes, inits, "y")
    head = decoder.matting_head.matting_convs
    conv, inits = _conv_node(
        "conv", "padded", *fold_batchnorm(head[0], head[1]), head[0].stride, "z"
    )
    out, out_inits = _conv_node(
        "out", "hidden", head[-1].weight, head[-1].bias, head[-1].stride, "logits"
    )
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["padded"], mode="constant"),
        conv,
        helper.make_node("Relu", ["z"], ["hidden"]),
        out,
        helper.make_node("Sigmoid", ["logits"], ["y"]),
    ]
    graphs["head"] = _stage_model("head", [_map_input("x"), pads], nodes, inits + out_inits, "y")
    return graphs


def build_deployment(
    model: MEMatte, metadata: dict | None = None
) -> tuple[dict, dict[str, onnx.ModelProto]]:
    """The ONNX deployment of ``model`` (in eval mode, weights loaded): its manifest and its
    graphs by file name, each checked by ``onnx.checker``.

    The manifest holds ``metadata`` and what the runtime reads (see ``docs/deployment.md``).
    """
    reference = to_reference(copy.deepcopy(model)).eval()
    backbone: ViT = reference.backbone
    embed, blocks = _backbone_graphs(reference)
    graphs = {EMBED_FILE: embed, BLOCKS_FILE: blocks}
    stages = _decoder_graphs(reference)
    graphs.update({STAGE_FILE.format(name): graph for name, graph in stages.items()})
    for graph in graphs.values():
        graph.producer_name = "MEMatte tools/export_onnx.py"
        onnx.checker.check_model(graph, full_check=True)
    manifest = {
        "format": FORMAT,
        **(metadata or {}),
        "opset": OPSET,
        "embed": EMBED_FILE,
        "blocks": BLOCKS_FILE,
        "decoder": {name: STAGE_FILE.format(name) for name in stages},
        "decoder_spec": DecoderSpec.of(reference.decoder).to_dict(),
        "pixel_mean": reference.pixel_mean.flatten().tolist(),
        "pixel_std": reference.pixel_std.flatten().tolist(),
        "size_divisibility": reference.size_divisibility,
        "patch_size": backbone.patch_embed.proj.stride[0],
        "embed_dim": backbone.embed_dim,
        "embed_strip_patch_rows": EMBED_STRIP_PATCH_ROWS,
        "max_number_token": backbone.max_number_token,
        "routed_blocks": backbone.routed_block_indexes,
    }
    return manifest, graphs


def write_deployment(folder: Path, manifest: dict, graphs: dict[str, onnx.ModelProto]) -> None:
    """Write a deployment into ``folder`` (created), each file atomically, the manifest last: a
    folder without a manifest is an interrupted export."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_FILE).unlink(missing_ok=True)
    for name, graph in graphs.items():
        data = graph.SerializeToString()
        atomic_write(folder / name, lambda file, data=data: file.write(data))
    text = json.dumps(manifest, indent=2) + "\n"
    atomic_write(folder / MANIFEST_FILE, lambda file: file.write(text.encode()))


def export_onnx(
    config_file: str | Path,
    checkpoint: str | Path,
    output: str | Path,
    overrides: Sequence[str] = (),
    *,
    trusted: bool = False,
) -> dict:
    """Build the inference model of ``config_file`` with ``checkpoint``'s weights and write its
    ONNX deployment to the folder ``output``. The manifest records the config file, its
    overrides and the checkpoint too.

    Returns:
        the manifest.

    Raises:
        FileNotFoundError, ValueError: an unreadable checkpoint or config, or weights that do not
            fit the configured model.
    """
    model = build_inference_model(config_file, overrides)
    load_inference_weights(model, checkpoint, trusted=trusted)
    metadata = {
        "config_file": str(config_file),
        "overrides": list(overrides),
        "checkpoint": str(checkpoint),
    }
    manifest, graphs = build_deployment(model.eval(), metadata)
    write_deployment(Path(output), manifest, graphs)
    return manifest
