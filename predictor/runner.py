"""Folder and shard runs of ``inference.py``: the items of a test-set folder or of a list of
images (:mod:`predictor.items`), decoded ahead of the model by loader processes, predicted
(same-sized images batched), their outputs written by a background writer
(:class:`predictor.outputs.Outputs`), and one summary of the run (``--report``), merged over the
processes of a sharded run.

Prompt items (``--segmenter``) get their mask from the segmenter, and the trimap made from it,
in the main process of each rank, before the forward.

Files already in the output folder are skipped unless ``overwrite``, so an interrupted run resumes;
a bad item is reported with its path and the run goes on; an optional output that cannot be
written is reported on its own, its item's alpha kept. The functions take the parsed command line
of ``inference.py`` (an ``argparse.Namespace``).

The run of one process needs no PyTorch with ``--onnx``: images travel as numpy arrays and both
predictors take them. PyTorch is imported where only it can serve: the PyTorch predictor, the
segmenter (``--segmenter``), the foreground colours (``--save-foreground``, ``--save-rgba``,
``--composite``) and the processes of a sharded run.

``--report`` always describes the run that ended last: a run refused at setup removes an earlier
report; a run that starts writes ``{"complete": false, ...}`` at once, replaced atomically by the
summary when it ends (``"complete": true``), or by the failure (``"complete": false`` with its
``exit_code`` and ``error``) when a setup error stops it or a process dies.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import importlib.util
import itertools
import json
import logging
import multiprocessing
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from threading import BoundedSemaphore
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from predictor.items import Item, ItemSamples, UsageError, check_not_an_input, collect_items
from predictor.onnx_predictor import OnnxMattingPredictor, check_deployment, onnx_providers
from predictor.outputs import Outputs, parse_colour
from predictor.prediction import ImagePredictor
from utils import comm
from utils.file_io import atomic_write
from utils.memory import MIB, peak_memory_bytes
from utils.progress import logging_above_progress_bar
from utils.visualizer import routing_figure

if TYPE_CHECKING:
    from predictor.segmenter import Segmenter

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Summary",
    "build_predictor",
    "check_model",
    "check_model_options",
    "check_setup",
    "exit_code",
    "make_outputs",
    "merge",
    "parse_composite",
    "process_main",
    "run_command",
    "report",
    "run",
    "run_shard",
]

logger = logging.getLogger("inference")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Items whose outputs may wait for the background writer at once (each holds its image and
# outputs in memory; 2 keeps a 6K run's memory bounded while decoding, compute and writing
# overlap).
MAX_PENDING_WRITES = 2
# Images decoded ahead of the model by each loader process.
PREFETCH_PER_WORKER = 2


@dataclass
class Summary:
    """What one process (or, merged, the whole run) did."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}
    model_seconds: float = 0.0
    wall_seconds: float = 0.0
    peak_memory_bytes: int = 0
    routed_share_sums: dict[int, float] = field(default_factory=lambda: defaultdict(float))

    def fail(self, path: Path | str, reason: str) -> None:
        """Record (and log) a failed item."""
        logger.error("failed: %s: %s", path, reason)
        self.failed.append({"path": str(path), "reason": reason})

    def record(self) -> dict:
        """The JSON record of this summary (``--report``)."""
        done = len(self.done)
        return {
            "done": done,
            "skipped": len(self.skipped),
            "failed": self.failed,
            "done_items": sorted(self.done),
            "skipped_items": sorted(self.skipped),
            "seconds_per_image": self.wall_seconds / done if done else None,
            "model_seconds_per_image": self.model_seconds / done if done else None,
            "peak_memory_bytes": self.peak_memory_bytes,
            "routed_share": {
                str(block): total / done for block, total in sorted(self.routed_share_sums.items())
            }
            if done
            else {},
        }


def merge(summaries: list[Summary]) -> Summary:
    """One summary of the ranks' summaries (peak memory: the largest)."""
    merged = Summary()
    for summary in summaries:
        merged.done += summary.done
        merged.skipped += summary.skipped
        merged.failed += summary.failed
        merged.model_seconds += summary.model_seconds
        merged.wall_seconds = max(merged.wall_seconds, summary.wall_seconds)
        merged.peak_memory_bytes = max(merged.peak_memory_bytes, summary.peak_memory_bytes)
        for block, total in summary.routed_share_sums.items():
            merged.routed_share_sums[block] += total
    return merged


