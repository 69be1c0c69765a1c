"""Foreground colours: ``predictor.foreground.estimate_foreground`` against pymatting's
``estimate_foreground_ml`` (Germer et al.), side by side in one run.

Quality and speed are measured on synthetic composites with known foreground colours: the
procedural foregrounds of ``tools/make_synthetic_dataset.py`` (soft-edged bodies, hair-like
strands with their own colour, a semi-transparent veil) over its backgrounds (gradients, noisy
colour fields, stripes, one kind per composite in turn), ``I = alpha F + (1 - alpha) B`` in
float. The error of an estimate is the alpha-weighted mean absolute colour error over the
fractional pixels, ``sum(alpha |F_est - F|) / (3 sum(alpha))`` over ``0 < alpha < 1``; the naive
estimate ``F = I`` is the baseline. Both methods are warmed up on the first composite, then each
composite is timed ``--repeats`` times per method, keeping the fastest run (the least disturbed
by other processes; pymatting is single-threaded, ``--threads`` sets torch's threads).

Peak memory is measured in a fresh subprocess on one ``--memory-size`` composite (uint8 image,
float32 alpha): the peak RSS (CPU) or ``max_memory_allocated`` (CUDA) during
``estimate_foreground``, less the memory in use before it (the inputs).

Usage::

    python tools/foreground_benchmark.py --size 2048 --composites 6 --threads 1 \\
        --memory-size 4872x6017 --json output/foreground.json

Prints a Markdown table per composite and the summary ratios (error vs pymatting, error vs the
naive estimate, speed-up over pymatting, memory increment).
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "_bootstrap.py"))

from data.synthetic import make_composite
from evaluation.foreground_error import foreground_error
from predictor.foreground import estimate_foreground
from utils.benchmark import parse_size
from utils.file_io import atomic_write
from utils.levels import UINT8_MAX
from utils.memory import MIB, configure_malloc, current_memory_bytes, peak_memory_bytes

# Composite sides whose smaller copy is upscaled for the memory run, to keep its inputs cheap.
MEMORY_SOURCE_SIDE = 512


def _timed(repeats: int, fn, *args) -> tuple[np.ndarray, float]:
    """``fn(*args)`` and its fastest wall time over ``repeats`` runs (the least disturbed by
    other processes)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        seconds.append(time.perf_counter() - start)
    return result, min(seconds)


def compare(size: tuple[int, int], composites: int, device: str, repeats: int) -> dict:
    """Errors and times (fastest of ``repeats`` runs) of both methods, and the naive errors, on
    ``composites`` composites."""
    from pymatting import estimate_foreground_ml

    def ours(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        return estimate_foreground(image, alpha, device=device)

    def theirs(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        return estimate_foreground_ml(image.astype(np.float64), alpha.astype(np.float64))

    rows = []
    for seed in range(composites):
        image, alpha, fg = make_composite(seed, size)
        if seed == 0:  # warm-up: numba compilation, torch's allocator and thread pool
            ours(image, alpha)
            theirs(image, alpha)
        estimate, ours_s = _timed(repeats, ours, image, alpha)
        reference, theirs_s = _timed(repeats, theirs, image, alpha)
        rows.append(
            {
                "seed": seed,
                "fractional_share": float(((alpha > 0) & (alpha < 1)).mean()),
                "error": foreground_error(estimate, fg, alpha),
                "error_pymatting": foreground_error(reference, fg, alpha),
                "error_naive": foreground_error(image, fg, alpha),
                "seconds": ours_s,
                "seconds_pymatting": theirs_s,
            }
        )
    mean = {key: statistics.fmean(row[key] for row in rows) for key in rows[0] if key != "seed"}
    return {
        "composites": rows,
        "mean": mean,
        "error_vs_pymatting": mean["error"] / mean["error_pymatting"],
        "error_vs_naive": mean["error"] / mean["error_naive"],
        "speedup_median": statistics.median(
            row["seconds_pymatting"] / row["seconds"] for row in rows
        ),
    }


def memory_worker(size: tuple[int, int], device: str) -> dict:
    """Peak memory increment of one ``estimate_foreground`` call (run in a fresh process)."""
    configure_malloc()
    height, width = size
    small, small_alpha, _ = make_composite(0, (MEMORY_SOURCE_SIDE, MEMORY_SOURCE_SIDE))
    image = cv2.resize(
        np.round(small * UINT8_MAX).astype(np.uint8), (width, height), cv2.INTER_LINEAR
    )
    alpha = cv2.resize(small_alpha, (width, height), interpolation=cv2.INTER_LINEAR)
    target = torch.device(device)
    if target.type == "cuda":
        torch.cuda.reset_peak_memory_stats(target)
    before = current_memory_bytes(target)
    start = time.perf_counter()
    estimate_foreground(image, alpha, device=target)
    seconds = time.perf_counter() - start
    peak = peak_memory_bytes(target)
    return {
        "size": [height, width],
        "device": device,
        "before_mib": before / MIB,
        "peak_mib": peak / MIB,
        "increment_mib": (peak - before) / MIB,
        "seconds": seconds,
    }


def _memory_in_subprocess(size: tuple[int, int], device: str) -> dict:
    command = [sys.executable, __file__, "--memory-worker", f"{size[0]}x{size[1]}"]
    command += ["--device", device]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _markdown(report: dict) -> str:
    lines = [
        "| composite | fractional px | error | pymatting | naive F = I | s | pymatting s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["composites"]:
        lines.append(
            f"| {row['seed']} | {100 * row['fractional_share']:.1f} % | {row['error']:.4f} "
            f"| {row['error_pymatting']:.4f} | {row['error_naive']:.4f} | {row['seconds']:.2f} "
            f"| {row['seconds_pymatting']:.2f} |"
        )
    mean = report["mean"]
    lines.append(
        f"| mean | {100 * mean['fractional_share']:.1f} % | {mean['error']:.4f} "
        f"| {mean['error_pymatting']:.4f} | {mean['error_naive']:.4f} | {mean['seconds']:.2f} "
        f"| {mean['seconds_pymatting']:.2f} |"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=(2048, 2048), help="N or HxW")
    parser.add_argument("--composites", type=int, default=6, help="composites compared")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per method and composite (fastest kept)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument("--device", default="cpu", help="device of estimate_foreground")
    parser.add_argument(
        "--memory-size",
        type=parse_size,
        default=None,
        help="also measure the peak memory on one composite of this size (N or HxW)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--memory-worker", type=parse_size, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Compare with pymatting (and measure the memory) as asked."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_worker is not None:
        print(json.dumps(memory_worker(args.memory_worker, args.device)))
        return
    report = compare(args.size, args.composites, args.device, args.repeats)
    report.update(
        size=list(args.size),
        device=args.device,
        threads=torch.get_num_threads(),
        load_avg=list(os.getloadavg()),
    )
    print(_markdown(report))
    print(
        f"error vs pymatting {report['error_vs_pymatting']:.2f}x, vs naive "
        f"{report['error_vs_naive']:.2f}x; speed-up over pymatting (median) "
        f"{report['speedup_median']:.2f}x ({report['threads']} torch threads)"
    )
    if args.memory_size is not None:
        report["memory"] = _memory_in_subprocess(args.memory_size, args.device)
        memory = report["memory"]
        print(
            f"memory at {memory['size'][0]}x{memory['size'][1]}: +{memory['increment_mib']:.0f} "
            f"MiB over the inputs (peak {memory['peak_mib']:.0f} MiB, {memory['seconds']:.1f} s)"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(report, indent=2)
        atomic_write(args.json, lambda file: file.write(text.encode()))


if __name__ == "__main__":
    main()
