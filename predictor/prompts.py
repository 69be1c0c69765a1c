"""Prompts for a segmenter: a box and points (foreground or background) in an image's pixel
coordinates, checked once, read from the command line (``--box``, ``--point``) or from a JSON file
(``--prompts``), and matched to the images of a run.

Coordinates are pixels of the image as stored (x to the right, y down, origin at the top-left
corner of the top-left pixel): a point must lie in the image (``0 <= x < W``, ``0 <= y < H``), a
box ``X0,Y0,X1,Y1`` must have ``X0 < X1``, ``Y0 < Y1`` and its corners in ``[0, W] x [0, H]``.
Point labels: 1 foreground (the default), 0 background.

The prompts file maps image names (the file name as in the folder, ``photo.jpg``, or its stem,
``photo``) to a box and/or points::

    {"photo.jpg": {"box": [40, 60, 900, 1200]},
     "dog.png": {"points": [[300, 200], [40, 30, 0]]}}

``inference.py --segmenter`` and :class:`predictor.matting.MattingPredictor` (``box=``,
``points=``) use them; the segmenter (:mod:`predictor.segmenter`) turns them into a mask.
"""

from __future__ import annotations

import argparse
import json
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from data.image_io import list_images_by_stem
from data.trimap import AUTO_WIDTH

__all__ = [
    "BACKGROUND",
    "FOREGROUND",
    "Point",
    "PromptError",
    "PromptTarget",
    "Prompts",
    "add_prompt_arguments",
    "check_prompt_arguments",
    "parse_box",
    "parse_point",
    "prompt_targets",
    "read_prompts_file",
]

# Point labels, as SAM takes them.
FOREGROUND, BACKGROUND = 1, 0
LABELS = {FOREGROUND: "foreground", BACKGROUND: "background"}
BOX_VALUES = 4  # X0, Y0, X1, Y1
POINT_VALUES = (2, 3)  # X, Y and an optional label
ENTRY_KEYS = {"box", "points"}


class PromptError(ValueError):
    """A prompt that cannot be used: its message names the prompt (and its image) and why."""


class Point(NamedTuple):
    """A point prompt: pixel coordinates and a label (1 foreground, 0 background)."""

    x: float
    y: float
    label: int = FOREGROUND


def _number(value: object, what: str) -> float:
    """A finite coordinate (an int or float, not a bool or a string)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise PromptError(f"{what}: {value!r} is not a finite number")
    return float(value)


def _sequence(value: object, what: str, hint: str) -> tuple:
    """``value``'s items (a list, tuple or array; not a string)."""
    if isinstance(value, str | bytes):
        raise PromptError(f"{what} {value!r}: {hint}")
    try:
        return tuple(value)
    except TypeError:
        raise PromptError(f"{what} {value!r}: {hint}") from None


def _label(value: object, what: str) -> int:
    if isinstance(value, bool) or value not in LABELS:
        raise PromptError(f"{what}: unknown label {value!r} (1 = foreground, 0 = background)")
    return int(value)


