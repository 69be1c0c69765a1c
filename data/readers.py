"""Test-set layouts: detect a benchmark folder's layout and list its (image, trimap, alpha) items.

Supported layouts (sub-folders of the test-set folder; files matched by stem, any of
``IMAGE_EXTENSIONS``; the first listed folder name that exists is used; every other entry of the
image and trimap folders is reported in ``MattingTestSet.skipped`` with the reason it is not
read):

==================== ============ =========== ================== ===========================
layout               images       trimaps     alphas (optional)  benchmark
==================== ============ =========== ================== ===========================
``composition-1k``   ``merged``   ``trimaps`` ``alpha_copy`` or  Composition-1k test set
                                              ``alpha``          (GCA / ViTMatte release)
``aim-500``          ``original`` ``trimap``  ``mask``           AIM-500
``distinctions-646`` ``Image``    ``Trimap``  ``GT``             Distinctions-646 test, once
                                                                 composited, with trimaps
``generic``          ``images``   ``trimaps`` ``alphas``         your own data
==================== ============ =========== ================== ===========================

UHRIM's test set and a Distinctions-646 test set composited with the Composition-1k script use
the Composition-1k folder names: ``detect_layout`` reports them as ``composition-1k`` (the files
are read the same way); pass ``layout="uhrim"`` to name UHRIM explicitly.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

from data.image_io import SkippedFile, images_by_stem, list_images_by_stem, scan_images

logger = logging.getLogger(__name__)

__all__ = [
    "FOLDER_LAYOUTS",
    "MattingItem",
    "FolderLayout",
    "MattingTestSet",
    "detect_layout",
    "scan_test_set",
]

# Names listed in log messages before eliding the rest.
_MAX_LOGGED_NAMES = 10


@dataclass(frozen=True)
class FolderLayout:
    """Sub-folder names of one test-set layout (first existing candidate wins).

    Args:
        name: layout identifier.
        image_dirs: candidate names of the image folder.
        trimap_dirs: candidate names of the trimap folder.
        alpha_dirs: candidate names of the ground-truth alpha folder (optional folder).
    """

    name: str
    image_dirs: tuple[str, ...]
    trimap_dirs: tuple[str, ...]
    alpha_dirs: tuple[str, ...]

    def describe(self) -> str:
        """``name: images/ + trimaps/ [+ alphas/]`` for error messages."""
        alphas = " or ".join(f"{d}/" for d in self.alpha_dirs)
        return f"{self.name}: {self.image_dirs[0]}/ + {self.trimap_dirs[0]}/ [+ {alphas}]"


# Detection order; UHRIM shares Composition-1k's folder names, so it is never detected first.
FOLDER_LAYOUTS = (
    FolderLayout("composition-1k", ("merged",), ("trimaps",), ("alpha_copy", "alpha")),
    FolderLayout("aim-500", ("original",), ("trimap",), ("mask",)),
    FolderLayout("distinctions-646", ("Image",), ("Trimap",), ("GT",)),
    FolderLayout("generic", ("images",), ("trimaps",), ("alphas",)),
    FolderLayout("uhrim", ("merged",), ("trimaps",), ("alpha_copy",)),
)
_LAYOUTS_BY_NAME = {layout.name: layout for layout in FOLDER_LAYOUTS}


@dataclass(frozen=True)
class MattingItem:
    """One test image with its trimap and, when available, its ground-truth alpha."""

    name: str
    image_path: Path
    trimap_path: Path
    alpha_path: Path | None


@dataclass
class MattingTestSet:
    """Result of ``scan_test_set``.

    Attributes:
        root: the scanned folder.
        layout: the layout used.
        items: images with a trimap, sorted by name.
        missing_trimaps: images without a trimap (not in ``items``).
        missing_alphas: images of ``items`` without an alpha while the layout has an alpha folder.
        skipped: entries of the image and trimap folders that are not read (another format, a
            hidden file, a folder...), with the reason.
    """

    root: Path
    layout: FolderLayout
    items: list[MattingItem]
    missing_trimaps: list[Path] = field(default_factory=list)
    missing_alphas: list[Path] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)


def _first_existing(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / name for name in names if (root / name).is_dir()), None)


def _supported() -> str:
    return "; ".join(layout.describe() for layout in FOLDER_LAYOUTS)


def detect_layout(folder: str | Path) -> FolderLayout:
    """The first layout of ``FOLDER_LAYOUTS`` whose image and trimap folders exist in ``folder``.

    Args:
        folder: test-set folder.

    Returns:
        The matching ``FolderLayout``.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        ValueError: no layout matches; the message lists the supported layouts and what
            ``folder`` contains.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"test-set folder {root} does not exist")
    for layout in FOLDER_LAYOUTS:
        if _first_existing(root, layout.image_dirs) and _first_existing(root, layout.trimap_dirs):
            return layout
    found = sorted(p.name + "/" for p in root.iterdir() if p.is_dir()) or ["no sub-folder"]
    raise ValueError(
        f"{root} matches no supported test-set layout (found {', '.join(found)}). "
        f"Supported: {_supported()}"
    )


