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
- GFLOPs (1 fused multiply-add = 1 flop, fvcore's convention): the backbone with fvcore
  ``FlopCountAnalysis`` traced module by module with the real input, so the actual routed tokens
  are counted; the decoder from its block-sparse plans (the convs it runs: in ``predictor`` mode
  only the blocks the clamp does not overwrite), with its pixels, boxes and multiply-adds per
  stage (``decoder_work``);
- with ``--profile``, seconds per part from one more call under ``torch.profiler`` and the
  GFLOP/s each part achieves (its GFLOPs over its seconds).

``--backends torch onnxruntime`` also measures the deployment exported by
``tools/export_onnx.py`` (the same weights, exported once per variant before the workers start)
under onnxruntime (float32, ``--threads`` intra-op threads): the ``OnnxMattingPredictor`` call
(``predictor`` mode), with its backbone/decoder split; wall time, peak memory and routed tokens
as above.

``--official DIR`` adds, per size and unknown share, the official code in the same run (the tree
and venv that ``../shared/official-bench/setup.sh`` lays out in DIR): its forward followed by its
known-region clamp, and the project's ``MattingPredictor`` call on the same scene with the same
weights (``perf_realistic.py`` of ``../shared/official-bench``, fresh processes), their ratio and
how many pixels of the two 8-bit alphas differ; the official side's weights are then loaded into
every other row's model too (``--weights`` does the same with a checkpoint of your own).

``--segmenter ID_OR_DIR`` also measures a SAM-family segmenter (``predictor.segmenter``; a hub id
or a ``save_pretrained`` folder) on the same images, prompted with the box around the subject:
``first prompt`` (the image embedding, then the prompt decoder and the mask brought to the image
size) and ``next prompt`` (the same image again: the prompt decoder only), each with its peak
memory (rows with variant ``segmenter``; tokens: the encoder's; fp32).

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
        "gflops": {"total": float, "backbone": float, "decoder": float,
                   "parts": {part: float}} | null,
        "decoder_work": {stage: {"pixels": int, "boxes": int, "macs": int}} | null (PyTorch
                         rows only),
        "vs_fp32": {"alpha_max_abs_diff": float, "alpha_mean_abs_diff": float,
                    "flipped_decisions": [int per routed block]} | null (fp32 runs),
        "load_avg": [1 min, 5 min, 15 min] before the run (CPU contention),
        "malloc_pinned": bool (glibc mmap threshold pinned, see configure_malloc),
        "profile": {part: seconds} (only with --profile: one more call under torch.profiler),
        "profile_gflop_per_s": {part: float} (with --profile and the FLOP count),
        "status": "ok" | "error", "error": str | null}],
     "official": [{"size": [H, W], "unknown": float, "cap": int,
                   "official": {RESULT of perf_realistic.py}, "project": {RESULT},
                   "ratio": float (project wall / official wall),
                   "alpha_pixels_differing": int, "alpha_max_level_difference": int}]
                 (only with --official)}

Usage::

    python tools/benchmark.py --sizes 1024 2048 4872x6017 --variants mematte vitmatte \\
        --repeats 3 --json bench.json --markdown bench.md
    python tools/benchmark.py --sizes 2048 --modes forward predictor --unknown 0.05 0.1 0.3
    python tools/benchmark.py --sizes 2048 4872x6017 --max-number-token 18500 \\
        --modes predictor --backends torch onnxruntime --unknown 0.05 0.1 0.25 \\
        --official ../official --profile --json bench.json
    python tools/benchmark.py --sizes 1024 4872x6017 --segmenter facebook/sam-vit-base
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import runpy
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "_bootstrap.py"))

from data.synthetic import DEFAULT_UNKNOWN, make_benchmark_inputs
from engine.config import LazyConfig
from modeling.meta_arch.mematte import padded_size
from predictor.matting import MattingPredictor
from predictor.profiling import (
    CONFIGS,
    MODEL_SIZES,
    REPO_ROOT,
    VARIANTS,
    MethodTimer,
    StageTimer,
    build_model,
    compare_with_fp32,
    count_gflops,
    decoder_work,
    gflop_rates,
    profile_breakdown,
    resolve_cap,
    uint8_inputs,
)
from predictor.prompts import Prompts
from predictor.segmenter import load_segmenter, segmenter_rgb
from predictor.token_budget import auto_max_number_token
from utils.benchmark import (
    add_run_arguments,
    cpu_name,
    official_table,
    parse_size,
    run_in_subprocess,
    run_official_pair,
    timed_runs,
    write_report,
)
from utils.device import PRECISIONS, autocast, resolve_device
from utils.memory import configure_malloc

