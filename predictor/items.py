"""The items of an ``inference.py`` run: what it reads (a test-set folder, or images with their
trimaps or masks), the checks made on them before anything runs, and their decoding ahead of the
model (:class:`ItemSamples`, in loader processes), as numpy arrays: nothing here imports PyTorch.

Checks before the run: every file a folder listing does not read is a failure of the run (named,
with the reason); no output location may be, lie inside or contain anything the run reads (the
image, trimap and alpha folders of a test set, the image, trimap and mask files, the config,
checkpoint, graph and composite background), so that no input is overwritten and no output is read
as an input on the next run. Images are refused above ``max_pixels`` from the sizes their headers
declare, before any decoding, as are trimaps and masks whose size differs from their image's.

The functions take the parsed command line of ``inference.py`` (an ``argparse.Namespace``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.image_io import (
    BadSampleError,
    ImageTooLargeError,
    check_image_size,
    read_rgb_levels,
    read_trimap_levels,
)
from data.readers import FOLDER_LAYOUTS, detect_layout, scan_test_set
from data.trimap import trimap_from_mask
from predictor.inputs import mask_levels
from predictor.prompts import Prompts, prompt_targets

__all__ = [
    "Item",
    "ItemSamples",
    "UsageError",
    "check_not_an_input",
    "collect_items",
    "input_paths",
]


class UsageError(ValueError):
    """A bad combination of options or inputs (exit status 2)."""


@dataclass(frozen=True)
class Item:
    """One image to predict and where its trimap (or mask, or the segmenter's prompts) comes
    from."""

    name: str
    image: Path
    trimap: Path | None = None
    mask: Path | None = None
    prompts: Prompts | None = None


def collect_items(args: argparse.Namespace) -> tuple[list[Item], list[dict[str, str]]]:
    """The items of the run, sorted by name, and the failures found while listing them
    (``{"path", "reason"}``: an image without a trimap, a file of the image or trimap folder that
    is not read).

    Raises:
        UsageError, FileNotFoundError, ValueError: bad single-image options or prompts, or a
            test-set folder that is missing, has no supported layout or no image to read.
    """
    if args.segmenter is not None:  # --image or a folder of images, with prompts
        targets, failed = prompt_targets(args)
        items = [Item(t.image.stem, t.image, prompts=t.prompts) for t in targets]
        return sorted(items, key=lambda item: item.name), failed
    if args.data_dir is not None:
        test_set = scan_test_set(args.data_dir, args.layout)
        items = [Item(i.name, i.image_path, trimap=i.trimap_path) for i in test_set.items]
        missing = [{"path": str(p), "reason": "no trimap"} for p in test_set.missing_trimaps]
        missing += [{"path": str(s.path), "reason": s.reason} for s in test_set.skipped]
        return items, sorted(missing, key=lambda entry: entry["path"])
    guides = args.trimap if args.trimap is not None else args.mask
    if guides is None:
        raise UsageError("--image needs --trimap or --mask (one per image)")
    if len(guides) != len(args.image):
        flag = "--trimap" if args.trimap is not None else "--mask"
        overrides = any("=" in guide for guide in guides)
        hint = " (config overrides after a list of files go after --)" if overrides else ""
        raise UsageError(
            f"{len(args.image)} --image but {len(guides)} {flag}: give one per image{hint}"
        )
    items, seen = [], {}
    for image, guide in zip(args.image, guides):
        image = Path(image)
        if image.stem in seen:
            raise UsageError(
                f"{seen[image.stem]} and {image} have the same name {image.stem!r}: their outputs "
                "would overwrite each other"
            )
        seen[image.stem] = image
        kind = "trimap" if args.trimap is not None else "mask"
        items.append(Item(image.stem, image, **{kind: Path(guide)}))
    return sorted(items, key=lambda item: item.name), []


def input_paths(args: argparse.Namespace) -> tuple[list[Path], list[Path]]:
    """Everything the run reads: the folders (a test set's image, trimap and alpha folders, each
    candidate name of its layout, present or not, since a folder created there would be read
    next time; the clips and guidance folders of ``--video``) and the files (images, trimaps,
    masks, video files, prompts, config, checkpoint, composite background); the ``--onnx``
    deployment is a folder.

    A test-set folder that is missing or has no detected layout counts with the folders of every
    layout.
    """
    folders = []
    if args.segmenter is not None:  # prompts: a plain folder of images, and the segmenter's
        folders += [Path(p) for p in (args.data_dir, args.segmenter) if p and Path(p).is_dir()]
    elif args.data_dir is not None:
        root = Path(args.data_dir)
        layouts = [layout for layout in FOLDER_LAYOUTS if layout.name == args.layout]
        if args.layout is None:
            try:
                layouts = [detect_layout(root)]
            except (FileNotFoundError, ValueError):  # reported by collect_items
                layouts = list(FOLDER_LAYOUTS)
        for layout in layouts:
            names = (*layout.image_dirs, *layout.trimap_dirs, *layout.alpha_dirs)
            folders += [root / name for name in names]
    # --video: clips (video files or folders of frames) and their guidance folders
    folders += [Path(p) for p in (args.trimap_dir, args.mask_dir) if p is not None]
    clips = [Path(p) for p in args.video or ()]
    folders += [clip for clip in clips if clip.is_dir()]
    folders += [Path(args.onnx)] if args.onnx is not None else []
    files = [*(args.image or ()), *(args.trimap or ()), *(args.mask or ())]
    files += [*(clip for clip in clips if not clip.is_dir()), args.config_file, args.checkpoint]
    files.append(args.prompts)
    if args.composite is not None and Path(args.composite).is_file():
        files.append(args.composite)
    return folders, [Path(file) for file in files if file is not None]


def _relation(output: Path, read: Path) -> str | None:
    """How an output location stands to a path that is read (both resolved); None when apart."""
    if output == read:
        return "is"
    if output.is_relative_to(read):
        return "is inside"
    if read.is_relative_to(output):
        return "contains"
    return None


def check_not_an_input(args: argparse.Namespace, location: Path, what: str) -> None:
    """Refuse an output location (the output folder, the report file) that is, lies inside or
    contains anything the run reads (:func:`input_paths`). Symbolic links are resolved.

    Args:
        args: the command line.
        location: the output location.
        what: how the message names it (``"output folder"``, ``"--report"``).

    Raises:
        UsageError: names the location, the input and how they overlap.
    """
    folders, files = input_paths(args)
    resolved = location.resolve()
    for read, kind in [*((f, "folder") for f in folders), *((f, "file") for f in files)]:
        relation = _relation(resolved, read.resolve())
        if relation is not None:
            raise UsageError(
                f"{what} {location} {relation} the input {kind} {read}: the run would write over "
                "its inputs, or its outputs would be read as inputs; choose another location"
            )


class ItemSamples:
    """Decodes the pending items (in loader processes): image levels and the trimap, made from
    the mask when the item has one (a trimap file's values other than 0, 128 and 255 refused, or
    snapped with ``snap_trimap``). The sizes the files declare are checked first: an image above
    ``max_pixels``, or a trimap or mask whose size differs from its image's, is refused before
    anything is decoded. A bad item becomes ``{"error": ..., "path": ...}``.

    Args:
        items: the items to decode.
        unknown_width: with masks: the unknown band of the trimaps made from them.
        max_pixels: the largest image read (``--max-pixels``).
        snap_trimap: snap a trimap file's other values to the nearest level (``--snap-trimap``).
    """

    def __init__(
        self,
        items: list[Item],
        unknown_width: float | None,
        max_pixels: int,
        snap_trimap: bool = False,
    ) -> None:
        self.items = items
        self.unknown_width = unknown_width
        self.max_pixels = max_pixels
        self.snap_trimap = snap_trimap

    def __len__(self) -> int:
        return len(self.items)

    def _decode(self, item: Item) -> tuple[np.ndarray, np.ndarray]:
        guide_path = item.mask if item.mask is not None else item.trimap
        hw = check_image_size(item.image, self.max_pixels)
        guide_hw = check_image_size(guide_path, self.max_pixels)
        if guide_hw != hw:
            raise BadSampleError(
                guide_path,
                f"size {guide_hw[1]}x{guide_hw[0]} differs from image {item.image.name} "
                f"{hw[1]}x{hw[0]} (W x H)",
            )
        image = read_rgb_levels(item.image, max_pixels=self.max_pixels)
        if item.mask is not None:
            mask = mask_levels(item.mask, max_pixels=self.max_pixels)
            trimap = trimap_from_mask(mask, self.unknown_width, source=str(item.mask))
        else:
            trimap = read_trimap_levels(
                item.trimap, snap=self.snap_trimap, max_pixels=self.max_pixels
            )
        return image.transpose(2, 0, 1), trimap[None]  # [H, W, 3] -> [3, H, W]; [1, H, W]

    def _prompt_sample(self, idx: int, item: Item) -> dict:
        """A prompt item's image alone (its mask and trimap come from the segmenter)."""
        try:
            check_image_size(item.image, self.max_pixels)
            image = read_rgb_levels(item.image, max_pixels=self.max_pixels)
        except ImageTooLargeError as exc:
            return {"index": idx, "error": f"{exc.reason} (--max-pixels)", "path": str(exc.path)}
        except BadSampleError as exc:
            return {"index": idx, "error": exc.reason, "path": str(exc.path)}
        return {"index": idx, "image": image.transpose(2, 0, 1)}  # [H, W, 3] -> [3, H, W]

    def __getitem__(self, idx: int) -> dict:
        item = self.items[idx]
        if item.prompts is not None:  # the trimap comes from the segmenter, in the main process
            return self._prompt_sample(idx, item)
        try:
            image, trimap = self._decode(item)
        except ImageTooLargeError as exc:
            return {"index": idx, "error": f"{exc.reason} (--max-pixels)", "path": str(exc.path)}
        except BadSampleError as exc:
            return {"index": idx, "error": exc.reason, "path": str(exc.path)}
        except ValueError as exc:  # a mask of an unsupported type
            return {"index": idx, "error": str(exc), "path": str(item.mask or item.image)}
        return {"index": idx, "image": image, "trimap": trimap}
