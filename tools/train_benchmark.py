"""Step time and peak memory of MEMatte training, with and without activation checkpointing.

One step is what a training iteration computes before the optimizer: the forward pass with every
loss (matting losses, distillation against the frozen teacher, the BATR routing loss) and the
backward pass. Every configuration runs in a fresh subprocess (``--worker SPEC``) that builds the
model from its config (teacher included, frozen) with seeded random weights and a seeded batch of
crops (random image, alpha and a {0, 0.5, 1} trimap of 8 px cells, as the training pipeline
delivers them), runs ``--warmup`` untimed and ``--steps`` timed steps, and reports:

- step time: the median over the timed steps, split into forward and backward;
- peak memory: CPU: peak RSS and its increment over the RSS before the first step (model and
  batch built), with glibc's thresholds pinned (``utils.memory.configure_malloc``); CUDA:
  ``torch.cuda.max_memory_allocated`` and its increment over the allocation before the step.

``--flags`` names the activation-checkpointing setting of each run: ``off``, ``backbone``
(``model.backbone.use_act_checkpoint``), ``decoder`` (``model.decoder.use_act_checkpoint``) or
``on`` (both). Usage::

    python tools/train_benchmark.py --cases 512:2 1024:1 --flags off on --json train_bench.json
"""

from __future__ import annotations

import argparse
import json
import runpy
import statistics
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
runpy.run_path(str(REPO_ROOT / "tools" / "_bootstrap.py"))

from engine.config import LazyConfig, instantiate
from engine.optim import freeze_teacher
from predictor.profiling import CONFIGS, MODEL_SIZES
from utils.benchmark import add_run_arguments, cpu_name, run_in_subprocess, write_report
from utils.device import autocast, resolve_device
from utils.memory import MIB, configure_malloc, current_memory_bytes, peak_memory_bytes

SCHEMA = "mematte-train-benchmark/1"
FLAGS = {
    "off": (),
    "backbone": ("model.backbone.use_act_checkpoint=True",),
    "decoder": ("model.decoder.use_act_checkpoint=True",),
    "on": ("model.backbone.use_act_checkpoint=True", "model.decoder.use_act_checkpoint=True"),
}
LOSS_PREFIX = "loss_"
TRIMAP_CELL = 8  # px side of the random trimap's cells
TRIMAP_LEVELS = (0.0, 0.5, 1.0)


def parse_case(text: str) -> tuple[int, int]:
    """``"1024:1"`` -> (crop 1024, batch 1)."""
    crop, sep, batch = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"case {text!r} is not CROP:BATCH (e.g. 512:2)")
    return int(crop), int(batch)


