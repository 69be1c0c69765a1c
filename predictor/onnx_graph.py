"""The ONNX graph of a MEMatte (or ViTMatte) inference model, for onnxruntime
(:mod:`predictor.onnx_predictor`); ``tools/export_onnx.py`` is its command line.

The graph is the whole inference forward for one image (batch 1), with dynamic height and width:

- inputs ``image`` ``[1, 3, H, W]`` float32 RGB in [0, 1], ``trimap`` ``[1, 1, H, W]`` float32
  (file value / 255, as the official script feeds it) and ``max_number_token`` (int64 scalar: the
  cap on tokens in one global attention; a cap >= the token count means no cap);
- normalisation and the official padding rule (:func:`modeling.meta_arch.mematte.padded_size`);
- the backbone, with inference routing as the official code: argmax of each router, then the
  ``max_number_token`` tokens of largest margin ``s0 - s1``. The routed tokens are taken with
  ``TopK`` on the margin, attend among themselves (in ``QUERY_CHUNKS`` query chunks) and are
  written back with ``ScatterElements``; every other token gets the LTRM. Window attention and
  the MLPs run in chunks too (``WINDOW_CHUNKS``, ``ROW_CHUNKS``) to bound the activations;
- the official patch decoder: an ONNX ``Loop`` over the 512 px tiles, each decoded with its 64 px
  context (:meth:`MEMatte.decode_patches`), so decoder memory stays that of one tile;
- outputs ``phas`` ``[1, 1, H, W]`` (alpha in [0, 1], known regions not forced), and per routed
  block ``i`` ``keep_block{i}`` ``[1, h, w, 1]`` (1 = global attention) and
  ``router_scores_block{i}`` ``[1, h, w, 2]`` (log-probabilities).

The parts are traced with the TorchScript exporter (opset ``OPSET``) and joined with the ``onnx``
helpers; ``onnx.checker`` validates the result. The file's metadata records the config, its
overrides, the checkpoint, the default cap and the routed blocks (``predictor/onnx_predictor.py``
reads them). Tracing freezes the Python branches on shapes of the reference forward (window
padding, position-embedding resizing) as the export input takes them; that input
(:func:`export_input_size`) takes the general branch of each, which is exact at every size, and
``tests/test_onnx.py`` checks other sizes against PyTorch.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from onnx import helper
from torch import Tensor, nn
from torch.onnx.operators import shape_as_tensor

from modeling.backbone.attention import (
    Attention,
    window_partition,
    window_unpartition,
)
from modeling.backbone.vit import Block, ViT
from modeling.lean.mode import to_reference
from modeling.meta_arch.mematte import DECODER_OVERLAP, DECODER_PATCH, MEMatte
from predictor.onnx_predictor import (
    IMAGE_INPUT,
    KEEP_OUTPUT,
    MAX_NUMBER_TOKEN_INPUT,
    PHAS_OUTPUT,
    SCORES_OUTPUT,
    TRIMAP_INPUT,
)
from predictor.weights import build_inference_model, load_inference_weights
from utils.file_io import atomic_write

__all__ = [
    "OPSET",
    "QUERY_CHUNKS",
    "ROW_CHUNKS",
    "WINDOW_CHUNKS",
    "build_graph",
    "export_input_size",
    "export_onnx",
]

logger = logging.getLogger(__name__)

OPSET = 17
# Routed tokens attend in this many query chunks: at most heads x ceil(k / chunks) x k attention
# scores exist at once for k routed tokens (cap 18500, ViT-S: 0.5 GB instead of 8.2 GB).
QUERY_CHUNKS = 16
# Window attention runs over this many chunks of windows, the MLPs over this many chunks of token
# rows (at 4872 x 6017 a whole-map MLP hidden state alone takes 0.7 GB).
WINDOW_CHUNKS = 8
ROW_CHUNKS = 8
# Values passed between the traced parts (backbone -> tile loop -> assembly).
_FEATURES, _IMAGES, _NUM_TILES, _NUM_COLS, _TILES = (
    "tile_features",
    "tile_images",
    "num_tiles",
    "num_tile_cols",
    "tiles",
)
_TILE_INDEX, _TILE = "tile_index", "tile"
# The smallest token-grid side the export input may have (it must exceed a window or two).
_MIN_EXPORT_GRID = 30


def _padded_hw(height: Tensor, width: Tensor, step: int) -> tuple[Tensor, Tensor]:
    """The official padding rule (:func:`modeling.meta_arch.mematte.padded_size`) on traced
    sizes: when either side is off the ``step`` grid, both grow to the next multiple strictly
    above them."""
    grow = ((height % step) + (width % step) > 0).to(height.dtype)
    return height + grow * (step - height % step), width + grow * (step - width % step)


def _ceil_div(value: Tensor, step: int) -> Tensor:
    return (value + step - 1) // step


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


def _in_chunks(fn: Callable[[Tensor], Tensor], x: Tensor, dim: int, chunks: int) -> Tensor:
    """``fn`` over ``chunks`` equal slices of ``x`` along ``dim``, concatenated: only one
    slice's intermediates exist at a time. ``x`` is zero-padded along ``dim`` to a multiple of
    ``chunks`` (``fn``'s outputs for the padding are dropped), so that no slice is empty
    whatever the traced size."""
    size = x.shape[dim]
    filler = x.new_zeros((*x.shape[:dim], (-size) % chunks, *x.shape[dim + 1 :]))
    padded = torch.cat([x, filler], dim)
    step = padded.shape[dim] // chunks
    lead = (slice(None),) * dim
    parts = [fn(padded[(*lead, slice(i * step, (i + 1) * step))]) for i in range(chunks)]
    return torch.cat(parts, dim)[(*lead, slice(0, size))]


def _global_attention(attn: Attention, x: Tensor) -> Tensor:
    """``attn`` (no rel-pos) over ``x [1, k, C]``, queries in ``QUERY_CHUNKS`` chunks."""
    _, k, C = x.shape
    heads = attn.num_heads
    # [1, k, 3C] -> [1, k, 3, heads, d] -> 3 x [1, heads, k, d]
    q, key, value = attn.qkv(x).reshape(1, k, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    out = _in_chunks(
        lambda queries: F.scaled_dot_product_attention(queries, key, value),
        q,
        dim=2,
        chunks=QUERY_CHUNKS,
    )
    return attn.proj(out.transpose(1, 2).reshape(1, k, C))  # [1, heads, k, d] -> [1, k, C]


def _window_attention(block: Block, x: Tensor) -> Tensor:
    """:meth:`Block.attend` of a window block, windows in ``WINDOW_CHUNKS`` chunks."""
    H, W = x.shape[1], x.shape[2]
    windows, pad_hw = window_partition(x, block.window_size)
    out = _in_chunks(block.attn, windows, dim=0, chunks=WINDOW_CHUNKS)
    return window_unpartition(out, block.window_size, pad_hw, (H, W))


def _routed_update(block: Block, x: Tensor, index: Tensor, valid: Tensor) -> Tensor:
    """The attention branch of a routed block in inference (:meth:`Block.forward_sparse`), with
    the routed tokens given by ``index [1, k]`` (``valid`` ``[1, k, 1]`` marks the real ones)."""
    _, H, W, C = x.shape
    update = block.efficient_block(x).reshape(1, H * W, C)
    gather = index.unsqueeze(-1).expand(-1, -1, C)  # [1, k, C]
    routed = x.reshape(1, H * W, C).gather(1, gather)
    attended = block.drop_path(_global_attention(block.attn, block.norm1(routed)))
    attended = torch.where(valid > 0, attended, update.gather(1, gather))
    return update.scatter(1, gather, attended).reshape(1, H, W, C)


def _block(block: Block, x: Tensor, attention: Tensor) -> Tensor:
    """:meth:`Block.forward` given its attention branch ``[1, H, W, C]``; the MLP runs over
    ``ROW_CHUNKS`` chunks of token rows."""
    x = x + attention
    x = x + _in_chunks(
        lambda rows: block.drop_path(block.mlp(block.norm2(rows))), x, dim=1, chunks=ROW_CHUNKS
    )
    if block.use_residual_block:
        # channels-last -> channels-first for the conv block, and back
        x = block.residual(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return x


class _BackboneGraph(nn.Module):
    """Normalisation, padding and the routed backbone of one image; the inputs of the tile loop."""

    def __init__(self, model: MEMatte) -> None:
        super().__init__()
        self.model = model

    def normalized(self, image: Tensor, trimap: Tensor, height: Tensor, width: Tensor) -> Tensor:
        """Normalised RGB + trimap ``[1, 4, height, width]``, zero-padded (after normalisation)."""
        model = self.model
        images = torch.cat([(image - model.pixel_mean) / model.pixel_std, trimap], dim=1)
        return F.pad(images, (0, width - image.shape[3], 0, height - image.shape[2]))

    def forward(self, image: Tensor, trimap: Tensor, max_number_token: Tensor) -> tuple:
        backbone = self.model.backbone
        _, _, height, width = shape_as_tensor(image)
        padded_h, padded_w = _padded_hw(height, width, self.model.size_divisibility)
        x = backbone.embed(self.normalized(image, trimap, padded_h, padded_w))
        _, h, w, C = x.shape
        keeps, scores = [], []
        routers = iter(backbone.routers)
        for block in backbone.blocks:
            if block.use_efficient_block:
                score = next(routers)(x.reshape(1, h * w, C))
                index, valid, keep = _topk_routing(score, max_number_token)
                x = _block(block, x, _routed_update(block, x, index, valid))
                keeps.append(keep.reshape(1, h, w, 1))
                scores.append(score.reshape(1, h, w, 2))
            elif block.window_size:
                x = _block(block, x, block.drop_path(_window_attention(block, block.norm1(x))))
            else:
                x = _block(block, x, block.drop_path(block.attend(block.norm1(x))))
        # The decoder tiles read zeros beyond the padded input (decode_patches' zero_padded_crop).
        # The input is normalised again here rather than kept: one image-sized tensor less
        # during the backbone.
        stride = backbone.patch_embed.proj.stride[0]
        tile_h = _ceil_div(padded_h, DECODER_PATCH) * DECODER_PATCH
        tile_w = _ceil_div(padded_w, DECODER_PATCH) * DECODER_PATCH
        features = F.pad(
            x.permute(0, 3, 1, 2),  # [1, h, w, C] -> [1, C, h, w]
            (0, (tile_w - padded_w) // stride, 0, (tile_h - padded_h) // stride),
        )
        images = self.normalized(image, trimap, tile_h, tile_w)
        num_cols = _ceil_div(width, DECODER_PATCH)
        num_tiles = _ceil_div(height, DECODER_PATCH) * num_cols
        return (features, images, num_tiles, num_cols, *keeps, *scores)


def _context_span(start: Tensor, size: Tensor) -> tuple[Tensor, Tensor]:
    """``mematte._context_span`` on traced values: the margin is dropped entirely on a side
    where it would leave the (tile-padded) input."""
    low = torch.where(start >= DECODER_OVERLAP, start - DECODER_OVERLAP, start)
    high = start + DECODER_PATCH + DECODER_OVERLAP
    return low, torch.where(high <= size, high, start + DECODER_PATCH)


class _TileGraph(nn.Module):
    """One tile of :meth:`MEMatte.decode_patches`: its ``DECODER_PATCH`` square of alpha."""

    def __init__(self, model: MEMatte) -> None:
        super().__init__()
        self.decoder = model.decoder
        self.stride = model.backbone.patch_embed.proj.stride[0]

    def forward(
        self, tile_index: Tensor, num_cols: Tensor, features: Tensor, images: Tensor
    ) -> Tensor:
        top = tile_index // num_cols * DECODER_PATCH
        left = tile_index % num_cols * DECODER_PATCH
        _, _, height, width = shape_as_tensor(images)
        y0, y1 = _context_span(top, height)
        x0, x1 = _context_span(left, width)
        s = self.stride
        phas = self.decoder(
            features[:, :, y0 // s : y1 // s, x0 // s : x1 // s], images[:, :, y0:y1, x0:x1]
        )["phas"]
        rows, cols = top - y0, left - x0
        return phas[:, :, rows : rows + DECODER_PATCH, cols : cols + DECODER_PATCH]


class _AssemblyGraph(nn.Module):
    """The loop's tiles ``[T, 1, 1, P, P]`` (row-major) -> alpha ``[1, 1, H, W]``."""

    def forward(self, tiles: Tensor, image: Tensor) -> Tensor:
        height, width = image.shape[2], image.shape[3]
        num_cols = _ceil_div(width, DECODER_PATCH)
        P = DECODER_PATCH
        # [T, 1, 1, P, P] -> [rows, cols, P, P] -> [rows, P, cols, P] -> [rows * P, cols * P]
        grid = tiles.reshape(-1, num_cols, P, P).permute(0, 2, 1, 3)
        alpha = grid.reshape(grid.shape[0] * P, num_cols * P)
        return alpha[:height, :width].reshape(1, 1, height, width)


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


def _trace(module: nn.Module, args: tuple, inputs: list[str], outputs: list[str], axes: dict):
    """One part, traced with the TorchScript exporter, as an ``onnx.ModelProto``."""
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
        )
    return onnx.load_from_string(buffer.getvalue())