SCHEMA = "mematte-benchmark/1"
BACKENDS = ("torch", "onnxruntime")
MODES = ("forward", "predictor")
SEGMENTER, SEGMENTER_MODES = "segmenter", ("first prompt", "next prompt")


def _result(spec: dict, **measured: object) -> dict:
    """A JSON result: the spec's configuration and what was measured."""
    keys = ("model", "variant", "backend", "mode", "unknown", "size", "device", "precision")
    return {
        **{k: spec[k] for k in (*keys, "repeats", "warmup")},
        "torch": torch.__version__,
        "gflops": None,
        "decoder_work": None,
        "vs_fp32": None,
        **measured,
        "status": "ok",
        "error": None,
    }


def run_worker(spec: dict) -> dict:
    """One measurement, in this (fresh) process. ``spec`` holds the keys of a JSON result.

    ``mode`` ``forward`` times ``model(batch)`` on float tensors (the raw alpha); ``predictor``
    times the whole :class:`~predictor.matting.MattingPredictor` call on uint8 arrays (input
    conversion, the model with the known-region clamp, the alpha back as a numpy array).
    """
    malloc_pinned = spec["pin_malloc"] and configure_malloc()
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = resolve_device(spec["device"])
    H, W = spec["size"]
    model = _model(spec)
    model.to(device)
    patch = model.backbone.patch_embed.proj.kernel_size[0]
    Hp, Wp = padded_size((H, W), model.size_divisibility)
    tokens = (Hp // patch) * (Wp // patch)
    cap = resolve_cap(spec, tokens, lambda: auto_max_number_token(model, (H, W), device))
    model.backbone.max_number_token = cap
    batch = make_benchmark_inputs(H, W, spec["seed"], spec["unknown"])
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

    measured = timed_runs(spec, call, device, StageTimer(model, device))
    if spec.get("profile"):
        alpha = (last["out"]["phas"][0, 0] * 255).to(torch.uint8).cpu().numpy()
        measured["profile"] = profile_breakdown(model, call, image, alpha)
    hook.remove()
    out = last["out"]
    if spec["mode"] == "forward" and spec["precision"] != "fp32":
        measured["vs_fp32"] = compare_with_fp32(model, batch, out)
    if spec["mode"] == "predictor":  # the levels the predictor was given
        batch = {
            "image": torch.from_numpy(image).permute(2, 0, 1)[None],  # [H, W, 3] -> [1, 3, H, W]
            "trimap": torch.from_numpy(trimap)[None, None],
        }
    clamp_known = spec["mode"] == "predictor"
    measured["decoder_work"] = decoder_work(model, batch["trimap"], clamp_known)
    if spec["flops"]:
        measured["gflops"] = count_gflops(model, batch, clamp_known)
        if spec.get("profile"):
            measured["profile_gflop_per_s"] = gflop_rates(
                measured["gflops"]["parts"], measured["profile"]
            )
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


def run_segmenter_worker(spec: dict) -> dict:
    """A segmenter's ``first prompt`` (embedding and prompt decoder: its cache is cleared before
    each call) or ``next prompt`` (the embedding kept from the warm-up: prompt decoder only), on
    the benchmark image with the box around its subject (the trimap's non-background)."""
    malloc_pinned = spec["pin_malloc"] and configure_malloc()
    device = resolve_device(spec["device"])
    segmenter = load_segmenter(spec["model"], device=device)
    image, trimap = uint8_inputs(
        make_benchmark_inputs(*spec["size"], spec["seed"], spec["unknown"])
    )
    rows, cols = np.nonzero(trimap)
    box = Prompts(box=(cols.min(), rows.min(), cols.max() + 1, rows.max() + 1))
    first = spec["mode"] == SEGMENTER_MODES[0]

    def call() -> None:
        if first:
            segmenter.clear_cache()
        segmenter.predict(image, box)

    measured = timed_runs(spec, call, device)
    embeddings = segmenter.embedding(segmenter_rgb(image)).inputs["image_embeddings"]
    last = embeddings[-1] if isinstance(embeddings, list) else embeddings  # SAM 2: levels
    return _result(
        spec,
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        threads=torch.get_num_threads(),
        tokens=last.shape[-2] * last.shape[-1],
        max_number_token=None,
        routed_tokens=[],
        malloc_pinned=malloc_pinned,
        **measured,
    )


def measure_segmenter(args: argparse.Namespace) -> list[dict]:
    """``--segmenter``: both calls at every size and device, each in a fresh worker process."""
    results = []
    for size, device, mode in itertools.product(args.sizes, args.devices, SEGMENTER_MODES):
        spec = {
            "model": args.segmenter,
            "variant": SEGMENTER,
            "backend": "torch",
            "mode": mode,
            "unknown": args.unknown[0],
            "size": list(size),
            "device": device,
            "precision": "fp32",
            "repeats": args.repeats,
            "warmup": max(1, args.warmup),  # the next prompt's embedding comes from the warm-up
            "seed": args.seed,
            "pin_malloc": not args.default_malloc,
        }
        print(f"measuring {args.segmenter} {mode} {device} ...", file=sys.stderr, flush=True)
        results.append(run_in_subprocess(Path(__file__), spec, args.timeout))
        print(markdown_table(results[-1:]).splitlines()[-1], flush=True)
    return results


def _model(spec: dict) -> torch.nn.Module:
    """The measured model: seeded random weights, or ``spec["weights"]``."""
    weights = spec.get("weights")
    return build_model(spec["model"], spec["variant"], spec["overrides"], spec["seed"], weights)


def export_for_onnxruntime(spec: dict, folder: Path) -> Path:
    """The ONNX deployment of the measured model (its weights), written to ``folder``."""
    from predictor.onnx_graph import build_deployment, write_deployment

    path = folder / f"{spec['model']}_{spec['variant']}_onnx"
    write_deployment(path, *build_deployment(_model(spec)))
    return path


def run_onnxruntime_worker(spec: dict) -> dict:
    """:func:`run_worker` for the onnxruntime backend: the exported graph at ``onnx_path``."""
    from predictor.onnx_predictor import OnnxMattingPredictor

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
    image, trimap = uint8_inputs(make_benchmark_inputs(H, W, spec["seed"], spec["unknown"]))
    last = {}
    measured = timed_runs(
        spec,
        lambda: last.update(out=predictor(image, trimap, return_routing=True)),
        torch.device("cpu"),
        MethodTimer(predictor, {"backbone": "_backbone", "decoder": "_decode"}),
    )
    return _result(
        spec,
        device_name=f"{cpu_name()}, {predictor.blocks.get_providers()[0]}",
        threads=spec["threads"] or os.cpu_count(),
        tokens=tokens,
        max_number_token=cap,
        routed_tokens=[int(keep.sum()) for keep in last["out"][1].keep.values()],
        malloc_pinned=malloc_pinned,
        **measured,
    )


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


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
        choices=list(PRECISIONS),
        help="autocast precision (default fp32; fp16 on CUDA only)",
    )
    parser.add_argument("--cap-ratio", type=float, default=0.25, help="cap / tokens (mematte)")
    parser.add_argument(
        "--cap-limit", type=int, help="the --cap-ratio cap at most this (e.g. the official 18500)"
    )
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
        "--weights",
        type=Path,
        help="a checkpoint (or state dict) loaded into every measured model instead of the "
        "seeded random weights",
    )
    parser.add_argument(
        "--official",
        type=Path,
        metavar="DIR",
        help="also measure the official code in this run: DIR is the tree and venv that "
        "../shared/official-bench/setup.sh lays out; its weights are used everywhere (see the "
        "module docstring)",
    )
    parser.add_argument(
        "--segmenter",
        metavar="ID_OR_DIR",
        help="also measure this SAM-family segmenter (hub id or save_pretrained folder) on the "
        "same images: the first prompt (image embedding + prompt decoder) and the next one "
        "(prompt decoder only)",
    )
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's adaptive mmap threshold (see configure_malloc)",
    )
    add_run_arguments(parser)
    return parser


