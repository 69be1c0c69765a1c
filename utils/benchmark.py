"""What the benchmark tools share: sizes on the command line, the machine's name, timed runs with
their wall and CPU seconds and peak memory, one measurement per fresh process (``--worker SPEC``),
the official code measured in the same run (``../shared/official-bench``), and the reports they
write (JSON and Markdown, atomically).

Every measurement runs in its own interpreter so that its peak memory is its own; timings are
medians over ``repeats`` calls after ``warmup`` untimed ones.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch

from utils.file_io import atomic_write
from utils.memory import MIB, current_memory_bytes, peak_memory_bytes

__all__ = [
    "OFFICIAL_BENCH",
    "StageSeconds",
    "add_run_arguments",
    "cpu_name",
    "official_table",
    "parse_size",
    "run_in_subprocess",
    "run_official_pair",
    "timed_runs",
    "write_report",
]

# The side-by-side harness of the shared folder beside the checkout (its README): the official
# code's forward + clamp, and this project's predictor call, on one scene with one set of weights.
OFFICIAL_BENCH = Path(__file__).resolve().parents[2] / "shared" / "official-bench"
_RESULT_PREFIX = "RESULT "


class StageSeconds(Protocol):
    """Seconds per stage of the latest call (e.g. backbone and decoder), reset before each."""

    seconds: dict[str, float]

    def reset(self) -> None: ...


def parse_size(text: str) -> tuple[int, int]:
    """``"2048"`` -> (2048, 2048); ``"4872x6017"`` -> (4872, 6017) (height x width)."""
    parts = text.lower().split("x")
    if len(parts) == 1:
        return int(parts[0]), int(parts[0])
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"size {text!r} is not N or HxW")
    return int(parts[0]), int(parts[1])


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, with the core count (else the platform's name)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    return platform.processor() or platform.machine()


def timed_runs(
    spec: dict,
    call: Callable[[], object],
    device: torch.device,
    timer: StageSeconds | None = None,
) -> dict:
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


def run_in_subprocess(script: Path, spec: dict, timeout: float | None) -> dict:
    """Run ``script --worker SPEC`` (the benchmark tool's worker) in a fresh interpreter; the
    last stdout line is its JSON result; failures become ``status: error``."""
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


def _realistic_run(command: list[str], env: dict[str, str], timeout: float | None) -> dict:
    """One ``perf_realistic.py`` run from the checkout (its project side reads it from the
    working folder): its ``RESULT`` line, or ``status: error``."""
    repo = Path(__file__).resolve().parents[1]
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=env, cwd=repo
        )
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"timeout after {timeout} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith(_RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        reason = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return {"status": "error", "error": reason[0]}
    return json.loads(lines[-1][len(_RESULT_PREFIX) :])


def run_official_pair(
    official_dir: Path,
    size: tuple[int, int],
    unknown: float,
    cap: int | None,
    weights: str,
    folder: Path,
    timeout: float | None = None,
) -> dict:
    """The official forward + clamp and this project's predictor call on the same scene with the
    same weights, one after the other in fresh processes (``perf_realistic.py``): the official
    side writes its weights to ``weights``, the project side loads them.

    Args:
        official_dir: the tree and venv of ``OFFICIAL_BENCH/setup.sh``.
        size: ``(H, W)``.
        unknown: share of unknown pixels of the scene's trimap.
        cap: token cap (None: the harness's 25 % of the tokens).
        weights: where the official side writes its weights.
        folder: where the two 8-bit alphas go.
        timeout: seconds per side.

    Returns:
        ``{"size", "unknown", "cap", "official", "project", "ratio",
        "alpha_pixels_differing", "alpha_max_level_difference"}``.
    """
    script = str(OFFICIAL_BENCH / "perf_realistic.py")
    arguments = ["--size", "x".join(map(str, size)), "--unknown", str(unknown)]
    arguments += ["--cap", str(cap)] if cap is not None else []
    env = {
        **os.environ,
        "MEMATTE_OFFICIAL_DIR": str(official_dir / "MEMatte"),
        "DETECTRON2_SRC_DIR": str(official_dir / "detectron2"),
    }
    sides = {}
    for impl, python in (
        ("official", str(official_dir / "venv" / "bin" / "python")),
        ("project", sys.executable),
    ):
        alpha = folder / f"{impl}_{'x'.join(map(str, size))}_{unknown}.png"
        command = [
            python,
            script,
            "--impl",
            impl,
            *arguments,
            "--out",
            str(alpha),
            "--weights",
            weights,
        ]
        sides[impl] = _realistic_run(command, env, timeout)
        sides[impl]["alpha"] = alpha
    pair = {"size": list(size), "unknown": unknown, "cap": cap, "ratio": None}
    pair["alpha_pixels_differing"] = pair["alpha_max_level_difference"] = None
    if all(side.get("status") == "ok" for side in sides.values()):
        pair["ratio"] = sides["project"]["wall_s"] / sides["official"]["wall_s"]
        ours, theirs = (cv2.imread(str(sides[k]["alpha"]), cv2.IMREAD_UNCHANGED) for k in sides)
        levels = np.abs(ours.astype(int) - theirs.astype(int))
        pair["alpha_pixels_differing"] = int((levels > 0).sum())
        pair["alpha_max_level_difference"] = int(levels.max())
    for impl, side in sides.items():
        side.pop("alpha")
        pair[impl] = side
    return pair


def official_table(pairs: list[dict]) -> str:
    """Markdown rows of :func:`run_official_pair` results."""
    lines = [
        "| input (HxW) | unknown | cap | official forward + clamp s | official peak MiB "
        "| ours (predictor call) s | ours peak MiB | ratio | alpha pixels differing |",
        "|" + " --- |" * 9,
    ]
    for pair in pairs:
        official, ours = pair["official"], pair["project"]
        cells = ["x".join(map(str, pair["size"])), f"{100 * pair['unknown']:.0f} %"]
        cells.append(str(pair["cap"] or official.get("cap", "-")))
        for side in (official, ours):
            ok = side.get("status") == "ok"
            cells += [f"{side['wall_s']:.2f}", str(side["peak_rss_mib"])] if ok else ["error", "-"]
        ratio = pair["ratio"]
        cells += [f"{ratio:.2f}" if ratio is not None else "-", str(pair["alpha_pixels_differing"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
    **extra: object,
) -> None:
    """Write a benchmark tool's results: JSON (``schema``, creation time, command line, results,
    and the ``extra`` entries that are not None) to ``json_path`` and ``table(results)`` to
    ``markdown_path``, each where given, atomically."""
    report = {
        "schema": schema,
        "created": datetime.datetime.now(datetime.UTC).isoformat(),
        "argv": sys.argv,
        "results": results,
        **{key: value for key, value in extra.items() if value is not None},
    }

    def write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda file: file.write(text.encode()))

    if json_path is not None:
        write(json_path, json.dumps(report, indent=2) + "\n")
    if markdown_path is not None:
        write(markdown_path, table(results))
