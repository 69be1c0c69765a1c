"""The releases a composited matting set is built from, and the checks made before a build:
presets (Composition-1k from the Adobe Deep Image Matting test set and PASCAL VOC, the DIM
training set over MS COCO, Distinctions-646's test split), the build's parameters, and the plan,
one job per foreground. :mod:`data.composition_build` writes the files; ``tools/compose_dataset.py``
is the command line.

Before any file is written, :func:`plan_build` checks the whole release: every listed file present
and readable (header decodes, PNG and JPEG files not cut short, 8-bit), alpha (and trimap) sizes
equal to the foreground's, enough backgrounds in the list, no two foregrounds with one stem; and
:func:`check_setup` the folders, the lists and the output folder (new, or a build of the same
parameters, which is resumed).

A trimap folder may hold one trimap per foreground (``<stem>.png``) or one per composite
(``<stem>_<k>.png``, as the Adobe test set ships them); the per-composite files are used when every
composite has one.

References: Adobe Deep Image Matting dataset (``Composition_code.py`` and its readme: lists,
numbers of backgrounds, PASCAL VOC for the test set, MS COCO for training); Distinctions-646
(HAttMatting ``gen_dataset.py``, ``fg_test.txt`` / ``bg_test.txt``); mmediting
``preprocess_comp1k_dataset.py`` (the release's folder names, ``COCO_train2014_`` names in COCO
2017).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from data.composition import DEFAULT_RESIZE, backgrounds_of, composite_name
from data.image_io import IMAGE_EXTENSIONS, BadSampleError, is_complete_image, list_images_by_stem

__all__ = [
    "MANIFEST",
    "OUTPUT_DIRS",
    "PRESETS",
    "BuildSpec",
    "CompositeJob",
    "DataError",
    "ForegroundJob",
    "Preset",
    "SetupError",
    "check_setup",
    "plan_build",
]

logger = logging.getLogger(__name__)

MERGED_DIR, ALPHA_DIR, TRIMAP_DIR, FG_DIR, BG_DIR = "merged", "alpha_copy", "trimaps", "fg", "bg"
OUTPUT_DIRS = (MERGED_DIR, ALPHA_DIR, TRIMAP_DIR, FG_DIR, BG_DIR)
MANIFEST = "manifest.json"
SCHEMA = "mematte-composition/1"
# PIL modes with more than 8 bits per channel: the released scripts' uint8 arithmetic would wrap.
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# Problems listed in one error message before the rest are counted.
MAX_PROBLEMS_SHOWN = 20


@dataclass(frozen=True)
class Preset:
    """Where a release keeps its files (relative to its root) and how many backgrounds each
    foreground gets.

    Attributes:
        name: the ``--preset`` value.
        num_bgs: backgrounds per foreground.
        fg_dirs: foreground folders, searched in order for each listed name.
        alpha_dirs: alpha folders, searched in order.
        trimap_dir: the trimap folder, None where the release has none.
        fg_names: the foreground list.
        bg_names: the background list.
        backgrounds: the photos the background list names (for messages and docs).
        optional_bg_prefix: a prefix of listed background names that the photos may lack (COCO
            2017 drops the ``COCO_train2014_`` of COCO 2014's file names).
        resize: the bicubic filter of the release's script (``data.composition.RESIZE_FILTERS``).
    """

    name: str
    num_bgs: int
    fg_dirs: tuple[str, ...]
    alpha_dirs: tuple[str, ...]
    trimap_dir: str | None
    fg_names: str
    bg_names: str
    backgrounds: str
    optional_bg_prefix: str = ""
    resize: str = DEFAULT_RESIZE

    def release_paths(self, release_dir: Path) -> dict:
        """The :class:`BuildSpec` fields this preset fills for a release unpacked at
        ``release_dir``: its folders and lists."""
        return {
            "fg_dirs": tuple(release_dir / d for d in self.fg_dirs),
            "alpha_dirs": tuple(release_dir / d for d in self.alpha_dirs),
            "trimap_dir": release_dir / self.trimap_dir if self.trimap_dir else None,
            "fg_names": release_dir / self.fg_names,
            "bg_names": release_dir / self.bg_names,
        }


_ADOBE_TEST = "Test_set/Adobe-licensed images"
_ADOBE_TRAIN = ("Training_set/Adobe-licensed images", "Training_set/Other")
PRESETS = {
    preset.name: preset
    for preset in (
        Preset(
            name="composition-1k",
            num_bgs=20,
            fg_dirs=(f"{_ADOBE_TEST}/fg",),
            alpha_dirs=(f"{_ADOBE_TEST}/alpha",),
            trimap_dir=f"{_ADOBE_TEST}/trimaps",
            fg_names="Test_set/test_fg_names.txt",
            bg_names="Test_set/test_bg_names.txt",
            backgrounds="PASCAL VOC 2012 VOCdevkit/VOC2012/JPEGImages",
        ),
        Preset(
            name="dim-train",
            num_bgs=100,
            fg_dirs=tuple(f"{root}/fg" for root in _ADOBE_TRAIN),
            alpha_dirs=tuple(f"{root}/alpha" for root in _ADOBE_TRAIN),
            trimap_dir=None,
            fg_names="Training_set/training_fg_names.txt",
            bg_names="Training_set/training_bg_names.txt",
            backgrounds="MS COCO train2014 (or train2017)",
            optional_bg_prefix="COCO_train2014_",
        ),
        Preset(
            name="distinctions-646",
            num_bgs=20,
            fg_dirs=("Test/FG",),
            alpha_dirs=("Test/GT",),
            trimap_dir=None,
            fg_names="fg_test.txt",
            bg_names="bg_test.txt",
            backgrounds="PASCAL VOC 2012 VOCdevkit/VOC2012/JPEGImages",
            resize="pil",
        ),
    )
}


@dataclass(frozen=True)
class BuildSpec:
    """What to build: the release's folders and lists, the backgrounds, where to write.

    Attributes:
        fg_dirs: foreground folders, searched in order for each listed name.
        alpha_dirs: alpha folders, searched in order for the foreground's file name (or, where
            it is missing, its stem with another image suffix).
        trimap_dir: trimaps (per foreground or per composite), or None.
        fg_names: the foreground list (one file name per line).
        bg_names: the background list (one file name per line, in composition order).
        bg_dir: the background photos.
        num_bgs: backgrounds per foreground.
        output_dir: the folder to build.
        optional_bg_prefix: see :class:`Preset`.
        resize: the bicubic filter that enlarges small backgrounds (see :class:`Preset`).
    """

    fg_dirs: tuple[Path, ...]
    alpha_dirs: tuple[Path, ...]
    trimap_dir: Path | None
    fg_names: Path
    bg_names: Path
    bg_dir: Path
    num_bgs: int
    output_dir: Path
    optional_bg_prefix: str = ""
    resize: str = DEFAULT_RESIZE

    def parameters(self) -> dict:
        """Everything that decides the output files (the manifest's ``parameters``)."""
        return {
            "fg_dirs": [str(p.resolve()) for p in self.fg_dirs],
            "alpha_dirs": [str(p.resolve()) for p in self.alpha_dirs],
            "trimap_dir": str(self.trimap_dir.resolve()) if self.trimap_dir else None,
            "fg_names": str(self.fg_names.resolve()),
            "fg_names_sha256": hashlib.sha256(self.fg_names.read_bytes()).hexdigest(),
            "bg_names": str(self.bg_names.resolve()),
            "bg_names_sha256": hashlib.sha256(self.bg_names.read_bytes()).hexdigest(),
            "bg_dir": str(self.bg_dir.resolve()),
            "num_bgs": self.num_bgs,
            "optional_bg_prefix": self.optional_bg_prefix,
            "resize": self.resize,
        }


class SetupError(ValueError):
    """A folder or list that does not exist, an output folder that cannot be used (exit 2)."""


class DataError(ValueError):
    """Problems with the release's files, each naming its file (exit 1).

    Attributes:
        problems: one line per problem.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        text = "\n  ".join(shown) + (f"\n  and {more} more" if more > 0 else "")
        super().__init__(f"{len(problems)} problem(s), nothing written:\n  {text}")


@dataclass(frozen=True)
class CompositeJob:
    """One composite: its file name, background photo and trimap."""

    name: str
    k: int
    bg_name: str
    background: Path
    trimap: Path | None


@dataclass(frozen=True)
class ForegroundJob:
    """One foreground and its composites: the unit of work of a worker process."""

    fg_name: str
    foreground: Path
    alpha: Path
    composites: tuple[CompositeJob, ...]
    output_dir: Path
    resize: str

    def outputs(self, composite: CompositeJob) -> list[str]:
        """The files of a composite, relative to the output folder, the composite last."""
        folders = [FG_DIR, BG_DIR, ALPHA_DIR]
        if composite.trimap is not None:
            folders.append(TRIMAP_DIR)
        return [f"{folder}/{composite.name}" for folder in [*folders, MERGED_DIR]]


# --- checks ------------------------------------------------------------------------------------


def _read_list(path: Path) -> list[str]:
    """The names of a list file, one per line (trailing blank lines ignored).

    Raises:
        DataError: a blank line amid the names.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError([f"{path}: not a text file of names ({exc})"]) from None
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    blank = [str(i + 1) for i, name in enumerate(names) if not name]
    if blank:
        raise DataError([f"{path}: blank line(s) {', '.join(blank)} among the names"])
    return names


def _manifest_parameters(path: Path) -> dict:
    """The parameters an existing manifest records.

    Raises:
        SetupError: not a manifest of this tool.
    """
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SetupError(f"{path}: not a readable manifest ({exc})") from None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise SetupError(f"{path}: not a manifest of tools/compose_dataset.py ({SCHEMA})")
    return record["parameters"]


def check_setup(spec: BuildSpec) -> None:
    """The folders and lists exist, and the output folder is new, writable, or a build of the
    same parameters (which is resumed).

    Raises:
        SetupError: naming the path and the problem.
    """
    folders = [*spec.fg_dirs, *spec.alpha_dirs, spec.bg_dir]
    if spec.trimap_dir is not None:
        folders.append(spec.trimap_dir)
    for folder in folders:
        if not folder.is_dir():
            raise SetupError(f"{folder}: no such folder")
    for path in (spec.fg_names, spec.bg_names):
        if not path.is_file():
            raise SetupError(f"{path}: no such list file")
    if spec.num_bgs < 1:
        raise SetupError(f"--num-bgs must be at least 1, got {spec.num_bgs}")
    out = spec.output_dir
    if out.exists() and not out.is_dir():
        raise SetupError(f"{out} exists and is not a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SetupError(f"{out}: {existing} is not writable")
    manifest = out / MANIFEST
    if manifest.is_file():
        recorded, wanted = _manifest_parameters(manifest), spec.parameters()
        differing = sorted(k for k in wanted if recorded.get(k) != wanted[k])
        if differing:
            raise SetupError(
                f"{out} holds a build with other parameters ({', '.join(differing)} differ); "
                "build into another folder"
            )
    elif out.is_dir() and any(out.iterdir()):
        raise SetupError(f"{out} is not empty and holds no {MANIFEST}: build into a new folder")


def _header_size(path: Path) -> tuple[int, int]:
    """The (height, width) of an 8-bit image file, from its header.

    Raises:
        BadSampleError: the file is missing, cut short, not an image, or not 8-bit.
    """
    if not path.is_file():
        raise BadSampleError(path, "file does not exist")
    try:
        with Image.open(path) as image:
            width, height = image.size
            mode = image.mode
    except (UnidentifiedImageError, OSError) as exc:
        raise BadSampleError(path, f"not a readable image ({exc})") from None
    if not is_complete_image(path):
        raise BadSampleError(path, "truncated file (no end marker)")
    if mode in _WIDE_MODES:
        raise BadSampleError(path, f"{mode} pixels: the composition takes 8-bit images")
    return height, width


def _find(name: str, folders: tuple[Path, ...]) -> Path:
    """The first ``folder / name`` that exists; else the one file of the same stem with another
    image suffix (an alpha stored as ``.png`` for a ``.jpg`` foreground); else the first folder's
    ``name``, for the message."""
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    stem = Path(name).stem
    for folder in folders:
        found = [folder / f"{stem}{ext}" for ext in IMAGE_EXTENSIONS]
        found = [path for path in found if path.is_file()]
        if len(found) == 1:
            return found[0]
    return folders[0] / name


def _background_path(spec: BuildSpec, name: str) -> Path:
    """A listed background, or the same without ``optional_bg_prefix`` when only that exists."""
    path = spec.bg_dir / name
    prefix = spec.optional_bg_prefix
    if not path.is_file() and prefix and name.startswith(prefix):
        unprefixed = spec.bg_dir / name[len(prefix) :]
        if unprefixed.is_file():
            return unprefixed
    return path


def _trimaps(spec: BuildSpec, fg_names: list[str]) -> tuple[dict[str, Path], bool]:
    """The trimap folder's files by stem, and whether every composite has its own trimap.

    Raises:
        DataError: two trimaps share a stem.
    """
    try:
        by_stem = list_images_by_stem(spec.trimap_dir)
    except ValueError as exc:
        raise DataError([str(exc)]) from None
    per_composite = all(
        Path(composite_name(name, k)).stem in by_stem
        for name in fg_names
        for k in range(spec.num_bgs)
    )
    return by_stem, per_composite


def _check_sizes(fg_path: Path, others: list[Path], problems: list[str]) -> tuple[int, int] | None:
    """Read the headers of a foreground and of its alpha and trimaps; record each problem."""
    try:
        fg_hw = _header_size(fg_path)
    except BadSampleError as exc:
        problems.append(str(exc))
        fg_hw = None
    for path in others:
        try:
            hw = _header_size(path)
        except BadSampleError as exc:
            problems.append(str(exc))
            continue
        if fg_hw is not None and hw != fg_hw:
            problems.append(
                f"{path}: size {hw[1]}x{hw[0]} differs from its foreground {fg_path} "
                f"{fg_hw[1]}x{fg_hw[0]} (W x H)"
            )
    return fg_hw


def plan_build(spec: BuildSpec) -> list[ForegroundJob]:
    """Check the release and list the work, one job per foreground, in list order.

    Raises:
        DataError: every problem found, each naming its file (nothing has been written).
    """
    fg_names, bg_names = _read_list(spec.fg_names), _read_list(spec.bg_names)
    logger.info(
        "checking %d foregrounds and the first %d of %d backgrounds",
        len(fg_names),
        len(fg_names) * spec.num_bgs,
        len(bg_names),
    )
    problems: list[str] = []
    if not fg_names:
        raise DataError([f"{spec.fg_names}: no foreground listed"])
    needed = len(fg_names) * spec.num_bgs
    if len(bg_names) < needed:
        problems.append(
            f"{spec.bg_names}: {len(bg_names)} backgrounds listed, but {len(fg_names)} "
            f"foregrounds x {spec.num_bgs} backgrounds need {needed}"
        )
    elif len(bg_names) > needed:
        unused = len(bg_names) - needed
        logger.info("%s: the last %d backgrounds are not used", spec.bg_names, unused)
    stems: dict[str, str] = {}
    for name in fg_names:
        if Path(name).stem in stems:
            problems.append(
                f"{spec.fg_names}: {stems[Path(name).stem]} and {name} share the stem "
                f"{Path(name).stem!r}: their composites would have the same names"
            )
        stems[Path(name).stem] = name
    trimaps, per_composite = _trimaps(spec, fg_names) if spec.trimap_dir else ({}, False)

    jobs = []
    for index, name in enumerate(fg_names):
        fg_path, alpha_path = _find(name, spec.fg_dirs), _find(name, spec.alpha_dirs)
        try:
            assigned = backgrounds_of(index, spec.num_bgs, bg_names)
        except ValueError:  # the short list is reported above
            assigned = []
        composites = []
        for k, bg_name in enumerate(assigned):
            out_name = composite_name(name, k)
            trimap = None
            if spec.trimap_dir is not None:
                stem = Path(out_name).stem if per_composite else Path(name).stem
                trimap = trimaps.get(stem, spec.trimap_dir / f"{stem}.png")
            composites.append(
                CompositeJob(out_name, k, bg_name, _background_path(spec, bg_name), trimap)
            )
        per_fg = sorted({c.trimap for c in composites if c.trimap is not None})
        _check_sizes(fg_path, [alpha_path, *per_fg], problems)
        jobs.append(
            ForegroundJob(
                name, fg_path, alpha_path, tuple(composites), spec.output_dir, spec.resize
            )
        )
    for job in jobs:
        for composite in job.composites:
            try:
                _header_size(composite.background)
            except BadSampleError as exc:
                problems.append(f"{exc} (background {composite.k} of {job.fg_name})")
    if problems:
        raise DataError(problems)
    return jobs
