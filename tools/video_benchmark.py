"""Measurements of the video path (``inference.py --video``), on synthetic clips.

Subcommands (each prints a Markdown table; ``--json FILE`` also writes the numbers):

- ``quality``: dtSSD and SAD/MSE/Grad/Conn (unknown band, mean over clips) of ``--temporal off``
  and ``flow`` on synthetic clips with per-frame trimaps, with a config and checkpoint (default:
  the tiny demo model);
- ``propagation``: the share of each frame's fractional ground truth inside the unknown band of
  the trimaps propagated from the first frame's mask (the worst frame of each clip and the mean),
  and the band's share of the frame, for flow propagation, a plain warp of the mask, and each
  frame's own true mask;
- ``speed``: frames per second of the image predictor called per frame in a loop and of the
  pipeline (``--temporal off`` and ``flow``), seeded random weights of ``--model`` (ViT-S by
  default) on a realistic trimap (10 % unknown), 1920x1080 by default. Time it on an idle
  machine only;
- ``memory``: RSS after frame 50 and after the last frame while the pipeline streams a long clip
  (flow propagation, or SAM 2's with ``--segmenter`` (a SAM 2 video checkpoint), ``--temporal
  flow``, RGBA PNGs and a lossless video), and the peak.

Usage::

    python tools/video_benchmark.py quality --frames 12
    python tools/video_benchmark.py propagation --frames 12 --unknown-width 8
    python tools/video_benchmark.py speed --size 1080x1920 --frames 20
    python tools/video_benchmark.py memory --size 360x640 --frames 300
    python tools/video_benchmark.py memory --frames 300 --segmenter facebook/sam2.1-hiera-tiny
"""

from __future__ import annotations

import argparse
import json
import logging
import runpy
import tempfile
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "_bootstrap.py"))

import numpy as np

from data.synthetic import DEFAULT_UNKNOWN
from data.synthetic_clips import ClipMotion
from data.trimap import unknown_width_argument
from evaluation.video_quality import propagation_recall, temporal_quality
from predictor.matting import MattingPredictor
from predictor.profiling import MODEL_SIZES, build_model
from predictor.video.benchmark import (
    loop_seconds,
    memory_profile,
    pipeline_seconds,
    write_memory_clip,
    write_speed_clip,
)
from predictor.video.sam2_propagation import load_video_segmenter
from predictor.video.temporal import DEFAULT_STRENGTH
from utils.benchmark import parse_size
from utils.file_io import atomic_write
from utils.memory import MIB

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO_ROOT / "configs" / "tiny" / "MEMatte_tiny_synthetic.py"
DEMO_CHECKPOINT = REPO_ROOT / "pretrained" / "demo" / "MEMatte_tiny_synthetic.pth"
# Frames after which the memory run's RSS is compared with its end (the warm-up is over).
MEMORY_FIRST_SAMPLE = 50
PERCENT = 100.0

logger = logging.getLogger("video_benchmark")


def _motion(args: argparse.Namespace) -> ClipMotion:
    return ClipMotion(
        subject_speed=args.speed,
        rotation=args.rotation,
        sway=args.sway,
        background_speed=args.background_speed,
    )


