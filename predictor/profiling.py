"""Measuring the model: seeded random MEMatte / ViTMatte models of the benchmark, FLOPs per part
(the backbone module by module on the real routed input with fvcore, the decoder from its
block-sparse plan: the exact work of its convs), wall time per stage (backbone, decoder; the
PyTorch model or the onnxruntime predictor), ``torch.profiler`` seconds per part of one call and
the GFLOP/s they give, and the difference of a reduced-precision output from float32.

FLOPs follow fvcore's convention: one multiply-add is one flop; matmuls, convs and attention are
counted, norms and interpolation are not.

Used by ``tools/benchmark.py`` and ``tools/train_benchmark.py``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torch.profiler import record_function

from engine.config import LazyConfig, instantiate
from modeling.lean.blocks import DecoderSpec, map_sizes, plan_decoder
from modeling.lean.cone import origin
from modeling.lean.input import NormalizedInput
from modeling.patches import padded_size, patch_tiles
from predictor.weights import load_inference_weights

__all__ = [
    "CONFIGS",
    "MODEL_SIZES",
    "VARIANTS",
    "MethodTimer",
    "StageTimer",
    "backbone_gflops",
    "build_model",
    "compare_with_fp32",
    "count_gflops",
    "decoder_work",
    "gflop_rates",
    "profile_breakdown",
    "profile_labels",
    "resolve_cap",
    "uint8_inputs",
]

REPO_ROOT = Path(__file__).resolve().parents[1]

# (model size, variant) -> config; the ViTMatte configs are the MEMatte ones with routing off.
CONFIGS = {
    ("S", "mematte"): "configs/MEMatte_S_topk0.25_win_global_long.py",
    ("B", "mematte"): "configs/MEMatte_B_topk0.25_win_global_long.py",
    ("S", "vitmatte"): "configs/ViTMatte_S_Com.py",
    ("B", "vitmatte"): "configs/ViTMatte_B_Com.py",
}


MODEL_SIZES = ("S", "B")


VARIANTS = ("mematte", "vitmatte")


def build_model(
    model_size: str,
    variant: str,
    overrides: list[str],
    seed: int,
    weights: str | Path | None = None,
) -> nn.Module:
    """MEMatte (or ViTMatte: its config, routing off) in eval mode with seeded random weights, or
    with the ``weights`` of a checkpoint (e.g. the official side's, to compare the two)."""
    cfg = LazyConfig.load(str(REPO_ROOT / CONFIGS[model_size, variant]))
    LazyConfig.apply_overrides(cfg, ["model.teacher_backbone=None", *overrides])
    torch.manual_seed(seed)
    model = instantiate(cfg.model)
    if weights is not None:
        load_inference_weights(model, weights)
    return model.eval()


def _sdpa_flop(inputs: list, outputs: list) -> int:
    """fvcore handle: ``q @ k^T`` and ``attn @ v`` multiply-adds of one SDPA call."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(inputs[i]) for i in range(3))
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def _conv_flop(inputs: list, outputs: list) -> int:
    """fvcore handle for ``aten::mkldnn_convolution`` (the lean decoder calls oneDNN directly):
    output elements times the weight's input channels and kernel taps."""
    from fvcore.nn.jit_handles import get_shape

    weight = get_shape(inputs[1])
    return math.prod(get_shape(outputs[0])) * math.prod(weight[1:])


def _no_flop(inputs: list, outputs: list) -> int:
    """fvcore handle for an op that is not counted (interpolation)."""
    return 0


def _analysis(module: nn.Module, inputs: tuple[Tensor, ...]):
    """fvcore's FLOP analysis of one call, with the project's conventions (module docstring)."""
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(module, inputs)
    analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flop)
    analysis.set_op_handle("aten::mkldnn_convolution", _conv_flop)
    analysis.set_op_handle("aten::upsample_bilinear2d", _no_flop)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis


def _gflops(module: nn.Module, inputs: tuple[Tensor, ...]) -> float:
    return _analysis(module, inputs).total() / 1e9


# Submodules of a block -> its profile part (see profile_labels); "{kind}": window or global.
_BLOCK_PARTS = {
    "attn": "backbone.{kind}_attention",
    "mlp": "backbone.mlp",
    "efficient_block": "backbone.ltrm",
    "residual": "backbone.residual_conv",
}


