"""Measuring the model: seeded random MEMatte / ViTMatte models of the benchmark, fvcore FLOPs per
part (the backbone module by module on the real routed input, the decoder per distinct tile),
wall time per stage (backbone, decoder), ``torch.profiler`` seconds per part of one call, and the
difference of a reduced-precision output from float32.

Used by ``tools/benchmark.py`` and ``tools/train_benchmark.py``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torch.profiler import record_function

from engine.config import LazyConfig, instantiate
from modeling.lean.input import NormalizedInput
from modeling.meta_arch.mematte import padded_size

__all__ = [
    "CONFIGS",
    "MODEL_SIZES",
    "VARIANTS",
    "StageTimer",
    "backbone_gflops",
    "build_model",
    "compare_with_fp32",
    "count_gflops",
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


def build_model(model_size: str, variant: str, overrides: list[str], seed: int) -> nn.Module:
    """MEMatte (or ViTMatte: its config, routing off) in eval mode with seeded random weights."""
    cfg = LazyConfig.load(str(REPO_ROOT / CONFIGS[model_size, variant]))
    LazyConfig.apply_overrides(cfg, ["model.teacher_backbone=None", *overrides])
    torch.manual_seed(seed)
    return instantiate(cfg.model).eval()


def _sdpa_flop(inputs: list, outputs: list) -> int:
    """fvcore handle: ``q @ k^T`` and ``attn @ v`` multiply-adds of one SDPA call."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(inputs[i]) for i in range(3))
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


class _Tile(nn.Module):
    """Decoder wrapper for one tile shape and output region (for tracing)."""

    def __init__(self, decoder: nn.Module, region: tuple) -> None:
        super().__init__()
        self.decoder = decoder
        self.region = region

    def forward(self, features: Tensor, images: Tensor) -> Tensor:
        return self.decoder(features, images, region=self.region)["phas"]


def _gflops(module: nn.Module, inputs: tuple[Tensor, ...]) -> float:
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(module, inputs)
    analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flop)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis.total() / 1e9


def backbone_gflops(backbone: nn.Module, images: Tensor | NormalizedInput) -> tuple[float, Tensor]:
    """fvcore GFLOPs of the backbone on ``images``, and its features.

    The JIT tracer keeps every intermediate of a trace alive, so a whole-backbone trace needs a
    multiple of the forward's memory on large inputs. Instead the backbone runs its own forward
    and each call of its patch embedding, routers and blocks is traced on its real input; the
    traced call's output is what the forward goes on with, so every module runs once. The glue
    between them (pos-embed interpolation, reshapes) is not counted.
    """
    total = 0.0

    def traced_call(module: nn.Module):
        def call(*args):
            nonlocal total
            captured = []
            del module.forward  # the tracer calls the module's own forward
            handle = module.register_forward_hook(lambda m, a, out: captured.append(out))
            try:
                total += _gflops(module, args)
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
    return total, features


def count_gflops(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, float]:
    """fvcore GFLOPs of one forward: the backbone module by module on the real input
    (:func:`backbone_gflops`), the decoder once per distinct tile (shape, region), weighted by
    how often that tile occurs."""
    tiles: dict[tuple, int] = {}

    def record(module, args, kwargs):
        key = (tuple(args[0].shape), tuple(args[1].shape), kwargs.get("region"))
        tiles[key] = tiles.get(key, 0) + 1

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
        backbone, features = backbone_gflops(model.backbone, source)
        handle = model.decoder.register_forward_pre_hook(record, with_kwargs=True)
        try:
            model.decode_patches(features, source, out_hw=source.hw)
        finally:
            handle.remove()
        decoder = 0.0
        for (f_shape, i_shape, region), count in tiles.items():
            f = features.new_zeros(f_shape)
            im = features.new_zeros(i_shape)
            decoder += count * _gflops(_Tile(model.decoder, region), (f, im))
    return {"total": backbone + decoder, "backbone": backbone, "decoder": decoder}


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
    absolute ``max_number_token`` or ``cap_ratio`` of the tokens.

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
    return int(spec["cap_ratio"] * tokens)