def _renamed(graph: onnx.GraphProto, prefix: str, keep: Sequence[str], rename: dict[str, str]):
    """A copy of ``graph`` whose value and initializer names get ``prefix``, except the names in
    ``keep`` and those in ``rename`` (mapped as given): a part's internal names cannot collide
    with another part's once they share a model."""
    graph = copy.deepcopy(graph)

    def new(name: str) -> str:
        if not name or name in keep:
            return name
        return rename.get(name, prefix + name)

    for node in graph.node:
        node.input[:] = [new(n) for n in node.input]
        node.output[:] = [new(n) for n in node.output]
        node.name = prefix + node.name
    for value in (*graph.input, *graph.output, *graph.initializer, *graph.value_info):
        value.name = new(value.name)
    return graph


def _tile_loop(tile: onnx.ModelProto) -> onnx.NodeProto:
    """The ``Loop`` node running the tile graph once per tile; its body reads the backbone's
    padded features and input (and the tile columns) from the outer graph."""
    outer = (_NUM_COLS, _FEATURES, _IMAGES)
    body = _renamed(tile.graph, "tile/", keep=outer, rename={_TILE_INDEX: "tile/iteration"})
    body.node.append(helper.make_node("Identity", ["tile/cond_in"], ["tile/cond_out"]))
    body.ClearField("input")
    body.input.extend(
        [
            helper.make_tensor_value_info("tile/iteration", onnx.TensorProto.INT64, []),
            helper.make_tensor_value_info("tile/cond_in", onnx.TensorProto.BOOL, []),
        ]
    )
    (tile_output,) = body.output
    body.ClearField("output")
    body.output.extend(
        [helper.make_tensor_value_info("tile/cond_out", onnx.TensorProto.BOOL, []), tile_output]
    )
    body.name = "decoder_tile"
    return helper.make_node("Loop", [_NUM_TILES, ""], [_TILES], name="tile_loop", body=body)