def backbone_gflops(
    backbone: nn.Module, images: Tensor | NormalizedInput
) -> tuple[dict[str, float], Tensor]:
    """fvcore GFLOPs of the backbone on ``images`` per profile part (``backbone.mlp``, ...;
    ``backbone.other``: what the blocks do outside those parts, the norms' matmul-free work
    being zero), and its features.

    The JIT tracer keeps every intermediate of a trace alive, so a whole-backbone trace needs a
    multiple of the forward's memory on large inputs. Instead the backbone runs its own forward
    and each call of its patch embedding, routers and blocks is traced on its real input; the
    traced call's output is what the forward goes on with, so every module runs once. The glue
    between them (pos-embed interpolation, reshapes) is not counted.
    """
    parts: dict[str, float] = defaultdict(float)
    labels = {backbone.patch_embed.proj: "backbone.patch_embed"}
    labels.update((router, "backbone.router") for router in backbone.routers)

    def count(module: nn.Module, args: tuple) -> None:
        analysis = _analysis(module, args)
        total = analysis.total() / 1e9
        if module in labels:
            parts[labels[module]] += total
            return
        kind = "window" if module.window_size else "global"
        by_module = analysis.by_module()
        for name, part in _BLOCK_PARTS.items():
            flops = by_module.get(name, 0) / 1e9
            parts[part.format(kind=kind)] += flops
            total -= flops
        parts["backbone.other"] += total

    def traced_call(module: nn.Module):
        def call(*args):
            captured = []
            del module.forward  # the tracer calls the module's own forward
            handle = module.register_forward_hook(lambda m, a, out: captured.append(out))
            try:
                count(module, args)
            finally:
                handle.remove()
                module.forward = call
            return captured[0]

        return call

    modules = [backbone.patch_embed.proj, *backbone.routers, *backbone.blocks]
    for module in modules:
        module.forward = traced_call(module)
    try:
        features = backbone(images).features
    finally:
        for module in modules:
            del module.forward
    return dict(parts), features


def decoder_work(model: nn.Module, trimap: Tensor, clamp_known: bool) -> dict[str, dict[str, int]]:
    """Pixels, boxes and conv multiply-adds of every stage of the lean decoder over the patch
    tiles of one input, from its block-sparse plans (the convs it runs, exactly: every pixel of a
    box is computed once, by one conv per stage).

    Args:
        model: a lean MEMatte.
        trimap: ``[B, 1, H, W]`` (levels or float; the unknown pixels are neither 0 nor full).
        clamp_known: the predictor's call (only what the clamp does not overwrite) or the raw
            forward (every output pixel).

    Returns:
        ``{"convstream1": {"pixels": ..., "boxes": ..., "macs": ...}, ...}``.
    """
    spec = DecoderSpec.of(model.decoder)
    H, W = trimap.shape[-2:]
    stride = model.backbone.patch_embed.proj.stride[0]
    work: dict[str, dict[str, int]] = {}
    full = 255 if trimap.dtype == torch.uint8 else 1.0
    for tile in patch_tiles(padded_size((H, W), model.size_divisibility), (H, W)):
        (top, bottom), (left, right) = tile.out
        region = trimap[..., top:bottom, left:right]
        if clamp_known:
            wanted = ((region != 0) & (region != full)).flatten(0, 1).any(dim=0)
        else:
            wanted = torch.ones(region.shape[-2:], dtype=torch.bool)
        y0, y1, x0, x1 = tile.crop
        sizes = map_sizes(
            (y1 - y0, x1 - x0), ((y1 - y0) // stride, (x1 - x0) // stride), len(spec.fusions)
        )
        plan = plan_decoder(spec, sizes, wanted.numpy(), origin(tile.region))
        for stage, counts in plan.work(spec).items():
            total = work.setdefault(stage, dict.fromkeys(counts, 0))
            for key, value in counts.items():
                total[key] += value
    return work


def count_gflops(
    model: nn.Module, batch: dict[str, Tensor], clamp_known: bool = False
) -> dict[str, float | dict]:
    """GFLOPs of one forward: the backbone module by module on the real input
    (:func:`backbone_gflops`) and the decoder's convs from its plans (:func:`decoder_work`).

    Returns:
        ``total``, ``backbone``, ``decoder`` and ``parts`` (GFLOPs per profile part: the
        backbone's, and ``decoder.convstream1`` ... ``decoder.head``).
    """
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about data-dependent routing
        # crops on demand, as the inference forward
        source = NormalizedInput(
            batch["image"],
            batch["trimap"],
            model.pixel_mean,
            model.pixel_std,
            padded_size(tuple(batch["image"].shape[-2:]), model.size_divisibility),
        )
        parts, _ = backbone_gflops(model.backbone, source)
    backbone = sum(parts.values())
    for stage, work in decoder_work(model, batch["trimap"], clamp_known).items():
        parts[f"decoder.{stage}"] = work["macs"] / 1e9
    decoder = sum(v for k, v in parts.items() if k.startswith("decoder."))
    return {"total": backbone + decoder, "backbone": backbone, "decoder": decoder, "parts": parts}


def gflop_rates(gflops: dict[str, float], seconds: dict[str, float]) -> dict[str, float]:
    """GFLOP/s per profile part: its GFLOPs (:func:`count_gflops`'s ``parts``) over its seconds
    (:func:`profile_breakdown`), for the parts that have both."""
    return {
        part: flops / seconds[part] for part, flops in gflops.items() if seconds.get(part) and flops
    }


def compare_with_fp32(model: nn.Module, batch: dict[str, Tensor], out: dict) -> dict:
    """Alpha difference and routing flips of a reduced-precision output against float32."""
    with torch.inference_mode():
        reference = model(batch, patch_decoder=True)
    diff = (out["phas"] - reference["phas"]).abs()
    return {
        "alpha_max_abs_diff": diff.max().item(),
        "alpha_mean_abs_diff": diff.mean().item(),
        "flipped_decisions": [
            int((a != b).sum()) for a, b in zip(out["keep"], reference["keep"], strict=True)
        ],
    }


class MethodTimer:
    """Accumulates the wall time spent in methods of an object (e.g. the onnxruntime
    predictor's ``_backbone`` and ``_decode``), per stage name: ``{stage: method name}``."""

    def __init__(self, target: object, methods: dict[str, str]) -> None:
        self.seconds = dict.fromkeys(methods, 0.0)
        for stage, name in methods.items():
            setattr(target, name, self._timed(stage, getattr(target, name)))

    def _timed(self, stage: str, method: Callable) -> Callable:
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start

        return call

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)