@dataclass(frozen=True)
class Prompts:
    """A box and/or points for one image.

    Args:
        box: ``(X0, Y0, X1, Y1)`` pixel coordinates with ``X0 < X1`` and ``Y0 < Y1``, or None.
        points: :class:`Point` prompts.

    Raises:
        PromptError: no box and no foreground point, an empty box, an unknown label or a
            coordinate that is not a finite number.
    """

    box: tuple[float, float, float, float] | None = None
    points: tuple[Point, ...] = ()

    def __post_init__(self) -> None:
        if self.box is not None:
            if len(self.box) != BOX_VALUES:
                raise PromptError(f"box {self.box!r}: give X0,Y0,X1,Y1 (4 numbers)")
            x0, y0, x1, y1 = (_number(v, "box") for v in self.box)
            if not (x0 < x1 and y0 < y1):
                raise PromptError(
                    f"box {_text(self.box)} is empty: X0 < X1 and Y0 < Y1 are needed (X0,Y0 the "
                    "top-left corner, X1,Y1 the bottom-right one)"
                )
            object.__setattr__(self, "box", (x0, y0, x1, y1))
        points = []
        for point in self.points:
            if len(point) not in POINT_VALUES:
                raise PromptError(f"point {point!r}: give X,Y or X,Y,LABEL")
            x, y = (_number(v, f"point {_text(point)}") for v in point[:2])
            label = _label(point[2], f"point {_text(point)}") if len(point) == 3 else FOREGROUND
            points.append(Point(x, y, label))
        object.__setattr__(self, "points", tuple(points))
        if self.box is None and not any(p.label == FOREGROUND for p in self.points):
            raise PromptError("give a box or at least one foreground point (label 1)")

    @classmethod
    def create(
        cls,
        box: Sequence[float] | None = None,
        points: Sequence[Sequence[float]] | None = None,
    ) -> Prompts:
        """Prompts from plain sequences (lists, tuples, numpy arrays): ``box=(x0, y0, x1, y1)``,
        ``points=[(x, y), (x, y, 0)]``.

        Raises:
            PromptError: see the class.
        """
        box_values = None if box is None else _sequence(box, "box", "give X0,Y0,X1,Y1")
        point_values = _sequence(points or (), "points", "give a list of (X, Y) or (X, Y, LABEL)")
        return cls(
            box=box_values,
            points=tuple(_sequence(p, "point", "give X,Y or X,Y,LABEL") for p in point_values),
        )

    @classmethod
    def from_json(cls, entry: object) -> Prompts:
        """The prompts of one image of a prompts file: ``{"box": [...], "points": [[x, y], ...]}``.

        Raises:
            PromptError: not such an object, an unknown key, or bad prompts (see the class).
        """
        if not isinstance(entry, dict):
            raise PromptError(f"{entry!r}: give an object with a box and/or points")
        unknown = sorted(set(entry) - ENTRY_KEYS)
        if unknown:
            raise PromptError(f"unknown key {unknown[0]!r} (known: box, points)")
        return cls.create(box=entry.get("box"), points=entry.get("points"))

    @property
    def multiple(self) -> bool:
        """Whether the prompts say more than one point does: a box or several points."""
        return self.box is not None or len(self.points) > 1

    def check_inside(self, hw: tuple[int, int], image: str = "the image") -> None:
        """Refuse prompts outside an image of size ``hw`` (H, W).

        Raises:
            PromptError: a point outside the image, or a box corner beyond its edges.
        """
        height, width = hw
        size = f"{image} is {width}x{height} (W x H)"
        for point in self.points:
            if not (0 <= point.x < width and 0 <= point.y < height):
                raise PromptError(f"point {_text(point[:2])} is outside the image: {size}")
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not (x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height):
                raise PromptError(f"box {_text(self.box)} reaches outside the image: {size}")

    def describe(self) -> str:
        """The prompts in the command line's words: ``box 1,2,3,4; point 5,6 (foreground)``."""
        parts = [] if self.box is None else [f"box {_text(self.box)}"]
        parts += [f"point {_text(p[:2])} ({LABELS[p.label]})" for p in self.points]
        return "; ".join(parts)