# --- inputs and outputs ----------------------------------------------------------------------


def _segment(sample: dict, item: Item, segmenter: Segmenter, unknown_width: float | str) -> dict:
    """A prompt item's sample with the segmenter's mask and the trimap made from it (run in the
    main process, where the segmenter is); a failure becomes ``{"error": ..., "path": ...}``."""
    try:
        image = sample["image"].transpose(1, 2, 0)  # [3, H, W] -> [H, W, 3]
        guidance = segmenter.guidance(image, item.prompts, unknown_width)
    except (ValueError, RuntimeError) as exc:  # prompts outside the image, out of memory
        return {"index": sample["index"], "error": f"segmenter: {exc}", "path": str(item.image)}
    return {**sample, "mask": guidance.mask, "trimap": guidance.trimap[None]}


def _decoded(
    samples: ItemSamples, workers: int, initializer: Callable[[], None] | None = None
) -> Iterator[dict]:
    """``samples`` in order, decoded ahead by ``workers`` processes (forked where the OS can:
    spawned ones would import everything again; each runs ``initializer`` first) with
    ``PREFETCH_PER_WORKER`` images each in flight; in this process with ``workers=0``."""
    if not workers:
        yield from (samples[i] for i in range(len(samples)))
        return
    fork = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    context = multiprocessing.get_context(fork)
    indexes = iter(range(len(samples)))
    with ProcessPoolExecutor(workers, mp_context=context, initializer=initializer) as pool:
        ahead = itertools.islice(indexes, workers * PREFETCH_PER_WORKER)
        pending = collections.deque(pool.submit(samples.__getitem__, i) for i in ahead)
        while pending:
            sample = pending.popleft().result()
            following = next(indexes, None)  # one more in flight for each one taken
            if following is not None:
                pending.append(pool.submit(samples.__getitem__, following))
            yield sample


def parse_composite(value: str | None) -> np.ndarray | Path | None:
    """``--composite``: an RGB colour (:func:`predictor.outputs.parse_colour`, uint8 ``[3]``) or
    a background image path.

    Raises:
        UsageError: neither a colour nor an existing file.
    """
    if value is None:
        return None
    try:
        return parse_colour(value)
    except ValueError:
        if not Path(value).is_file():
            raise UsageError(
                f"--composite {value}: neither a colour like #00ff00 nor an image file"
            ) from None
        return Path(value)


