"""What the benchmark tools share: sizes on the command line, the machine's name, timed runs with
their wall and CPU seconds and peak memory, one measurement per fresh process (``--worker SPEC``),
and the reports they write (JSON and Markdown, atomically).

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

import torch

from utils.file_io import atomic_write
from utils.memory import MIB, current_memory_bytes, peak_memory_bytes

__all__ = [
    "StageSeconds",
    "add_run_arguments",
    "cpu_name",
    "parse_size",
    "run_in_subprocess",
    "timed_runs",
    "write_report",
]


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
