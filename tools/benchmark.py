"""Speed, memory and FLOPs of MEMatte inference (and of the ViTMatte variant) on large images.

Every measurement runs in a fresh subprocess (``benchmark.py --worker SPEC``), so peak memory is
that of one configuration only. A worker builds the model with seeded random weights, generates a
seeded image and trimap (a subject with a smooth, wavy edge and an unknown band along it holding
``--unknown`` of the pixels: 10 % by default, as real trimaps have), runs ``--warmup`` untimed and
``--repeats`` timed calls (patch decoder on, batch 1), and reports:

- wall time: the median over the timed runs, split into backbone and decoder (forward hooks).
  ``--modes forward`` times the raw model call on float tensors (``torch.inference_mode``);
  ``--modes predictor`` times the whole ``MattingPredictor`` call on uint8 arrays (input
  conversion, the model with the known regions clamped, which skips the decoder tiles and strips
  the clamp overwrites, the alpha back as an array): what ``inference.py`` does per image;
- peak memory: CPU: peak RSS (``ru_maxrss``) and its increment over the RSS of the idle process
  right before the first forward (model and inputs already built), with glibc's mmap threshold
  pinned unless ``--default-malloc`` (``utils.memory.configure_malloc``); CUDA:
  ``torch.cuda.max_memory_allocated`` and its increment over the allocation before the forward;
- tokens in global attention per routed block (from the ``keep`` maps);
- GFLOPs from fvcore ``FlopCountAnalysis`` (1 fused multiply-add = 1 flop, fvcore's convention),
  traced with the real input so the actual routed tokens are counted, with a handle for
  ``aten::scaled_dot_product_attention``; the decoder is counted per distinct tile.

``--backends torch onnxruntime`` also measures the model exported by ``tools/export_onnx.py``
(the same seeded weights, exported once per variant before the workers start) under onnxruntime
(float32, ``--threads`` intra-op threads): wall time, peak memory and routed tokens as above; the
graph has no backbone/decoder split and no FLOP count.

JSON schema (``--json``)::

    {"schema": "mematte-benchmark/1", "created": ISO-8601, "argv": [...],
     "results": [{
        "model": "S", "variant": "mematte" | "vitmatte", "backend": "torch" | "onnxruntime",
        "mode": "forward" | "predictor", "unknown": float (share of unknown pixels),
        "size": [H, W],
        "device": "cpu" | "cuda", "device_name": str, "precision": "fp32" | "bf16" | "fp16",
        "torch": str, "threads": int, "repeats": int, "warmup": int, "tokens": int (per image),
        "max_number_token": int | null, "routed_tokens": [int per routed block],
        "time_s": {"median": float, "runs": [float], "backbone": float | null,
                   "decoder": float | null, "cpu": float (process CPU seconds per run, median)},
        "memory_mib": {"peak": float, "before": float, "increment": float},
        "gflops": {"total": float, "backbone": float, "decoder": float} | null,
        "vs_fp32": {"alpha_max_abs_diff": float, "alpha_mean_abs_diff": float,
                    "flipped_decisions": [int per routed block]} | null (fp32 runs),
        "load_avg": [1 min, 5 min, 15 min] before the run (CPU contention),
        "malloc_pinned": bool (glibc mmap threshold pinned, see configure_malloc),
        "profile": {part: seconds} (only with --profile: one more call under torch.profiler),
        "status": "ok" | "error", "error": str | null}]}

Usage::

    python tools/benchmark.py --sizes 1024 2048 4872x6017 --variants mematte vitmatte \\
        --repeats 3 --json bench.json --markdown bench.md
    python tools/benchmark.py --sizes 2048 --modes forward predictor --unknown 0.05 0.1 0.3
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torch.profiler import record_function

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from engine.config import LazyConfig, instantiate  # noqa: E402
from engine.predictor import MattingPredictor  # noqa: E402
from modeling.lean.input import NormalizedInput  # noqa: E402
from modeling.meta_arch.mematte import padded_size  # noqa: E402
from utils.device import autocast, resolve_device  # noqa: E402
from utils.file_io import atomic_write  # noqa: E402
from utils.memory import (  # noqa: E402
    configure_malloc,
    current_memory_bytes,
    peak_memory_bytes,
)
from utils.token_budget import auto_max_number_token  # noqa: E402

SCHEMA = "mematte-benchmark/1"
# (model size, variant) -> config; the ViTMatte configs are the MEMatte ones with routing off.
CONFIGS = {
    ("S", "mematte"): "configs/MEMatte_S_topk0.25_win_global_long.py",
    ("B", "mematte"): "configs/MEMatte_B_topk0.25_win_global_long.py",
    ("S", "vitmatte"): "configs/ViTMatte_S_Com.py",
    ("B", "vitmatte"): "configs/ViTMatte_B_Com.py",
}
MODEL_SIZES = ("S", "B")
VARIANTS = ("mematte", "vitmatte")
BACKENDS = ("torch", "onnxruntime")
MODES = ("forward", "predictor")
MIB = 2**20
# Synthetic trimap: an ellipse with semi-axes 0.35 H x 0.30 W and an unknown ring of this area.
# Synthetic trimap: a foreground ellipse (semi-axes ELLIPSE_AXES of H and W) whose edge is wavy
# (two sine harmonics of the angle), with an unknown band along it of --unknown of the pixels.
ELLIPSE_AXES = (0.35, 0.30)
EDGE_WAVES = ((7, 0.08, 0.0), (23, 0.04, 1.0))  # (frequency, relative amplitude, phase)
DEFAULT_UNKNOWN = 0.10
QUANTILE_STRIDE = 8  # the band width is fitted on every 8th pixel of every 8th row
ROWS_PER_CHUNK = 256  # input generation works on row chunks to keep the idle RSS low


def parse_size(text: str) -> tuple[int, int]:
    """``"2048"`` -> (2048, 2048); ``"4872x6017"`` -> (4872, 6017) (height x width)."""
    parts = text.lower().split("x")
    if len(parts) == 1:
        return int(parts[0]), int(parts[0])
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"size {text!r} is not N or HxW")
    return int(parts[0]), int(parts[1])


def _edge_distance(rows: Tensor, height: int, width: int) -> Tensor:
    """Signed distance in px (negative inside) of the pixels of ``rows`` to the wavy ellipse,
    measured along the normalised radius: ``[len(rows), W]``."""
    a, b = ELLIPSE_AXES[0] * height, ELLIPSE_AXES[1] * width
    y = ((rows.float() - height / 2) / a)[:, None]
    x = ((torch.arange(width, dtype=torch.float32) - width / 2) / b)[None, :]
    angle = torch.atan2(y, x)
    edge = torch.ones_like(angle)
    for frequency, amplitude, phase in EDGE_WAVES:
        edge += amplitude * torch.sin(frequency * angle + phase)
    return (torch.sqrt(y * y + x * x) - edge) * min(a, b)


def make_inputs(
    height: int, width: int, seed: int = 0, unknown: float = DEFAULT_UNKNOWN
) -> dict[str, Tensor]:
    """Seeded image ``[1, 3, H, W]`` in 0..1 and trimap ``[1, 1, H, W]`` in {0, 0.5, 1}.

    The image is smooth ramps plus uniform noise. The trimap is a foreground ellipse with a
    smooth, wavy edge (the subject) and an unknown band of constant width along that edge,
    the width chosen so that the band covers ``unknown`` of the pixels (a thin band, as real
    trimaps have, at the default 10 %).
    """
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, height, width, generator=gen).mul_(0.5)
    ramp_y = torch.linspace(0, 0.25, height).view(height, 1)
    ramp_x = torch.linspace(0, 0.25, width).view(1, width)
    for c in range(3):
        image[0, c].add_(ramp_y if c != 1 else ramp_x).add_(ramp_x if c != 2 else ramp_y)
    sample = _edge_distance(torch.arange(0, height, QUANTILE_STRIDE), height, width)
    band = torch.quantile(sample[:, ::QUANTILE_STRIDE].abs().flatten(), unknown).item()
    trimap = torch.empty(1, 1, height, width)
    for r0 in range(0, height, ROWS_PER_CHUNK):
        distance = _edge_distance(torch.arange(r0, min(height, r0 + ROWS_PER_CHUNK)), height, width)
        rows = trimap[0, 0, r0 : r0 + ROWS_PER_CHUNK]
        rows.copy_((distance < 0).to(rows.dtype))
        rows[distance.abs_() <= band] = 0.5
    return {"image": image, "trimap": trimap}


def build_model(model_size: str, variant: str, overrides: list[str], seed: int) -> nn.Module:
    """MEMatte (or ViTMatte: its config, routing off) in eval mode with seeded random weights."""
    cfg = LazyConfig.load(str(REPO_ROOT / CONFIGS[model_size, variant]))
    LazyConfig.apply_overrides(cfg, ["model.teacher_backbone=None", *overrides])
    torch.manual_seed(seed)
    return instantiate(cfg.model).eval()


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, with the core count (else the platform's name)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    return platform.processor() or platform.machine()


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


class _StageTimer:
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


def _timed_runs(spec: dict, call: Callable[[], object], device: torch.device, timer=None) -> dict:
    """``--warmup`` untimed then ``--repeats`` timed calls: wall and CPU seconds, memory."""
    runs, cpu, stages = [], [], []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    before = current_memory_bytes(device) / MIB
    load_avg = list(os.getloadavg())
    for i in range(spec["warmup"] + spec["repeats"]):
        if timer is not None:
            timer.reset()
        t0, c0 = time.perf_counter(), time.process_time()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= spec["warmup"]:
            runs.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            stages.append(dict(timer.seconds) if timer is not None else {})
    peak = peak_memory_bytes(device) / MIB
    return {
        "time_s": {
            "median": statistics.median(runs),
            "runs": runs,
            **{
                stage: statistics.median(s[stage] for s in stages) if timer is not None else None
                for stage in ("backbone", "decoder")
            },
            "cpu": statistics.median(cpu),
        },
        "memory_mib": {"peak": peak, "before": before, "increment": peak - before},
        "load_avg": load_avg,
    }


def _result(spec: dict, **measured: object) -> dict:
    """A JSON result: the spec's configuration and what was measured."""
    keys = ("model", "variant", "backend", "mode", "unknown", "size", "device", "precision")
    return {
        **{k: spec[k] for k in (*keys, "repeats", "warmup")},
        "torch": torch.__version__,
        "gflops": None,
        "vs_fp32": None,
        **measured,
        "status": "ok",
        "error": None,
    }