def _text(values: Sequence[object]) -> str:
    """Coordinates as the command line writes them: ``10,20.5``."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


# --- the command line ------------------------------------------------------------------------


def _numbers(text: str, what: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} {text!r}: comma-separated numbers") from None


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``--box X0,Y0,X1,Y1`` (argparse ``type``: errors are usage errors that say why)."""
    values = _numbers(text, "box")
    try:
        return Prompts(box=tuple(values)).box
    except PromptError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_point(text: str) -> Point:
    """``--point X,Y[,LABEL]`` (argparse ``type``): LABEL 1 foreground (default), 0 background."""
    values = _numbers(text, "point")
    if len(values) not in POINT_VALUES:
        raise argparse.ArgumentTypeError(f"point {text!r}: give X,Y or X,Y,LABEL")
    if len(values) == 3:
        if not values[2].is_integer():
            raise argparse.ArgumentTypeError(
                f"point {text!r}: unknown label {values[2]:g} (1 = foreground, 0 = background)"
            )
        values[2] = int(values[2])
    try:
        _label(values[2] if len(values) == 3 else FOREGROUND, f"point {text}")
    except PromptError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return Point(*values)


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of prompt runs: ``--segmenter``, ``--box``, ``--point`` and ``--prompts``
    (``args.segmenter``, ``args.box``, ``args.point``, ``args.prompts``)."""
    group = parser.add_argument_group(
        "prompts",
        "a box or clicks instead of a trimap: a SAM-family segmenter makes the mask, the trimap "
        "is unknown within --unknown-width of its edge (default: auto). See docs/prompts.md",
    )
    group.add_argument(
        "--segmenter",
        metavar="ID_OR_DIR",
        help="a transformers SAM, SAM-HQ or SAM 2 checkpoint: a Hugging Face hub id (e.g. "
        "facebook/sam-vit-base, downloaded once into the hub cache) or a local "
        "save_pretrained folder; with --video --propagate sam2 (its default), one of SAM 2's "
        "video checkpoints (e.g. facebook/sam2.1-hiera-tiny)",
    )
    group.add_argument(
        "--box",
        type=parse_box,
        metavar="X0,Y0,X1,Y1",
        help="with --segmenter and one --image (or one --video: its first frame): a box around "
        "the subject, in pixels",
    )
    group.add_argument(
        "--point",
        type=parse_point,
        action="append",
        metavar="X,Y[,LABEL]",
        help="with --segmenter and one --image (or one --video: its first frame): a click, in "
        "pixels; LABEL 1 foreground (the default), 0 background; repeat for more points",
    )
    group.add_argument(
        "--prompts",
        type=Path,
        metavar="FILE",
        help="with --segmenter: a JSON file mapping image names to a box and/or points, for "
        "several --image or a folder of images (--data-dir)",
    )


def check_prompt_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse the prompt options that do not fit together (usage errors exit with status 2) and
    default ``args.unknown_width`` to ``auto`` for prompt runs."""
    inline = args.box is not None or bool(args.point)
    if args.segmenter is None:
        if inline or args.prompts is not None:
            parser.error("--box, --point and --prompts need a --segmenter")
        return
    if args.trimap is not None or args.mask is not None:
        parser.error("--segmenter makes the mask: give it prompts instead of --trimap or --mask")
    if inline == (args.prompts is not None):
        parser.error("--segmenter needs prompts: --box and/or --point, or a --prompts file")
    if inline and (args.image is None or len(args.image) != 1):
        parser.error("--box and --point go with one --image; use --prompts for several images")
    if args.unknown_width is None:
        args.unknown_width = AUTO_WIDTH


# --- the images of a run ---------------------------------------------------------------------


@dataclass(frozen=True)
class PromptTarget:
    """An image of a prompt run and its prompts."""

    image: Path
    prompts: Prompts


def read_prompts_file(path: str | Path) -> tuple[dict[str, Prompts], dict[str, str]]:
    """A prompts file: image name -> prompts.

    Returns:
        the entries with good prompts, and the others with what is wrong with them.

    Raises:
        PromptError: the file cannot be read, is not JSON, or not an object of image names.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PromptError(f"{path}: cannot read the prompts file: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PromptError(f"{path}: not a JSON prompts file: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise PromptError(
            f'{path}: give an object mapping image names to prompts, e.g. {{"photo.jpg": '
            '{"box": [10, 20, 300, 400]}}'
        )
    good, bad = {}, {}
    for name, entry in data.items():
        try:
            good[name] = Prompts.from_json(entry)
        except PromptError as exc:
            bad[name] = str(exc)
    return good, bad


def _image_hw(path: Path) -> tuple[int, int] | None:
    """``(H, W)`` from an image file's header, or None where PIL cannot read it (the decoder
    reports such a file later)."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, ValueError, SyntaxError):
        return None


