"""``inference.py --video``: the clips of the command line, sharded over processes (each takes a
disjoint share of the clips, as folder runs share images), each matted by
:func:`predictor.video.pipeline.matte_clip` into ``OUT/<clip>/``, with one summary of the run
(the image runner's :class:`predictor.runner.Summary`, its items ``<clip>/<frame>``), its report
and exit status.

``--video`` takes video files, folders of frames, and folders of clips (their sub-folders of
frames and video files, sorted by name). Guidance folders of a run with several clips hold one
sub-folder per clip (``DIR/<clip>/``); ``--trimap`` / ``--mask`` and ``--box`` / ``--point``
(the first frame's) need a single clip, and prompts are checked against its first frame's size
before any model loads. ``--segmenter`` is loaded once per process, as the propagator uses it
(:func:`predictor.video.propagators.load_propagation_segmenter`).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from tqdm import tqdm

from data.clips import list_frames
from data.image_io import IMAGE_EXTENSIONS, BadSampleError
from predictor.items import check_not_an_input
from predictor.prompts import Prompts
from predictor.runner import (
    Summary,
    UsageError,
    build_predictor,
    check_model,
    check_output_dir,
    merge,
    parse_composite,
    run_command,
)
from predictor.video.frames import ClipOutputs
from predictor.video.guidance import ClipGuidance
from predictor.video.io import DEFAULT_FOLDER_FPS, ClipSource, open_clip
from predictor.video.pipeline import VideoSettings, matte_clip
from predictor.video.propagators import load_propagation_segmenter
from utils import comm
from utils.memory import peak_memory_bytes

__all__ = ["clip_paths", "run_video", "run_video_command"]

logger = logging.getLogger("inference")


def clip_paths(paths: list[str]) -> list[Path]:
    """The clips of ``--video``: each path a video file, a folder of frames, or a folder of
    clips (its sub-folders and other files, sorted).

    Raises:
        FileNotFoundError: a path does not exist.
        UsageError: two clips share a name (their outputs would overwrite each other).
    """
    clips: list[Path] = []
    for text in paths:
        path = Path(text)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such video file or folder")
        if path.is_file() or list_frames(path):
            clips.append(path)
            continue
        clips += sorted(p for p in path.iterdir() if not p.name.startswith("."))
    names: dict[str, Path] = {}
    for clip in clips:
        name = clip.stem if clip.is_file() else clip.name
        if name in names:
            raise UsageError(
                f"{names[name]} and {clip} are both clip {name!r}: outputs would clash"
            )
        names[name] = clip
    return clips


def _clip_name(path: Path) -> str:
    return path.stem if path.is_file() else path.name


def _guidance(args: argparse.Namespace, name: str, single: bool) -> ClipGuidance:
    """The guidance of clip ``name``: ``DIR/<clip>/`` of a guidance folder (``DIR`` itself for
    a single clip without such a sub-folder)."""
    folder = args.trimap_dir or args.mask_dir
    if folder is not None and (folder / name).is_dir():
        folder = folder / name
    elif folder is not None and not single:
        raise UsageError(f"{folder}: no sub-folder {name}/ with the guidance of clip {name}")
    first = args.trimap or args.mask
    is_mask = bool(args.mask or args.mask_dir)
    return ClipGuidance(
        folder, Path(first[0]) if first else None, is_mask, args.unknown_width, _prompts(args)
    )


def _prompts(args: argparse.Namespace) -> Prompts | None:
    """The first frame's ``--box`` / ``--point``, or None."""
    if args.box is None and not args.point:
        return None
    return Prompts(box=args.box, points=tuple(args.point or ()))


def _outputs(args: argparse.Namespace, name: str) -> ClipOutputs:
    return ClipOutputs(
        Path(args.output_dir) / name,
        alpha_bits=args.alpha_bits,
        foreground=args.save_foreground,
        rgba=args.save_rgba,
        composite=args.composite is not None,
        trimap=args.save_trimap,
        round_alpha=args.round,
    )


def _background(args: argparse.Namespace) -> object:
    """``--composite``: a colour, an image path, or a clip (a video or a folder of frames)."""
    value = parse_composite(args.composite) if args.composite is not None else None
    if value is None and args.composite is not None and Path(args.composite).is_dir():
        value = Path(args.composite)
    if isinstance(value, Path) and (value.is_dir() or value.suffix.lower() not in IMAGE_EXTENSIONS):
        return open_clip(value, args.fps or DEFAULT_FOLDER_FPS)
    return value