def _official_cap(args: argparse.Namespace, size: tuple[int, int]) -> int:
    """The cap of the official pair at ``size``, as the MEMatte rows resolve it."""
    cfg = LazyConfig.load(str(REPO_ROOT / CONFIGS[args.model, "mematte"])).model
    Hp, Wp = padded_size(size, cfg.size_divisibility)
    patch = cfg.backbone.patch_size
    spec = {"variant": "mematte", "max_number_token": args.max_number_token}
    spec.update(cap_ratio=args.cap_ratio, cap_limit=args.cap_limit)
    return resolve_cap(spec, (Hp // patch) * (Wp // patch), auto=None)


def main(argv: list[str] | None = None) -> None:
    """Measure every configuration asked for, each in a fresh worker process."""
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.worker:
        spec = json.loads(args.worker)
        worker = run_onnxruntime_worker if spec["backend"] == "onnxruntime" else run_worker
        worker = run_segmenter_worker if spec["variant"] == SEGMENTER else worker
        print(json.dumps(worker(spec)))
        return
    if "onnxruntime" in args.backends and "predictor" not in args.modes:
        parser.error("onnxruntime measures the predictor call: add --modes predictor")
    cap = args.max_number_token
    if cap is not None and cap != "auto":
        cap = int(cap)
    work = Path(tempfile.mkdtemp(prefix="benchmark_"))
    weights = str(args.weights) if args.weights is not None else None
    official = []
    if args.official is not None:
        weights = str(work / "official_weights.pth")
        for size, unknown in itertools.product(args.sizes, args.unknown):
            print(f"measuring the official code at {size} ...", file=sys.stderr, flush=True)
            official.append(
                run_official_pair(
                    args.official, size, unknown, _official_cap(args, size), weights, work
                )
            )
        print(official_table(official), flush=True)
    results = []
    onnx_paths: dict[str, str] = {}  # variant -> exported deployment, made once
    configurations = [
        config
        for config in itertools.product(
            args.sizes,
            args.unknown,
            args.variants,
            args.backends,
            args.modes,
            args.devices,
            args.precisions or ["fp32"],
        )
        if config[3] != "onnxruntime" or config[4] == "predictor"  # onnxruntime: the predictor
    ]
    print(f"{len(configurations)} configurations, each in a fresh process", flush=True)
    print("\n".join(markdown_table([]).splitlines()[:2]), flush=True)
    for size, unknown, variant, backend, mode, device, precision in configurations:
        spec = {
            "model": args.model,
            "variant": variant,
            "backend": backend,
            "mode": mode,
            "unknown": unknown,
            "size": list(size),
            "device": device,
            "precision": precision,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "threads": args.threads,
            "seed": args.seed,
            "cap_ratio": args.cap_ratio,
            "cap_limit": args.cap_limit,
            "max_number_token": cap,
            "flops": not args.no_flops,
            "profile": args.profile,
            "pin_malloc": not args.default_malloc,
            "overrides": args.override,
            "weights": weights if variant == "mematte" else None,
        }
        if backend == "onnxruntime":
            if variant not in onnx_paths:
                onnx_paths[variant] = str(export_for_onnxruntime(spec, work))
            spec["onnx_path"] = onnx_paths[variant]
        described = f"{args.model} {variant} {backend} {mode} {'x'.join(map(str, size))}"
        print(f"measuring {described} {device} {precision} ...", file=sys.stderr, flush=True)
        result = run_in_subprocess(Path(__file__), spec, args.timeout)
        results.append(result)
        print(markdown_table([result]).splitlines()[-1], flush=True)
    shutil.rmtree(work)
    if args.segmenter is not None:
        results += measure_segmenter(args)

    def table(rows: list[dict]) -> str:
        return markdown_table(rows) + (f"\n{official_table(official)}" if official else "")

    write_report(SCHEMA, results, args.json, args.markdown, table, official=official or None)


if __name__ == "__main__":
    main()