def _quality(args: argparse.Namespace) -> tuple[str, dict]:
    predictor = MattingPredictor.from_config(args.config_file, args.checkpoint, device=args.device)
    means = temporal_quality(
        predictor, list(range(args.clips)), args.size, args.frames, _motion(args), args.strength
    )
    lines = [
        "| --temporal | dtSSD (x1e2) | SAD (/1e3) | MSE (x1e3) | Grad (/1e3) | Conn (/1e3) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for mode, m in means.items():
        lines.append(
            f"| {mode} | {m['dtssd']:.3f} | {m['sad']:.4f} | {m['mse']:.3f} | {m['grad']:.4f} "
            f"| {m['conn']:.4f} |"
        )
    off, flow = means["off"], means["flow"]
    lines.append(
        f"\nflow vs off: dtSSD {PERCENT * (flow['dtssd'] / off['dtssd'] - 1):+.1f} %, "
        f"SAD {PERCENT * (flow['sad'] / off['sad'] - 1):+.1f} %"
    )
    return "\n".join(lines), means


def _propagation(args: argparse.Namespace) -> tuple[str, dict]:
    per_clip = [
        propagation_recall(seed, args.size, args.frames, _motion(args), args.unknown_width)
        for seed in range(args.clips)
    ]
    lines = [
        "| trimaps | worst frame's recall (mean over clips) | worst frame, worst clip | mean "
        "recall | band (share of the frame) |",
        "| --- | --- | --- | --- | --- |",
    ]
    record = {}
    for method in per_clip[0]:
        worst = [min(clip[method].recall) for clip in per_clip]
        mean = float(np.mean([np.mean(clip[method].recall) for clip in per_clip]))
        band = float(np.mean([np.mean(clip[method].band) for clip in per_clip]))
        record[method] = {"worst": worst, "mean": mean, "band": band}
        lines.append(
            f"| {method} | {PERCENT * np.mean(worst):.1f} % | {PERCENT * min(worst):.1f} % | "
            f"{PERCENT * mean:.1f} % | {PERCENT * band:.1f} % |"
        )
    return "\n".join(lines), record


def _speed(args: argparse.Namespace) -> tuple[str, dict]:
    predictor = MattingPredictor(build_model(args.model, "mematte", [], 0), device=args.device)
    with tempfile.TemporaryDirectory(prefix="mematte-video-speed-") as tmp:
        folder = Path(tmp)
        write_speed_clip(folder / "clip", args.size, args.frames, args.unknown)
        pipeline_seconds(predictor, folder / "clip", folder / "warmup", "off")  # warm-up
        seconds = {
            "loop": loop_seconds(predictor, folder / "clip", folder / "loop"),
            "pipeline, --temporal off": pipeline_seconds(
                predictor, folder / "clip", folder / "off", "off"
            ),
            "pipeline, --temporal flow": pipeline_seconds(
                predictor, folder / "clip", folder / "flow", "flow"
            ),
        }
    fps = {name: args.frames / value for name, value in seconds.items()}
    lines = ["| run | frames per second | vs loop |", "| --- | --- | --- |"]
    for name, value in fps.items():
        lines.append(f"| {name} | {value:.3f} | {value / fps['loop']:.2f} |")
    return "\n".join(lines), {"seconds": seconds, "fps": fps}


def _memory(args: argparse.Namespace) -> tuple[str, dict]:
    if args.model == "tiny":
        predictor = MattingPredictor.from_config(DEMO_CONFIG, DEMO_CHECKPOINT, device=args.device)
    else:
        predictor = MattingPredictor(build_model(args.model, "mematte", [], 0), device=args.device)
    segmenter = None
    if args.segmenter is not None:
        segmenter = load_video_segmenter(args.segmenter, device=predictor.device)
    first = min(MEMORY_FIRST_SAMPLE, args.frames - 1)
    with tempfile.TemporaryDirectory(prefix="mematte-video-memory-") as tmp:
        folder = Path(tmp)
        write_memory_clip(folder / "clip.mkv", folder / "mask.png", args.size, args.frames)
        result = memory_profile(
            predictor,
            folder / "clip.mkv",
            folder / "mask.png",
            folder / "out",
            (first, args.frames - 1),
            segmenter,
        )
    rss = result["rss_after_frame"]
    growth = (rss[args.frames - 1] - rss[first]) / MIB
    lines = [
        "| RSS after frame | MiB |",
        "| --- | --- |",
        *(f"| {index} | {value / MIB:.0f} |" for index, value in sorted(rss.items())),
        f"| growth | {growth:+.1f} |",
        f"| peak | {result['peak'] / MIB:.0f} |",
    ]
    record = {"rss_mib": {i: v / MIB for i, v in rss.items()}, "growth_mib": growth}
    return "\n".join(lines), record | {"peak_mib": result["peak"] / MIB}


COMMANDS = {"quality": _quality, "propagation": _propagation, "speed": _speed, "memory": _memory}


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=list(COMMANDS))
    parser.add_argument("--size", type=parse_size, metavar="HxW", help="frame size")
    parser.add_argument("--frames", type=int, default=12, help="frames per clip")
    parser.add_argument("--clips", type=int, default=4, help="clips (quality, propagation)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config-file", type=Path, default=DEMO_CONFIG, help="quality's model")
    parser.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT, help="its weights")
    parser.add_argument(
        "--model",
        choices=[*MODEL_SIZES, "tiny"],
        default="S",
        help="speed and memory: random MEMatte weights of this size (memory: tiny = the demo)",
    )
    parser.add_argument("--unknown", type=float, default=DEFAULT_UNKNOWN, help="speed's band")
    parser.add_argument(
        "--unknown-width", type=unknown_width_argument, default=8, help="propagation's band"
    )
    parser.add_argument("--strength", type=float, default=DEFAULT_STRENGTH, help="flow mode")
    parser.add_argument(
        "--segmenter",
        metavar="ID_OR_DIR",
        help="memory: propagate by SAM 2 with this video checkpoint (hub id or folder)",
    )
    motion = parser.add_argument_group("clip motion, per frame (quality, propagation)")
    motion.add_argument("--speed", type=float, default=1.0, help="subject, px")
    motion.add_argument("--rotation", type=float, default=0.0, help="subject, degrees")
    motion.add_argument("--sway", type=float, default=0.0, help="deformation amplitude, px")
    motion.add_argument("--background-speed", type=float, default=0.5, help="pan, px")
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON")
    return parser


DEFAULT_SIZES = {"speed": (1080, 1920), "memory": (360, 640)}
SMALL_SIZE = (192, 256)


def main(argv: list[str] | None = None) -> None:
    """Run one measurement and print its table."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args.size = args.size or DEFAULT_SIZES.get(args.command, SMALL_SIZE)
    table, record = COMMANDS[args.command](args)
    print(table, flush=True)
    if args.json is not None:
        text = json.dumps({"command": args.command, "size": args.size, **record}, indent=2)
        atomic_write(args.json, lambda file: file.write(text.encode()))


if __name__ == "__main__":
    main()