def _profile_labels(model: nn.Module) -> list[tuple[nn.Module, str]]:
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
    for module, label in _profile_labels(model):
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


def run_worker(spec: dict) -> dict:
    """One measurement, in this (fresh) process. ``spec`` holds the keys of a JSON result.

    ``mode`` ``forward`` times ``model(batch)`` on float tensors (the raw alpha); ``predictor``
    times the whole :class:`~engine.predictor.MattingPredictor` call on uint8 arrays (input
    conversion, the model with the known-region clamp, the alpha back as a numpy array).
    """
    malloc_pinned = spec["pin_malloc"] and configure_malloc()
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = resolve_device(spec["device"])
    H, W = spec["size"]
    model = build_model(spec["model"], spec["variant"], spec["overrides"], spec["seed"])
    model.to(device)
    patch = model.backbone.patch_embed.proj.kernel_size[0]
    Hp, Wp = padded_size((H, W), model.size_divisibility)
    tokens = (Hp // patch) * (Wp // patch)
    cap = resolve_cap(spec, tokens, lambda: auto_max_number_token(model, (H, W), device))
    model.backbone.max_number_token = cap
    batch = make_inputs(H, W, spec["seed"], spec["unknown"])
    # uint8 levels for the predictor, and for the profile's PNG timing; not held otherwise, so
    # that the forward's idle memory is the model's and the float batch's only.
    image, trimap = (
        uint8_inputs(batch) if spec["mode"] == "predictor" or spec.get("profile") else (None,) * 2
    )
    last = {}  # the model's latest output (its routing maps)
    hook = model.register_forward_hook(lambda module, args, out: last.update(out=out))
    if spec["mode"] == "predictor":
        del batch
        predictor = MattingPredictor(model, device=device, precision=spec["precision"])

        def call() -> None:
            predictor(image, trimap)

    else:
        batch = {k: v.to(device) for k, v in batch.items()}

        def call() -> None:
            with torch.inference_mode(), autocast(device, spec["precision"]):
                model(batch, patch_decoder=True)

    measured = _timed_runs(spec, call, device, _StageTimer(model, device))
    if spec.get("profile"):
        alpha = (last["out"]["phas"][0, 0] * 255).to(torch.uint8).cpu().numpy()
        measured["profile"] = profile_breakdown(model, call, image, alpha)
    hook.remove()
    out = last["out"]
    if spec["mode"] == "forward":
        if spec["precision"] != "fp32":
            measured["vs_fp32"] = compare_with_fp32(model, batch, out)
        if spec["flops"]:
            measured["gflops"] = count_gflops(model, batch)
    return _result(
        spec,
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        threads=torch.get_num_threads(),
        tokens=tokens,
        max_number_token=cap,
        routed_tokens=[int(k[0].sum()) for k in out["keep"]],
        malloc_pinned=malloc_pinned,
        **measured,
    )


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


def export_for_onnxruntime(spec: dict, folder: Path) -> Path:
    """The ONNX graph of the measured model (its seeded random weights), written to ``folder``."""
    from tools.export_onnx import build_graph

    model = build_model(spec["model"], spec["variant"], spec["overrides"], spec["seed"])
    path = folder / f"{spec['model']}_{spec['variant']}.onnx"
    path.write_bytes(build_graph(model).SerializeToString())
    return path


def run_onnxruntime_worker(spec: dict) -> dict:
    """:func:`run_worker` for the onnxruntime backend: the exported graph at ``onnx_path``."""
    from engine.onnx_predictor import OnnxMattingPredictor

    if spec["precision"] != "fp32":
        raise ValueError("onnxruntime runs the exported float32 graph only")
    malloc_pinned = spec["pin_malloc"] and configure_malloc()
    H, W = spec["size"]
    cfg = LazyConfig.load(str(REPO_ROOT / CONFIGS[spec["model"], spec["variant"]]))
    LazyConfig.apply_overrides(cfg, spec["overrides"])
    Hp, Wp = padded_size((H, W), cfg.model.size_divisibility)
    patch = cfg.model.backbone.patch_size
    tokens = (Hp // patch) * (Wp // patch)
    cap = resolve_cap(spec, tokens, auto=None)
    predictor = OnnxMattingPredictor(
        spec["onnx_path"], device=spec["device"], max_number_token=cap, threads=spec["threads"]
    )
    image, trimap = uint8_inputs(make_inputs(H, W, spec["seed"], spec["unknown"]))
    last = {}
    measured = _timed_runs(
        spec,
        lambda: last.update(out=predictor(image, trimap, return_routing=True)),
        torch.device("cpu"),
    )
    return _result(
        spec,
        device_name=f"{cpu_name()}, {predictor.session.get_providers()[0]}",
        threads=spec["threads"] or os.cpu_count(),
        tokens=tokens,
        max_number_token=cap,
        routed_tokens=[int(keep.sum()) for keep in last["out"][1].keep.values()],
        malloc_pinned=malloc_pinned,
        **measured,
    )


def run_in_subprocess(spec: dict, timeout: float | None, script: Path = Path(__file__)) -> dict:
    """Run ``script --worker SPEC`` (this tool's :func:`run_worker` by default) in a fresh
    interpreter; the last stdout line is its JSON result; failures become ``status: error``."""
    command = [sys.executable, str(script.resolve()), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "status": "error", "error": f"timeout after {timeout} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        reason = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return {**spec, "status": "error", "error": reason[0]}
    return json.loads(lines[-1])


def markdown_table(results: list[dict]) -> str:
    """One row per result: configuration, routed tokens, times, memory, GFLOPs, allocator."""
    header = (
        "| model | variant | backend | call | input (HxW) | unknown | device | precision | cap "
        "| routed tokens per block | wall s (median) | backbone s | decoder s | peak MiB "
        "| increment MiB | GFLOPs | malloc |"
    )
    lines = [header, "|" + " --- |" * 17]
    for r in results:
        size = "x".join(str(s) for s in r["size"])
        head = (
            f"| {r['model']} | {r['variant']} | {r['backend']} | {r['mode']} | {size} "
            f"| {100 * r['unknown']:.0f} % | {r['device']} | {r['precision']} "
        )
        if r["status"] != "ok":
            lines.append(head + f"| error: {r['error']} |" + " |" * 9)
            continue
        t, m = r["time_s"], r["memory_mib"]
        cap = r["max_number_token"] if r["max_number_token"] is not None else "-"
        routed = " / ".join(str(n) for n in r["routed_tokens"]) or f"all {r['tokens']}"
        gflops = f"{r['gflops']['total']:.0f}" if r["gflops"] else "-"
        stages = [f"{t[k]:.2f}" if t[k] is not None else "-" for k in ("backbone", "decoder")]
        lines.append(
            head + f"| {cap} | {routed} | {t['median']:.2f} | {stages[0]} "
            f"| {stages[1]} | {m['peak']:.0f} | {m['increment']:.0f} | {gflops} "
            f"| {'pinned' if r['malloc_pinned'] else 'default'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=parse_size,
        default=[(1024, 1024)],
        help="input sizes: N (N x N) or HxW, e.g. 2048 4872x6017",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=["mematte"],
        help="mematte (its config) or vitmatte (configs/ViTMatte_*_Com.py: routing off)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=["forward"],
        help="forward: the raw model call on float tensors; predictor: the whole "
        "MattingPredictor call on uint8 arrays (known regions clamped, decoder work they "
        "overwrite skipped)",
    )
    parser.add_argument(
        "--unknown",
        nargs="+",
        type=float,
        default=[DEFAULT_UNKNOWN],
        help="share of unknown pixels in the trimap's band along the subject's edge",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=BACKENDS,
        default=["torch"],
        help="onnxruntime: the graph of tools/export_onnx.py",
    )
    parser.add_argument("--model", choices=MODEL_SIZES, default="S", help="ViT-S or ViT-B")
    parser.add_argument("--devices", nargs="+", default=["cpu"], help="cpu, cuda, cuda:1 or auto")
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=["fp32", "bf16", "fp16"],
        help="autocast precision (default fp32; fp16 on CUDA only)",
    )
    parser.add_argument("--cap-ratio", type=float, default=0.25, help="cap / tokens (mematte)")
    parser.add_argument(
        "--max-number-token", help="absolute cap (e.g. 18500) or 'auto'; overrides --cap-ratio"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before them")
    parser.add_argument(
        "--threads", type=int, help="torch / onnxruntime threads (default: their choice)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    parser.add_argument("--no-flops", action="store_true", help="skip the fvcore FLOP count")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="one more call under torch.profiler: seconds per part (patch embedding, routers, "
        "window and global attention, LTRM, MLP, residual convs, decoder stages; PNG I/O)",
    )
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's adaptive mmap threshold (see configure_malloc)",
    )
    add_run_arguments(parser)
    args = parser.parse_args()

    if args.worker:
        spec = json.loads(args.worker)
        worker = run_onnxruntime_worker if spec["backend"] == "onnxruntime" else run_worker
        print(json.dumps(worker(spec)))
        return
    cap = args.max_number_token
    if cap is not None and cap != "auto":
        cap = int(cap)
    results = []
    exports = Path(tempfile.mkdtemp(prefix="benchmark_onnx_"))
    onnx_paths: dict[str, str] = {}  # variant -> exported graph, made once
    configurations = list(
        itertools.product(
            args.sizes,
            args.unknown,
            args.variants,
            args.backends,
            args.modes,
            args.devices,
            args.precisions or ["fp32"],
        )
    )
    print(f"{len(configurations)} configurations, each in a fresh process", flush=True)
    print("\n".join(markdown_table([]).splitlines()[:2]), flush=True)
    for size, unknown, variant, backend, mode, device, precision in configurations:
        if backend == "onnxruntime" and mode == "predictor":
            continue  # the onnxruntime backend always times its predictor
        spec = {
            "model": args.model,
            "variant": variant,
            "backend": backend,
            "mode": "predictor" if backend == "onnxruntime" else mode,
            "unknown": unknown,
            "size": list(size),
            "device": device,
            "precision": precision,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "threads": args.threads,
            "seed": args.seed,
            "cap_ratio": args.cap_ratio,
            "max_number_token": cap,
            "flops": not args.no_flops,
            "profile": args.profile,
            "pin_malloc": not args.default_malloc,
            "overrides": args.override,
        }
        if backend == "onnxruntime":
            if variant not in onnx_paths:
                onnx_paths[variant] = str(export_for_onnxruntime(spec, exports))
            spec["onnx_path"] = onnx_paths[variant]
        described = f"{args.model} {variant} {backend} {mode} {'x'.join(map(str, size))}"
        print(f"measuring {described} {device} {precision} ...", file=sys.stderr, flush=True)
        result = run_in_subprocess(spec, args.timeout)
        results.append(result)
        print(markdown_table([result]).splitlines()[-1], flush=True)
    shutil.rmtree(exports)
    write_report(SCHEMA, results, args.json, args.markdown, markdown_table)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options a benchmark tool shares with the others: config overrides, the per-measurement
    timeout of :func:`run_in_subprocess` (and its hidden ``--worker SPEC``), and where
    :func:`write_report` writes."""
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--override", nargs="*", default=[], help="extra config overrides")
    parser.add_argument("--timeout", type=float, help="seconds per measurement")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the markdown table here")


def write_report(
    schema: str,
    results: list[dict],
    json_path: Path | None,
    markdown_path: Path | None,
    table: Callable[[list[dict]], str],
) -> None:
    """Write a benchmark tool's results: JSON (``schema``, creation time, command line, results)
    to ``json_path`` and ``table(results)`` to ``markdown_path``, each where given, atomically."""
    report = {
        "schema": schema,
        "created": datetime.datetime.now(datetime.UTC).isoformat(),
        "argv": sys.argv,
        "results": results,
    }

    def write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda file: file.write(text.encode()))

    if json_path is not None:
        write(json_path, json.dumps(report, indent=2) + "\n")
    if markdown_path is not None:
        write(markdown_path, table(results))


if __name__ == "__main__":
    main()