class StageTimer:
    """Accumulates the wall time spent inside the backbone and the decoder (forward hooks)."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.device = device
        self.seconds = {"backbone": 0.0, "decoder": 0.0}
        self._start: dict[str, float] = {}
        self.handles = []
        for name in self.seconds:
            module = getattr(model, name)
            self.handles.append(module.register_forward_pre_hook(self._enter(name)))
            self.handles.append(module.register_forward_hook(self._leave(name)))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _enter(self, name: str):
        def hook(module, args):
            self._sync()
            self._start[name] = time.perf_counter()

        return hook

    def _leave(self, name: str):
        def hook(module, args, out):
            self._sync()
            self.seconds[name] += time.perf_counter() - self._start[name]

        return hook

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)


def uint8_inputs(batch: dict[str, Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """The generated inputs as a user has them: ``[H, W, 3]`` RGB and ``[H, W]`` trimap levels."""
    image = (batch["image"][0].permute(1, 2, 0) * 255).round_().to(torch.uint8).numpy()
    trimap = (batch["trimap"][0, 0] * 255).round_().to(torch.uint8).numpy()
    return image, trimap


def profile_labels(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The modules whose calls the profile breakdown names: ``(module, label)``."""
    backbone = model.backbone
    labelled = [(backbone.patch_embed, "backbone.patch_embed")]
    labelled += [(router, "backbone.router") for router in backbone.routers]
    for blk in backbone.blocks:
        kind = "window" if blk.window_size else "global"
        labelled += [(blk.attn, f"backbone.{kind}_attention"), (blk.mlp, "backbone.mlp")]
        if blk.use_efficient_block:
            labelled.append((blk.efficient_block, "backbone.ltrm"))
        if blk.use_residual_block:
            labelled.append((blk.residual, "backbone.residual_conv"))
    return [*labelled, (model.decoder, "decoder")]


def profile_breakdown(
    model: nn.Module, call: Callable[[], object], image: np.ndarray, alpha: np.ndarray
) -> dict[str, float]:
    """Seconds per part of one call, from ``torch.profiler`` ranges opened by module hooks (and
    the lean decoder's own stage labels), plus the PNG decoding of the input image and the PNG
    encoding of the alpha that ``inference.py`` adds (it overlaps them with compute)."""
    ranges: list = []

    def enter(label: str):
        def hook(module, args):
            ranges.append(record_function(label))
            ranges[-1].__enter__()

        return hook

    def leave(module, args, out):
        ranges.pop().__exit__(None, None, None)

    handles = []
    for module, label in profile_labels(model):
        handles += [
            module.register_forward_pre_hook(enter(label)),
            module.register_forward_hook(leave),
        ]
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            start = time.perf_counter()
            call()
            total = time.perf_counter() - start
    finally:
        for handle in handles:
            handle.remove()
    seconds = {
        event.key: event.cpu_time_total / 1e6
        for event in profile.key_averages()
        if event.key.startswith(("backbone.", "decoder"))
    }
    parts = [key for key in seconds if key.startswith("backbone.")] + ["decoder"]
    seconds["other"] = total - sum(seconds.get(key, 0.0) for key in parts)
    seconds["total"] = total
    ok, encoded = cv2.imencode(".png", image[:, :, ::-1])
    start = time.perf_counter()
    cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    seconds["io.decode_image_png"] = time.perf_counter() - start
    start = time.perf_counter()
    cv2.imencode(".png", alpha)
    seconds["io.encode_alpha_png"] = time.perf_counter() - start
    return seconds


def resolve_cap(spec: dict, tokens: int, auto: Callable[[], int] | None) -> int | None:
    """The token cap of a measurement: none for ViTMatte; ``auto()`` for ``auto``; else the
    absolute ``max_number_token`` or ``cap_ratio`` of the tokens, at most ``cap_limit`` (e.g.
    25 % of the tokens at 2048x2048 and the official 18500 at 4872x6017 in one run).

    Raises:
        ValueError: ``auto`` where there is no rule for it (onnxruntime).
    """
    if spec["variant"] != "mematte":
        return None
    if spec["max_number_token"] == "auto":
        if auto is None:
            raise ValueError("the 'auto' cap models the PyTorch forward; give an integer cap")
        return auto()
    if spec["max_number_token"] is not None:
        return int(spec["max_number_token"])
    cap = int(spec["cap_ratio"] * tokens)
    return cap if spec.get("cap_limit") is None else min(cap, spec["cap_limit"])