def _settings(args: argparse.Namespace, segmenter: object) -> VideoSettings:
    return VideoSettings(
        temporal=args.temporal,
        strength=args.temporal_strength,
        propagate=args.propagate,
        segmenter=segmenter,
        unknown_width=args.unknown_width,
        videos=args.save_video,
        overwrite=args.overwrite,
    )


def run_video(args: argparse.Namespace) -> tuple[Summary, list[Summary]]:
    """This process's share of the clips; returns the merged summary and each rank's.

    Raises:
        UsageError, FileNotFoundError, ValueError: a setup error.
    """
    start = time.perf_counter()
    rank, world = comm.get_rank(), comm.get_world_size()
    clips = clip_paths(args.video)
    share = clips[rank::world]
    summary = Summary()
    setup_error = None
    try:
        predictor = build_predictor(args) if share else None
        segmenter = None
        if predictor is not None and args.segmenter is not None:
            segmenter = load_propagation_segmenter(args.propagate, args.segmenter, predictor.device)
        background = _background(args)
        settings = _settings(args, segmenter)
        for path in share:
            name = _clip_name(path)
            try:
                source: ClipSource = open_clip(path, args.fps or DEFAULT_FOLDER_FPS)
                guidance = _guidance(args, name, len(clips) == 1)
            except BadSampleError as exc:
                summary.fail(exc.path, exc.reason)
                continue
            except (ValueError, FileNotFoundError) as exc:
                summary.fail(path, str(exc))
                continue
            logger.info("clip %s: %dx%d at %s fps", name, source.width, source.height, source.rate)
            with tqdm(desc=name, unit="frame", disable=not comm.is_main_process()) as bar:
                result = matte_clip(
                    predictor,
                    source,
                    guidance,
                    _outputs(args, name),
                    settings,
                    background,
                    progress=lambda _: bar.update(),
                )
            summary = merge([summary, result])
        if predictor is not None:
            summary.peak_memory_bytes = peak_memory_bytes(predictor.device)
    except (UsageError, FileNotFoundError, ValueError) as exc:
        setup_error = str(exc)
    summary.wall_seconds = time.perf_counter() - start
    gathered = comm.all_gather((summary, setup_error))
    errors = sorted({error for _, error in gathered if error is not None})
    if errors:
        raise ValueError("; ".join(errors))
    ranks = [rank_summary for rank_summary, _ in gathered]
    return merge(ranks), ranks


def _check_setup(args: argparse.Namespace) -> None:
    """Setup errors found before any process or model starts."""
    clips = clip_paths(args.video)
    if not clips:
        raise UsageError(f"--video {' '.join(args.video)}: no clip")
    if (args.trimap or args.mask) and len(clips) > 1:
        raise UsageError(
            "--trimap / --mask give the first frame of one clip: use --trimap-dir or --mask-dir"
        )
    prompts = _prompts(args)
    if prompts is not None:
        if len(clips) > 1:
            raise UsageError("--box / --point give the first frame of one clip, not of several")
        try:
            source = open_clip(clips[0], args.fps or DEFAULT_FOLDER_FPS)
        except BadSampleError as exc:
            raise UsageError(f"{exc.path}: {exc.reason}") from exc
        prompts.check_inside((source.height, source.width), f"the first frame of {clips[0]}")
    for path in [*(args.trimap or ()), *(args.mask or ())]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such file")
    for folder in (args.trimap_dir, args.mask_dir):
        if folder is not None and not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such guidance folder")
    check_model(args)
    check_not_an_input(args, Path(args.output_dir), "output folder")
    check_output_dir(Path(args.output_dir))
    try:
        _background(args)
    except BadSampleError as exc:
        raise UsageError(f"--composite: {exc}") from exc


def run_video_command(args: argparse.Namespace) -> int:
    """The whole run of ``inference.py --video``: :func:`predictor.runner.run_command` with the
    video setup checks and :func:`run_video`; returns the exit status (0, 1 or 2)."""
    return run_command(args, check=_check_setup, run_share=run_video)
