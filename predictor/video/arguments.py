"""The video options of ``inference.py`` (:func:`add_video_arguments`) and the checks of their
combinations (:func:`check_video_arguments`). ``--video`` itself is one of ``inference.py``'s
inputs, next to ``--data-dir`` and ``--image``; ``--trimap`` / ``--mask`` (the first frame's
guidance), ``--unknown-width``, the ``--save-*`` and ``--composite`` outputs, ``--round``,
``--overwrite``, ``--num-gpus`` and ``--report`` are shared with images, and so are
``--segmenter``, ``--box`` and ``--point`` (:mod:`predictor.prompts`): the first frame's prompts,
and the weights propagation by SAM 2 runs.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

from data.trimap import AUTO_WIDTH
from predictor.video.kinds import ALPHA_BITS, VIDEO_KINDS
from predictor.video.propagators import DEFAULT_PROPAGATOR, PROPAGATORS, SEGMENTER_PROPAGATOR
from predictor.video.temporal import DEFAULT_STRENGTH, TEMPORAL_MODES

__all__ = ["add_video_arguments", "check_video_arguments"]

# Options only videos take (dest names), and the image options videos refuse.
_VIDEO_ONLY = ("trimap_dir", "mask_dir", "temporal", "temporal_strength", "propagate")
_VIDEO_ONLY += ("alpha_bits", "save_video", "fps")
_IMAGE_ONLY = {"layout": "--layout", "save_routing": "--save-routing"}


def _fps(text: str) -> Fraction:
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError("takes a rate such as 25, 29.97 or 30000/1001") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``inference.py --video`` (defaults are resolved by
    :func:`check_video_arguments`, so that their use without ``--video`` is caught)."""
    group = parser.add_argument_group("video (with --video)")
    group.add_argument(
        "--trimap-dir",
        type=Path,
        metavar="DIR",
        help="per-frame trimaps, matched by frame name or the number in it (a folder of clips: "
        "DIR/<clip>/); frames without one are propagated from the last one (keyframes)",
    )
    group.add_argument(
        "--mask-dir",
        type=Path,
        metavar="DIR",
        help="per-frame masks (e.g. another model's), made into trimaps with --unknown-width; "
        "matched and propagated as --trimap-dir",
    )
    group.add_argument(
        "--temporal",
        choices=TEMPORAL_MODES,
        help="off (default): each frame as the image predictor gives it; flow: blend each "
        "frame's unknown band with the previous output carried by optical flow where flow and "
        "colours agree",
    )
    group.add_argument(
        "--temporal-strength",
        type=float,
        metavar="S",
        help=f"with --temporal flow: the previous output's weight, in (0, 1] (default "
        f"{DEFAULT_STRENGTH})",
    )
    group.add_argument(
        "--propagate",
        choices=sorted(PROPAGATORS),
        help="how frames without guidance get a trimap from the last keyframe: flow (dense "
        "optical flow, no weights; the default) or sam2 (SAM 2's video model, --segmenter; the "
        "default with --segmenter)",
    )
    group.add_argument(
        "--alpha-bits",
        type=int,
        choices=ALPHA_BITS,
        help="bit depth of the pha/ PNGs (default 8, the official truncation)",
    )
    group.add_argument(
        "--save-video",
        nargs="+",
        choices=list(VIDEO_KINDS),
        metavar="KIND",
        help="also write videos per clip: alpha (alpha.mp4, H.264), composite (composite.mp4, "
        "over --composite), prores (rgba.mov, ProRes 4444 with alpha), webm (rgba.webm, VP9 "
        "with alpha), lossless (alpha.mkv, FFV1: decodes to the PNGs exactly)",
    )
    group.add_argument(
        "--fps",
        type=_fps,
        metavar="RATE",
        help="frame rate of the videos of a folder of frames (default 25; a video file keeps "
        "its frames' timestamps)",
    )


def _check_guidance(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The guidance of a clip: files (per frame, keyframes or the first frame's) or the first
    frame's prompts, and the propagator with its segmenter; sets ``args.propagate``."""
    prompted = args.box is not None or bool(args.point)
    firsts = args.trimap or args.mask
    folders = [value for value in (args.trimap_dir, args.mask_dir) if value is not None]
    if args.prompts is not None:
        parser.error(
            "--prompts maps images to prompts: a clip takes its first frame's --box / --point"
        )
    if prompted and args.segmenter is None:
        parser.error("--box and --point need a --segmenter")
    if prompted and (firsts or folders):
        parser.error(
            "--box / --point are the first frame's guidance: not with --trimap, --mask, "
            "--trimap-dir or --mask-dir"
        )
    if not prompted and not firsts and not folders:
        parser.error(
            "--video needs guidance: --trimap-dir or --mask-dir (per frame or keyframes), the "
            "first frame's --trimap or --mask, or --segmenter with its --box / --point"
        )
    if len(folders) > 1:
        parser.error("give --trimap-dir or --mask-dir, not both")
    if (args.mask or args.mask_dir) and (args.trimap or args.trimap_dir):
        parser.error("guidance of one kind: masks (--mask, --mask-dir) or trimaps")
    for flag, value in (("--trimap", args.trimap), ("--mask", args.mask)):
        if value and len(value) != 1:
            parser.error(f"{flag} with --video: one file, the first frame's")
    default = SEGMENTER_PROPAGATOR if args.segmenter is not None else DEFAULT_PROPAGATOR
    args.propagate = args.propagate or default
    if args.propagate == SEGMENTER_PROPAGATOR and args.segmenter is None:
        parser.error(
            f"--propagate {SEGMENTER_PROPAGATOR} needs --segmenter: SAM 2's video checkpoint (a "
            "hub id such as facebook/sam2.1-hiera-tiny, or a save_pretrained folder)"
        )
    if args.propagate != SEGMENTER_PROPAGATOR and args.segmenter is not None and not prompted:
        parser.error(
            f"--segmenter with --propagate {args.propagate} makes the first frame's mask from "
            f"--box / --point: give them, or propagate with --propagate {SEGMENTER_PROPAGATOR}"
        )


def check_video_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse video options without ``--video`` and bad combinations with it, then fill in the
    defaults (usage errors exit with status 2)."""
    if args.video is None:
        used = [name for name in _VIDEO_ONLY if getattr(args, name) is not None]
        if used:
            flags = ", ".join("--" + name.replace("_", "-") for name in used)
            parser.error(f"{flags}: video options, with --video")
        return
    for name, flag in _IMAGE_ONLY.items():
        if getattr(args, name):
            parser.error(f"{flag} is for images, not with --video")
    if args.batch_size != 1:
        parser.error("--batch-size: a clip's frames are matted one by one, in order")
    _check_guidance(parser, args)
    if "composite" in (args.save_video or ()) and args.composite is None:
        parser.error("--save-video composite needs --composite (a colour, an image or a video)")
    strength = DEFAULT_STRENGTH if args.temporal_strength is None else args.temporal_strength
    if not 0 < strength <= 1:
        parser.error("--temporal-strength must be in (0, 1]")
    if args.temporal_strength is not None and args.temporal != "flow":
        parser.error("--temporal-strength goes with --temporal flow")
    args.unknown_width = AUTO_WIDTH if args.unknown_width is None else args.unknown_width
    args.temporal = args.temporal or TEMPORAL_MODES[0]
    args.temporal_strength = strength
    args.alpha_bits = args.alpha_bits or ALPHA_BITS[0]
    args.save_video = tuple(dict.fromkeys(args.save_video or ()))