def check_output_dir(path: Path) -> None:
    """An output folder must be a writable folder, or creatable in a writable one.

    Raises:
        UsageError: it is a file, or cannot be written.
    """
    if path.exists() and not path.is_dir():
        raise UsageError(f"output folder {path} exists and is not a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"output folder {path}: {existing} is not writable")


def _create_folders(folders: list[Path]) -> list[Path]:
    """Create the missing output folders; return those it created (parents first)."""
    created = []
    for folder in folders:
        missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
        folder.mkdir(parents=True, exist_ok=True)
        created += [p for p in missing if p not in created]
    return created


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders this run created that it left empty (deepest first)."""
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): keep it
            continue


# --- the run of one process ------------------------------------------------------------------


def _torch_module(name: str):
    """A module that needs PyTorch, imported where only it can serve (see the module
    docstring): an onnxruntime run of one process imports none of them."""
    return importlib.import_module(name)


def launch(main_func: Callable[..., None], num_processes: int, args: tuple) -> None:
    """``main_func(*args)`` in every process of the run: :func:`engine.launch.launch` for
    several processes or under torchrun, this process alone otherwise (without importing
    PyTorch: a run with --onnx needs none)."""
    if num_processes == 1 and not comm.under_torchrun():
        main_func(*args)
    else:
        _torch_module("engine.launch").launch(main_func, num_processes, args=args)


def _cpu_share(args: argparse.Namespace) -> int:
    """Threads of each CPU process of a sharded run: they share the machine's cores."""
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", args.num_gpus))
    return max(1, (os.cpu_count() or 1) // local_processes)


def _device(args: argparse.Namespace) -> str:
    """This process's device: the GPU of its local rank in sharded CUDA runs."""
    sharded_gpu = comm.get_world_size() > 1 and args.device != "cpu"
    if sharded_gpu and _torch_module("torch").cuda.is_available():
        return f"cuda:{comm.get_local_rank()}"
    return args.device


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """A batch of same-sized arrays (a view for one: no copy of a large image)."""
    return arrays[0][None] if len(arrays) == 1 else np.stack(arrays)


def build_predictor(args: argparse.Namespace) -> ImagePredictor:
    """The model of this process: the exported deployment (--onnx) or the config and
    checkpoint."""
    if args.onnx is not None:
        threads = _cpu_share(args) if comm.get_world_size() > 1 else None
        return OnnxMattingPredictor(
            args.onnx,
            device=_device(args),
            max_number_token=args.max_number_token,
            threads=threads,
        )
    return _torch_module("predictor.matting").MattingPredictor.from_config(
        args.config_file,
        args.checkpoint,
        device=_device(args),
        precision=args.precision,
        max_number_token=args.max_number_token,
        patch_decoder=args.patch_decoder,
        overrides=args.opts,
        trust_checkpoint=args.trust_checkpoint,
    )


def run_shard(
    args: argparse.Namespace, items: list[Item], outputs: Outputs, summary: Summary
) -> None:
    """Predict this rank's pending items into ``outputs`` (the predictor built here).

    Raises:
        FileNotFoundError, ValueError: the model cannot be built or its weights loaded.
    """
    predictor = build_predictor(args)
    segmenter: Segmenter | None = None
    if args.segmenter:
        load_segmenter = _torch_module("predictor.segmenter").load_segmenter
        segmenter = load_segmenter(args.segmenter, device=predictor.device)
    foreground = _torch_module("predictor.foreground") if outputs.needs_foreground else None
    samples = ItemSamples(items, args.unknown_width, args.max_pixels, args.snap_trimap)
    writes: list[tuple[str, Path, Future]] = []
    slots = BoundedSemaphore(MAX_PENDING_WRITES)
    buckets: dict[tuple[int, int], list[dict]] = defaultdict(list)
    with (
        logging_above_progress_bar() as forward_logs,  # loaders' warnings above the bar too
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer") as writer,
    ):
        loader = _decoded(samples, args.workers, forward_logs)

        def predict(batch: list[dict]) -> None:
            start = time.perf_counter()
            try:
                prediction = predictor.predict_levels(
                    *(_stack([s[key] for s in batch]) for key in ("image", "trimap"))
                )
            except RuntimeError as exc:  # out of memory, or another failure of the forward
                for sample in batch:
                    summary.fail(items[sample["index"]].image, f"inference failed: {exc}")
                return
            summary.model_seconds += time.perf_counter() - start
            for i, sample in enumerate(batch):
                item = items[sample["index"]]
                alpha = prediction.alpha[i]
                routing = prediction.routing(i)
                for block, keep in routing.keep.items():
                    summary.routed_share_sums[block] += float(keep.mean())
                colours = None
                if foreground is not None:
                    image_hwc = sample["image"].transpose(1, 2, 0)  # [3, H, W] -> [H, W, 3]
                    estimated = foreground.estimate_foreground(
                        image_hwc, alpha, device=predictor.device
                    )
                    # 8-bit RGB: what the files hold, a quarter of the memory while queued
                    colours = foreground.foreground_to_uint8(estimated)
                    del estimated
                figure = None
                if outputs.routing:

                    def figure(image=sample["image"], routing=routing) -> np.ndarray:
                        return routing_figure(
                            image.transpose(1, 2, 0),
                            list(routing.keep.values()),
                            list(routing.keep),
                            probabilities=list(routing.probability.values()),
                        )

                slots.acquire()
                future = writer.submit(
                    outputs.write,
                    item.name,
                    alpha,
                    sample["trimap"],
                    colours,
                    figure,
                    mask=sample.get("mask"),
                )
                future.add_done_callback(lambda _: slots.release())
                writes.append((item.name, item.image, future))

        progress = tqdm(
            loader,
            total=len(items),
            desc="inference",
            unit="img",
            disable=not comm.is_main_process(),
        )
        for sample in progress:
            if segmenter is not None and "error" not in sample:
                sample = _segment(sample, items[sample["index"]], segmenter, args.unknown_width)
            if "error" in sample:
                summary.fail(sample["path"], sample["error"])
                continue
            bucket = buckets[tuple(sample["image"].shape[-2:])]
            bucket.append(sample)
            if len(bucket) == args.batch_size:
                predict(bucket)
                bucket.clear()
        for bucket in buckets.values():
            if bucket:
                predict(bucket)
    for name, image_path, future in writes:  # the writer has finished: collect its outcomes
        error = future.exception()
        if error is not None:
            summary.fail(image_path, f"cannot write its alpha: {error}")
            continue
        summary.done.append(name)
        for path, reason in future.result():  # optional outputs that failed (the alpha is kept)
            summary.fail(path, f"not written ({reason}); the alpha of {name} was written")
    summary.peak_memory_bytes = peak_memory_bytes(predictor.device)


def make_outputs(args: argparse.Namespace) -> Outputs:
    """The outputs the command line asks for."""
    return Outputs(
        Path(args.output_dir),
        routing=args.save_routing,
        foreground=args.save_foreground,
        rgba=args.save_rgba,
        composite=parse_composite(args.composite),
        trimap=args.save_trimap,
        mask=args.save_trimap and args.segmenter is not None,
        round_alpha=args.round,
        max_pixels=args.max_pixels,
    )


def run(args: argparse.Namespace) -> tuple[Summary, list[Summary]]:
    """This process's share of the run (all of it in one process).

    Returns:
        the merged summary of all ranks and the summary of each rank (every rank gets both).

    Raises:
        UsageError, FileNotFoundError, ValueError: a setup error (raised on every rank).
    """
    start = time.perf_counter()
    rank, world = comm.get_rank(), comm.get_world_size()
    items, missing = collect_items(args)
    outputs = make_outputs(args)
    summary = Summary()
    if rank == 0:
        for entry in missing:
            summary.fail(entry["path"], entry["reason"])
    share = items[rank::world]  # deterministic and disjoint: the sorted items, round robin
    pending = []
    for item in share:
        if not args.overwrite and outputs.complete(item.name):
            summary.skipped.append(item.name)
        else:
            pending.append(item)
    where = f"rank {rank} of {world}: " if world > 1 else ""
    logger.info("%s%d images, %d to predict", where, len(share), len(pending))

    created: list[Path] = []
    setup_error = None
    if any(comm.all_gather(bool(pending))):
        if rank == 0:
            created = _create_folders(outputs.folders)
        comm.synchronize()
        if pending:
            try:
                run_shard(args, pending, outputs, summary)
            except (FileNotFoundError, ValueError) as exc:  # the same on every rank
                setup_error = str(exc)
    summary.wall_seconds = time.perf_counter() - start
    gathered = comm.all_gather((summary, setup_error))
    if rank == 0:
        _remove_if_empty(created)
    errors = sorted({error for _, error in gathered if error is not None})
    if errors:
        raise ValueError("; ".join(errors))
    ranks = [rank_summary for rank_summary, _ in gathered]
    return merge(ranks), ranks


def exit_code(summary: Summary) -> int:
    """0 when nothing failed, 1 otherwise."""
    return EXIT_FAILED if summary.failed else EXIT_OK


def write_report(path: Path, record: dict) -> None:
    """Write (or replace) a report file atomically, creating its folder."""
    text = json.dumps(record, indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda file: file.write(text.encode()))


def failure_record(code: int | None, error: str) -> dict:
    """The report of a run that did not finish: ``{"complete": false, "exit_code", "error"}``
    (``exit_code`` None while it runs)."""
    return {"complete": False, "exit_code": code, "error": error}


def report(args: argparse.Namespace, summary: Summary, ranks: list[Summary]) -> None:
    """Log the merged summary and write ``--report`` (rank 0 only).

    The report is ``Summary.record()`` of the whole run plus ``"complete": true``, ``exit_code``
    and, in sharded runs, ``ranks``: one record per rank (with its ``rank``).
    """
    done, skipped, failed = len(summary.done), len(summary.skipped), len(summary.failed)
    logger.info("done %d, skipped (already present) %d, failed %d", done, skipped, failed)
    for entry in summary.failed:
        logger.error("failed: %s: %s", entry["path"], entry["reason"])
    record = summary.record()
    if done:
        logger.info(
            "time per image: %.3f s (model %.3f s)",
            record["seconds_per_image"],
            record["model_seconds_per_image"],
        )
        shares = ", ".join(f"block {b}: {100 * v:.1f}%" for b, v in record["routed_share"].items())
        logger.info("mean share of tokens in global attention: %s", shares)
        peak = summary.peak_memory_bytes / MIB
        logger.info("peak memory: %.0f MiB (the largest over the processes)", peak)
    if skipped and not done:
        logger.info(
            "%d outputs were already in %s; pass --overwrite to predict them again",
            skipped,
            args.output_dir,
        )
    if args.report is not None:
        record = {"complete": True, "exit_code": exit_code(summary), **record}
        if len(ranks) > 1:
            record["ranks"] = [rank.record() | {"rank": r} for r, rank in enumerate(ranks)]
        write_report(args.report, record)
        logger.info("wrote the report to %s", args.report)


def setup_logging() -> None:
    """INFO on rank 0, warnings and errors on the other ranks, each line with its rank in
    sharded runs."""
    rank, world = comm.get_rank(), comm.get_world_size()
    prefix = f"[rank {rank}] " if world > 1 else ""
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s {prefix}%(name)s %(levelname)s: %(message)s",
        force=world > 1,  # a torchrun process configured it before it knew its rank
    )


def process_main(
    args: argparse.Namespace,
    status_file: str,
    run_share: Callable[[argparse.Namespace], tuple[Summary, list[Summary]]] = run,
) -> None:
    """What every inference process runs: its share (``run_share``: images by default), then
    (rank 0) the merged report. Every rank writes the run's exit status (the same on all ranks)
    to ``status_file``, which the launching process reads: the one spawned processes share, or
    each torchrun process's own."""
    setup_logging()
    if comm.get_world_size() > 1 and args.device == "cpu":
        _torch_module("torch").set_num_threads(_cpu_share(args))  # they share the cores
    try:
        summary, ranks = run_share(args)
        code = exit_code(summary)
    except (UsageError, FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        code = EXIT_USAGE
        if comm.is_main_process() and args.report is not None:
            write_report(args.report, failure_record(code, str(exc)))
    else:
        if comm.is_main_process():
            report(args, summary, ranks)
    atomic_write(status_file, lambda file: file.write(str(code).encode()))


def check_report(args: argparse.Namespace) -> None:
    """The ``--report`` path: a file (not a folder) in a writable or creatable folder, that is
    not one of the run's inputs.

    Raises:
        UsageError: names the path and the problem.
    """
    if args.report is None:
        return
    if args.report.is_dir():
        raise UsageError(f"--report {args.report} is a folder")
    check_output_dir(args.report.parent)
    check_not_an_input(args, args.report, "--report")


def check_model_options(args: argparse.Namespace) -> None:
    """The device, precision and token cap, and the config with its overrides, checked as the
    model will take them, without building it: an output folder whose items are all done
    refuses a bad option as an empty one does.

    Raises:
        FileNotFoundError, ValueError: see :func:`predictor.matting.check_predictor_options`,
            :func:`predictor.onnx_predictor.onnx_providers` and
            :func:`predictor.weights.inference_config` (PyTorch imported for the PyTorch model
            only).
    """
    if args.onnx is not None:
        onnx_providers(args.device)
        check_torch_for(args)
        return
    check_predictor_options = _torch_module("predictor.matting").check_predictor_options
    check_predictor_options(args.device, args.precision, args.max_number_token)
    _torch_module("predictor.weights").inference_config(args.config_file, args.opts)


def _torch_importable() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except ImportError:  # an import hook that refuses it
        return False


def check_torch_for(args: argparse.Namespace) -> None:
    """An ``--onnx`` run without PyTorch: refuse the options whose code needs it (foreground
    colours, prompts, several processes) before anything starts.

    Raises:
        UsageError: naming the options.
    """
    needing = {
        "--save-foreground": args.save_foreground,
        "--save-rgba": args.save_rgba,
        "--composite": args.composite is not None,
        "--segmenter": args.segmenter is not None,
        "--num-gpus": args.num_gpus > 1,
    }
    named = [option for option, given in needing.items() if given]
    if named and not _torch_importable():
        raise UsageError(
            f"{', '.join(named)}: PyTorch is not installed, and these run PyTorch code (foreground "
            "colours, the segmenter, sharded processes); install torch or run without them"
        )


def check_setup(args: argparse.Namespace) -> None:
    """Setup errors found before any process or model starts (the report path aside:
    :func:`check_report`).

    Raises:
        UsageError, FileNotFoundError, ValueError: bad inputs, graph or output folder.
    """
    collect_items(args)  # a missing folder, no layout, bad single-image options
    for path in [*(args.image or ()), *(args.trimap or ()), *(args.mask or ())]:
        if not Path(path).is_file():
            hint = " (config overrides after a list of files go after --)" if "=" in path else ""
            raise FileNotFoundError(f"{path}: no such file{hint}")
    check_model(args)
    check_not_an_input(args, Path(args.output_dir), "output folder")
    for folder in make_outputs(args).folders:  # the output folder and its sub-folders
        check_output_dir(folder)


def _first_process() -> bool:
    """Whether this process launches the run, or is rank 0 of torchrun's processes."""
    return int(os.environ.get("RANK", "0")) == 0


def check_model(args: argparse.Namespace) -> None:
    """The model of the run, before anything starts: the ``--onnx`` folder an exported
    deployment (:func:`predictor.onnx_predictor.check_deployment`), or the config and checkpoint
    present, and the options it runs with
    (:func:`check_model_options`, so that a folder whose outputs are all present refuses a bad
    option as an empty one does).

    Raises:
        FileNotFoundError, ValueError: naming the file or option.
    """
    if args.onnx is not None:
        check_deployment(args.onnx)
    elif not Path(args.config_file).is_file():
        raise FileNotFoundError(f"{args.config_file}: no such config file")
    elif not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"{args.checkpoint}: no such checkpoint file")
    check_model_options(args)


def run_command(
    args: argparse.Namespace,
    check: Callable[[argparse.Namespace], None] = check_setup,
    run_share: Callable[[argparse.Namespace], tuple[Summary, list[Summary]]] = run,
) -> int:
    """The whole run of ``inference.py``: setup checks (``check``), then ``--num-gpus``
    processes (or this torchrun process) each running :func:`process_main` with ``run_share``
    (images by default; the video runner passes its own). ``--report`` always ends describing
    this run (see the module docstring).

    Returns:
        the exit status: 0 every item done or already present, 1 some items failed or a process
        died, 2 a usage or setup error.
    """
    setup_logging()
    try:
        check_report(args)
    except (UsageError, FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return EXIT_USAGE
    try:
        check(args)
    except (UsageError, FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        if args.report is not None and _first_process():
            args.report.unlink(missing_ok=True)  # an earlier run's report would mislead
        return EXIT_USAGE
    if args.report is not None and _first_process():
        write_report(args.report, failure_record(None, "the run has not finished"))
    with tempfile.TemporaryDirectory(prefix="mematte-inference-") as tmp:
        status_file = str(Path(tmp) / "exit_status")
        try:
            launch(process_main, args.num_gpus, args=(args, status_file, run_share))
        except (Exception, SystemExit) as exc:  # a process died (its traceback is printed above)
            logger.error("an inference process failed: %s", exc)
            if args.report is not None and _first_process():
                error = f"an inference process failed: {exc}"
                write_report(args.report, failure_record(EXIT_FAILED, error))
            return EXIT_FAILED
        return int(Path(status_file).read_text())