def _checked(image: Path, prompts: Prompts) -> Prompts:
    hw = _image_hw(image)
    if hw is not None:
        prompts.check_inside(hw, image.name)
    return prompts


def _match(images: list[Path], names: list[str]) -> tuple[dict[str, Path], list[str]]:
    """Each prompts-file name matched to an image by file name, else by stem; the unmatched."""
    by_name = {image.name: image for image in images}
    by_stem = {image.stem: image for image in images}
    matched, unmatched = {}, []
    for name in names:
        image = by_name.get(name) or by_stem.get(name)
        if image is None:
            unmatched.append(name)
        else:
            matched[name] = image
    return matched, unmatched


def _in_folder(folder: Path, name: str, by_stem: dict[str, Path]) -> Path | None:
    """The image a prompts-file name means in a folder: the file, or the image of that stem."""
    candidate = folder / name
    if candidate.is_file():
        return candidate
    return by_stem.get(name)


def _unique(targets: list[PromptTarget]) -> tuple[list[PromptTarget], list[PromptTarget]]:
    """The targets whose outputs do not collide (one per file stem), and the others."""
    kept: dict[str, PromptTarget] = {}
    clashes = []
    for target in targets:
        if target.image.stem in kept:
            clashes.append(target)
        else:
            kept[target.image.stem] = target
    return list(kept.values()), clashes


def _clash(target: PromptTarget, kept: list[PromptTarget]) -> str:
    other = next(t.image for t in kept if t.image.stem == target.image.stem)
    return (
        f"{target.image} and {other} have the same name {target.image.stem!r}: their outputs "
        "would overwrite each other"
    )


def prompt_targets(args: argparse.Namespace) -> tuple[list[PromptTarget], list[dict[str, str]]]:
    """The images of a prompt run (``inference.py --segmenter``) and their prompts.

    ``--image`` runs are checked whole before any model loads: a prompts file that names images
    not given or misses one, bad prompts, prompts outside their image and two entries for one
    output name are refused. A folder run (``--data-dir`` with ``--prompts``) reports such an
    entry as a failed item instead and goes on with the others.

    Returns:
        the targets, and the failed entries (``{"path", "reason"}``) of a folder run.

    Raises:
        PromptError: see above.
        FileNotFoundError: no such ``--data-dir``.
    """
    if args.prompts is None:
        image = Path(args.image[0])
        prompts = Prompts(box=args.box, points=tuple(args.point or ()))
        return [PromptTarget(image, _checked(image, prompts))], []
    good, bad = read_prompts_file(args.prompts)
    if args.image is not None:
        if bad:
            name, reason = next(iter(bad.items()))
            raise PromptError(f"{args.prompts}: {name}: {reason}")
        images = [Path(image) for image in args.image]
        matched, unmatched = _match(images, list(good))
        if unmatched:
            raise PromptError(
                f"{args.prompts} names images that are not among --image: {', '.join(unmatched)}"
            )
        prompted = set(matched.values())
        missing = [str(image) for image in images if image not in prompted]
        if missing:
            raise PromptError(f"{args.prompts} has no prompts for {', '.join(missing)}")
        targets = [PromptTarget(matched[n], _checked(matched[n], p)) for n, p in good.items()]
        kept, clashes = _unique(targets)
        if clashes:
            raise PromptError(f"{args.prompts}: {_clash(clashes[0], kept)}")
        return kept, []
    folder = Path(args.data_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of images")
    by_stem = list_images_by_stem(folder)
    targets, failed = [], [{"path": str(folder / n), "reason": r} for n, r in bad.items()]
    for name, prompts in good.items():
        image = _in_folder(folder, name, by_stem)
        if image is None:
            failed.append({"path": str(folder / name), "reason": f"no such image ({args.prompts})"})
            continue
        try:
            targets.append(PromptTarget(image, _checked(image, prompts)))
        except PromptError as exc:
            failed.append({"path": str(image), "reason": str(exc)})
    kept, clashes = _unique(targets)
    failed += [{"path": str(t.image), "reason": _clash(t, kept)} for t in clashes]
    return kept, failed