def _elide(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LOGGED_NAMES])
    return shown + (
        f" and {len(names) - _MAX_LOGGED_NAMES} more" if len(names) > _MAX_LOGGED_NAMES else ""
    )


def scan_test_set(folder: str | Path, layout: str | None = None) -> MattingTestSet:
    """List the items of a test set, reporting images that lack a trimap or an alpha.

    Args:
        folder: test-set folder.
        layout: a name from ``FOLDER_LAYOUTS``; ``None`` detects it.

    Returns:
        A ``MattingTestSet``. Missing trimaps and alphas and skipped entries are also logged as
        warnings.

    Raises:
        FileNotFoundError: ``folder`` or the layout's image/trimap folder does not exist.
        ValueError: unknown layout name, no layout detected, or no image in the image folder (the
            message names the entries that are not read, and why).
    """
    root = Path(folder)
    if layout is None:
        spec = detect_layout(root)
    elif layout in _LAYOUTS_BY_NAME:
        spec = _LAYOUTS_BY_NAME[layout]
    else:
        raise ValueError(f"unknown test-set layout {layout!r}; supported: {_supported()}")
    image_dir = _first_existing(root, spec.image_dirs)
    trimap_dir = _first_existing(root, spec.trimap_dirs)
    if image_dir is None or trimap_dir is None:
        raise FileNotFoundError(f"{root} is not a {spec.describe()} folder")
    alpha_dir = _first_existing(root, spec.alpha_dirs)

    image_files, skipped_images = scan_images(image_dir)
    trimap_files, skipped_trimaps = scan_images(trimap_dir)
    images, trimaps = images_by_stem(image_files), images_by_stem(trimap_files)
    alphas = list_images_by_stem(alpha_dir) if alpha_dir is not None else {}
    if not images:
        not_read = [f"{entry.path.name} ({entry.reason})" for entry in skipped_images]
        raise ValueError(
            f"no image to read in {image_dir}"
            + (f"; not read: {_elide(not_read)}" if not_read else " (the folder is empty)")
        )
    test_set = MattingTestSet(
        root=root, layout=spec, items=[], skipped=skipped_images + skipped_trimaps
    )
    for stem, image_path in images.items():
        if stem not in trimaps:
            test_set.missing_trimaps.append(image_path)
            continue
        alpha_path = alphas.get(stem)
        if alpha_dir is not None and alpha_path is None:
            test_set.missing_alphas.append(image_path)
        test_set.items.append(MattingItem(stem, image_path, trimaps[stem], alpha_path))

    if test_set.missing_trimaps:
        logger.warning(
            "%d image(s) in %s have no trimap in %s and are skipped: %s",
            len(test_set.missing_trimaps),
            image_dir,
            trimap_dir,
            _elide([p.name for p in test_set.missing_trimaps]),
        )
    if test_set.skipped:
        logger.warning(
            "%d entries of %s and %s are not read: %s",
            len(test_set.skipped),
            image_dir,
            trimap_dir,
            _elide([f"{entry.path.name} ({entry.reason})" for entry in test_set.skipped]),
        )
    if test_set.missing_alphas:
        logger.warning(
            "%d image(s) in %s have no alpha in %s: %s",
            len(test_set.missing_alphas),
            image_dir,
            alpha_dir,
            _elide([p.name for p in test_set.missing_alphas]),
        )
    return test_set