def make_batch(crop: int, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """A seeded training batch: ``image``, ``fg``, ``bg`` ``[B, 3, S, S]``, ``alpha``
    ``[B, 1, S, S]`` in [0, 1] and a ``trimap`` ``[B, 1, S, S]`` in {0, 0.5, 1}."""
    gen = torch.Generator().manual_seed(seed)
    grid = (batch, 1, crop // TRIMAP_CELL, crop // TRIMAP_CELL)
    cells = torch.randint(len(TRIMAP_LEVELS), grid, generator=gen)
    trimap = torch.tensor(TRIMAP_LEVELS)[cells].repeat_interleave(TRIMAP_CELL, dim=-2)
    out = {"trimap": trimap.repeat_interleave(TRIMAP_CELL, dim=-1)}
    out["alpha"] = torch.rand(batch, 1, crop, crop, generator=gen)
    for key in ("image", "fg", "bg"):
        out[key] = torch.rand(batch, 3, crop, crop, generator=gen)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_worker(spec: dict) -> dict:
    """One measurement, in this (fresh) process. ``spec`` holds the keys of a JSON result."""
    malloc_pinned = configure_malloc()
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = resolve_device(spec["device"])
    cfg = LazyConfig.load(str(REPO_ROOT / CONFIGS[spec["model"], "mematte"]))
    LazyConfig.apply_overrides(cfg, [*FLAGS[spec["flags"]], *spec["overrides"]])
    torch.manual_seed(spec["seed"])
    model = instantiate(cfg.model).to(device).train()
    freeze_teacher(model)
    batch = {
        k: v.to(device) for k, v in make_batch(spec["crop"], spec["batch"], spec["seed"]).items()
    }
    scaler = torch.amp.GradScaler(device.type, enabled=spec["precision"] == "fp16")
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = current_memory_bytes(device) / MIB
    forward, backward = [], []
    for step in range(spec["warmup"] + spec["steps"]):
        t0 = time.perf_counter()
        with autocast(device, spec["precision"]):
            out = model(batch)
        loss = sum(v for k, v in out.items() if k.startswith(LOSS_PREFIX))
        _sync(device)
        t1 = time.perf_counter()
        scaler.scale(loss).backward()
        _sync(device)
        t2 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        del out, loss
        if step >= spec["warmup"]:
            forward.append(t1 - t0)
            backward.append(t2 - t1)
    peak = peak_memory_bytes(device) / MIB
    steps = [f + b for f, b in zip(forward, backward, strict=True)]
    return {
        **spec,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "time_s": {
            "median": statistics.median(steps),
            "runs": steps,
            "forward": statistics.median(forward),
            "backward": statistics.median(backward),
        },
        "memory_mib": {"peak": peak, "before": before, "increment": peak - before},
        "malloc_pinned": malloc_pinned,
        "status": "ok",
        "error": None,
    }


def markdown_table(results: list[dict]) -> str:
    """One row per result: configuration, step time (forward / backward), memory."""
    header = (
        "| model | crop | batch | act. checkpointing | device | precision | step s (median) "
        "| forward s | backward s | peak MiB | increment MiB |"
    )
    lines = [header, "|" + " --- |" * 11]
    for r in results:
        head = (
            f"| {r['model']} | {r['crop']} | {r['batch']} | {r['flags']} | {r['device']} "
            f"| {r['precision']} "
        )
        if r["status"] != "ok":
            lines.append(head + f"| error: {r['error']} |" + " |" * 4)
            continue
        t, m = r["time_s"], r["memory_mib"]
        lines.append(
            head + f"| {t['median']:.2f} | {t['forward']:.2f} | {t['backward']:.2f} "
            f"| {m['peak']:.0f} | {m['increment']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--cases",
        nargs="+",
        type=parse_case,
        default=[(512, 2)],
        help="CROP:BATCH pairs: training crop side in px and crops per step (default 512:2)",
    )
    parser.add_argument(
        "--flags", nargs="+", choices=sorted(FLAGS), default=["off"], help="checkpointing"
    )
    parser.add_argument("--model", choices=MODEL_SIZES, default="S", help="MEMatte-S or -B")
    parser.add_argument("--devices", nargs="+", default=["cpu"], help="cpu, cuda or auto")
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=["fp32", "bf16", "fp16"],
        default=["fp32"],
        help="autocast precision of the forward pass (fp16: CUDA only, with loss scaling)",
    )
    parser.add_argument("--steps", type=int, default=2, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch")
    add_run_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Measure every case asked for, each in a fresh worker process."""
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return
    results = []
    for crop, batch in args.cases:
        for flags in args.flags:
            for device in args.devices:
                for precision in args.precisions:
                    spec = {
                        "model": args.model,
                        "crop": crop,
                        "batch": batch,
                        "flags": flags,
                        "device": device,
                        "precision": precision,
                        "steps": args.steps,
                        "warmup": args.warmup,
                        "threads": args.threads,
                        "seed": args.seed,
                        "overrides": args.override,
                    }
                    result = run_in_subprocess(spec, args.timeout, script=Path(__file__))
                    results.append(result)
                    print(markdown_table([result]).splitlines()[-1], flush=True)
    write_report(SCHEMA, results, args.json, args.markdown, markdown_table)


if __name__ == "__main__":
    main()