def _routed_outputs(model: MEMatte) -> list[str]:
    blocks = model.backbone.routed_block_indexes
    return [KEEP_OUTPUT.format(i) for i in blocks] + [SCORES_OUTPUT.format(i) for i in blocks]


def _trace_parts(model: MEMatte) -> tuple[onnx.ModelProto, onnx.ModelProto, onnx.ModelProto]:
    """The backbone, decoder-tile and assembly graphs of a reference (not lean) model."""
    height, width = export_input_size(model)
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    trimap = torch.full((1, 1, height, width), 0.5)
    routing = _routed_outputs(model)
    spatial = {2: "height", 3: "width"}
    with torch.no_grad():
        args = (image, trimap, torch.tensor(DECODER_PATCH, dtype=torch.int64))
        backbone = _trace(
            _BackboneGraph(model),
            args,
            [IMAGE_INPUT, TRIMAP_INPUT, MAX_NUMBER_TOKEN_INPUT],
            [_FEATURES, _IMAGES, _NUM_TILES, _NUM_COLS, *routing],
            {
                IMAGE_INPUT: spatial,
                TRIMAP_INPUT: spatial,
                _FEATURES: spatial,
                _IMAGES: spatial,
                **{name: {1: "grid_h", 2: "grid_w"} for name in routing},
            },
        )
        features, images, num_tiles, num_cols, *_ = _BackboneGraph(model)(*args)
        tile = _trace(
            _TileGraph(model),
            (torch.tensor(0), num_cols, features, images),
            [_TILE_INDEX, _NUM_COLS, _FEATURES, _IMAGES],
            [_TILE],
            {_FEATURES: spatial, _IMAGES: spatial},
        )
        assembly = _trace(
            _AssemblyGraph(),
            (torch.zeros(int(num_tiles), 1, 1, DECODER_PATCH, DECODER_PATCH), image),
            [_TILES, IMAGE_INPUT],
            [PHAS_OUTPUT],
            {_TILES: {0: "num_tiles"}, IMAGE_INPUT: spatial, PHAS_OUTPUT: spatial},
        )
    return backbone, tile, assembly


def _join(
    backbone: onnx.ModelProto, tile: onnx.ModelProto, assembly: onnx.ModelProto, routing: list[str]
) -> onnx.ModelProto:
    """One model: the backbone graph, the tile loop, the assembly; outputs alpha and routing."""
    graph = backbone.graph
    graph.node.append(_tile_loop(tile))
    interface = (_TILES, IMAGE_INPUT, PHAS_OUTPUT)
    assemble = _renamed(assembly.graph, "assemble/", keep=interface, rename={})
    graph.node.extend(assemble.node)
    graph.initializer.extend(assemble.initializer)
    routing_outputs = [output for output in graph.output if output.name in routing]
    graph.ClearField("output")
    graph.output.extend([*assemble.output, *routing_outputs])
    graph.name = "mematte"
    return backbone


def build_graph(model: MEMatte, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """The ONNX model of ``model`` (in eval mode, weights loaded), checked by ``onnx.checker``.

    Its metadata holds ``metadata`` and what the runtime reads: the model's cap
    (``max_number_token``, JSON, the runtime's default) and ``routed_blocks`` (JSON list).
    """
    metadata = {
        **(metadata or {}),
        "max_number_token": json.dumps(model.backbone.max_number_token),
        "routed_blocks": json.dumps(model.backbone.routed_block_indexes),
    }
    reference = to_reference(copy.deepcopy(model)).eval()
    joined = _join(*_trace_parts(reference), routing=_routed_outputs(reference))
    helper.set_model_props(joined, metadata)
    joined.producer_name = "MEMatte tools/export_onnx.py"
    onnx.checker.check_model(joined, full_check=True)
    return joined


def export_onnx(
    config_file: str | Path,
    checkpoint: str | Path,
    output: str | Path,
    overrides: Sequence[str] = (),
    *,
    trusted: bool = False,
) -> onnx.ModelProto:
    """Build the inference model of ``config_file`` with ``checkpoint``'s weights and write its
    ONNX graph to ``output`` (atomically). The metadata records the config file, its overrides,
    the checkpoint, the config's cap (``max_number_token``, the runtime's default) and the
    routed blocks.

    Raises:
        FileNotFoundError, ValueError: an unreadable checkpoint or config, or weights that do not
            fit the configured model.
    """
    model = build_inference_model(config_file, overrides)
    load_inference_weights(model, checkpoint, trusted=trusted)
    metadata = {
        "config_file": str(config_file),
        "overrides": json.dumps(list(overrides)),
        "checkpoint": str(checkpoint),
    }
    graph = build_graph(model.eval(), metadata)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, lambda file: file.write(graph.SerializeToString()))
    return graph
