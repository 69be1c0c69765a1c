"""Reading images and single-channel maps from disk, with explicit format conversions, and
writing images atomically.

``read_rgb`` and ``read_gray`` return float32 arrays in [0, 1]:

- bit depth: 8-bit values are divided by 255, 16-bit values by 65535; float images are clipped
  to [0, 1]. Other dtypes are rejected.
- channels: an RGB image (``read_rgb``) is ``[H, W, 3]`` in RGB order. A grayscale file is
  replicated to three channels; an RGBA (or gray + alpha) file loses its alpha channel, as PIL's
  ``convert("RGB")`` does. A map (``read_gray``: alpha matte) is ``[H, W]``: a single-channel
  file is used as is; from a multi-channel file the alpha channel is dropped and the first colour
  channel is kept when all colour channels are equal (a grayscale PNG saved as RGB), otherwise
  the colour is converted to luma (ITU-R BT.601, as ``cv2.imread(path, 0)`` does).
- orientation: EXIF orientation tags are ignored (as PIL does in the official inference), so an
  image stays pixel-aligned with its trimap and alpha.

The training pipeline reads its files as the official one does, with ``cv2.imread``'s conversions:
``read_train_rgb`` (foregrounds, backgrounds: ``cv2.imread(path)``, 8-bit colour, EXIF orientation
applied, returned as RGB) and ``read_train_alpha`` (``cv2.imread(path, 0) / 255``, EXIF
orientation applied), so a rotated JPEG and its alpha meet as in the official run.

``read_rgb_levels`` returns the same RGB image without the float conversion (uint8 or uint16), so
that inference sends 8-bit pixels to the device and converts them there, once.

Two readers take maps with other rules: ``read_trimap_levels`` (inference and evaluation inputs)
accepts only 8-bit single-channel trimaps (a grayscale PNG saved as RGB included) of the values
0, 128 and 255; other values (a trimap saved as JPEG) are refused with the fix, or with ``snap``
moved to the nearest level, with a warning naming the file; ``read_trimap`` gives those levels /
255, as the official inference feeds them. ``read_map_u8`` (``tools/evaluate.py``) returns the
8-bit levels the official MATLAB evaluation compares: 16-bit values become ``round(v / 257)``. A
colour file where a map is expected is an error (``evaluate.m`` would silently keep its red
channel; a gray image saved as RGB is fine).

Formats: the still-image formats of ``IMAGE_EXTENSIONS`` (PNG, JPEG, BMP, TIFF, WebP, GIF and the
PNM family: PBM, PGM, PPM, PNM); of an animated GIF, WebP or PNG and of a multi-page TIFF, the
first frame is read. Folder listings (:func:`scan_images`) name every other file with the reason
it is not read.

Sizes: every reader reads the width and height a file declares in its header first, without
decoding (:func:`image_size`, Pillow's lazy open), and refuses a file above its ``max_pixels``
(``data.pixel_limits.DEFAULT_MAX_PIXELS`` unless given) before any decoder runs; a file whose size
cannot be read that way (a format Pillow does not parse lazily, such as Radiance ``.hdr``) is
refused, whatever OpenCV could make of it. The decoders are bounded as well
(:mod:`data.pixel_limits`).

Problems with one file raise ``BadSampleError`` (or its subclasses ``UnreadableImageError`` and
``ImageTooLargeError``), which carries the path, so callers can report the file and skip it. A
PNG or JPEG file that stops before its end marker is unreadable (truncated), whatever a decoder
would make of the rest (OpenCV 4 fills a truncated JPEG with grey and only says so on stderr);
``is_complete_image`` makes the same check on a written file without decoding it.

``write_image`` encodes by the file suffix and writes through ``utils.file_io.atomic_write``, so an
interrupted run never leaves a truncated image behind.
"""

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from data.pixel_limits import DEFAULT_MAX_PIXELS
from data.trimap import SNAP_TRIMAP_FLAG, non_trimap_share, snap_trimap
from utils.file_io import atomic_write
from utils.levels import UINT8_MAX, UINT16_PER_UINT8, unit_float_array

logger = logging.getLogger(__name__)

__all__ = [
    "HEADER_FORMATS",
    "IMAGE_EXTENSIONS",
    "BadSampleError",
    "ImageTooLargeError",
    "SkippedFile",
    "UnreadableImageError",
    "check_image_size",
    "encode_image",
    "image_size",
    "images_by_stem",
    "is_complete_image",
    "list_images",
    "list_images_by_stem",
    "read_gray",
    "read_map_levels",
    "read_map_u8",
    "read_rgb",
    "read_rgb_levels",
    "read_train_alpha",
    "read_train_rgb",
    "read_trimap",
    "read_trimap_levels",
    "scan_images",
    "to_map_levels",
    "to_rgb_levels",
    "trimap_levels",
    "write_image",
]

# File suffixes (lower case) of the still-image formats read: each one decoded by OpenCV (GIF since
# 4.12) and its size read from the header by Pillow without decoding.
IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".jpe",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
    ".pbm",
    ".pgm",
    ".ppm",
    ".pnm",
)
# The formats, as Pillow's plugins are named, whose header Pillow reads without decoding the
# pixels (its JPEG plugin also opens MPO files, JPEGs with more pictures appended, as cameras
# write); any other content is refused.
HEADER_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF", "PPM")

# Where PNG and JPEG files start and end: a file without its end marker was cut short.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC, the last bytes of every PNG
JPEG_START = b"\xff\xd8"
JPEG_END = b"\xff\xd9"
# Bytes read at each end of a file to check its markers (JPEG writers may pad the end with zeros).
_MARKER_BYTES = 64


class BadSampleError(Exception):
    """A sample that cannot be used: unreadable file, mismatched sizes, unsupported format.

    Args:
        path: the offending file.
        reason: what is wrong with it, in a few words.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UnreadableImageError(BadSampleError):
    """The file is missing, empty, truncated, not in a format read here, or not an image that
    OpenCV can decode."""


class ImageTooLargeError(BadSampleError):
    """The file declares more pixels than the reader's limit (refused before decoding).

    Args:
        path: the file.
        hw: its declared ``(H, W)``; None when Pillow refuses to open it at all (it declares more
            than twice ``PIL.Image.MAX_IMAGE_PIXELS``, above every limit).
        max_pixels: the limit it exceeds.
    """

    def __init__(self, path: str | Path, hw: tuple[int, int] | None, max_pixels: int) -> None:
        self.hw = hw
        self.max_pixels = max_pixels
        declared = (
            f"{hw[1]}x{hw[0]} px (W x H) = {hw[0] * hw[1] / 1e6:.1f} MP"
            if hw is not None
            else f"more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.1f} MP"
        )
        super().__init__(
            path,
            f"declares {declared}, above the limit of {max_pixels / 1e6:.1f} MP ({max_pixels} "
            "px); refused before decoding",
        )


@dataclass(frozen=True)
class SkippedFile:
    """A folder entry that a listing does not read, and why."""

    path: Path
    reason: str


def _formats_read() -> str:
    return " ".join(IMAGE_EXTENSIONS)


def _skip_reason(path: Path) -> str | None:
    """Why a listing does not read ``path``; None for an image file it reads."""
    if path.name.startswith("."):
        return "hidden file, not read"
    if path.is_dir():
        return "a folder: folders are not searched"
    if not path.is_file():
        return "not a regular file (or a broken link)"
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        kind = f"format {path.suffix.lower()}" if path.suffix else "a file without a suffix"
        return f"{kind} is not read (formats read: {_formats_read()})"
    return None


def scan_images(folder: str | Path) -> tuple[list[Path], list[SkippedFile]]:
    """The image files directly in ``folder`` (suffix in ``IMAGE_EXTENSIONS``), and every other
    entry with the reason it is not read (hidden, a folder, another format...).

    Returns:
        the images and the skipped entries, each sorted by name.
    """
    images, skipped = [], []
    for path in sorted(Path(folder).iterdir()):
        reason = _skip_reason(path)
        if reason is None:
            images.append(path)
        else:
            skipped.append(SkippedFile(path, reason))
    return images, skipped


def list_images(folder: str | Path) -> list[Path]:
    """Sorted image files directly in ``folder`` (:func:`scan_images`); the entries it skips are
    logged as a warning, with the reasons."""
    images, skipped = scan_images(folder)
    if skipped:
        logger.warning(
            "%d entries of %s are not read: %s",
            len(skipped),
            folder,
            "; ".join(f"{entry.path.name}: {entry.reason}" for entry in skipped),
        )
    return images


def images_by_stem(images: list[Path]) -> dict[str, Path]:
    """Map file stem -> path for image files of one folder.

    Returns:
        ``{stem: path}``, sorted by stem.

    Raises:
        ValueError: two files share a stem (``a.jpg`` and ``a.png``), so the match by stem would
            be ambiguous.
    """
    by_stem: dict[str, Path] = {}
    for path in images:
        if path.stem in by_stem:
            raise ValueError(
                f"{path.parent}: files {by_stem[path.stem].name} and {path.name} share the stem "
                f"{path.stem!r}; keep one so that files can be matched by stem"
            )
        by_stem[path.stem] = path
    return dict(sorted(by_stem.items()))


def list_images_by_stem(folder: str | Path) -> dict[str, Path]:
    """:func:`images_by_stem` of :func:`list_images` (not recursive; skipped entries logged).

    Raises:
        ValueError: two image files in ``folder`` share a stem.
    """
    return images_by_stem(list_images(folder))


@contextlib.contextmanager
def _pillow_open(source: Path | io.BytesIO) -> Iterator[Image.Image]:
    """``Image.open`` restricted to ``HEADER_FORMATS``, without Pillow's warning for images above
    its ``MAX_IMAGE_PIXELS`` (the callers check the size against their own limit; Pillow's
    refusal, at twice that, stays)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(source, formats=HEADER_FORMATS) as image:
            yield image


def _declared_hw(path: Path) -> tuple[int, int] | None:
    """``(H, W)`` from a file's header without decoding; None when Pillow refuses to open a file
    that large.

    Raises:
        UnreadableImageError: missing, empty, or not in ``HEADER_FORMATS``.
    """
    if not path.is_file():
        raise UnreadableImageError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise UnreadableImageError(path, "empty file")
    try:
        with _pillow_open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        return None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # another format, a broken header
        raise UnreadableImageError(
            path,
            f"cannot decode: not an image in a format read here ({_formats_read()}), so its size "
            f"cannot be read before decoding ({exc})",
        ) from exc
    return height, width


def image_size(path: str | Path) -> tuple[int, int]:
    """The ``(H, W)`` a file declares in its header, read without decoding its pixels.

    Raises:
        UnreadableImageError: the file is missing or empty, or is not an image in a format whose
            header Pillow reads without decoding (``HEADER_FORMATS``): its size cannot be known
            before decoding, so it is refused.
        ImageTooLargeError: it declares more pixels than Pillow opens at all.
    """
    path = Path(path)
    hw = _declared_hw(path)
    if hw is None:
        raise ImageTooLargeError(path, None, 2 * Image.MAX_IMAGE_PIXELS)
    return hw


def check_image_size(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """:func:`image_size`, refused above ``max_pixels``.

    Raises:
        UnreadableImageError: as :func:`image_size`.
        ImageTooLargeError: it declares more than ``max_pixels`` pixels.
    """
    path = Path(path)
    hw = _declared_hw(path)
    if hw is None or hw[0] * hw[1] > max_pixels:
        raise ImageTooLargeError(path, hw, max_pixels)
    return hw


def _ends_complete(head: bytes, tail: bytes) -> bool | None:
    """Whether a PNG or JPEG file (by its first bytes) ends with its format's end marker; None
    for other formats."""
    if head.startswith(PNG_SIGNATURE):
        return tail.endswith(PNG_END)
    if head.startswith(JPEG_START):
        return tail.rstrip(b"\x00").endswith(JPEG_END)
    return None


def is_complete_image(
    path: str | Path, *, decode: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS
) -> bool:
    """Whether ``path`` is a whole image file: a ``.png`` with the PNG signature and end chunk,
    a ``.jpg``/``.jpeg`` with the JPEG start and end markers, any other suffix non-empty.

    Without ``decode`` it reads only the two ends of the file: the check for outputs that an
    earlier run may have left behind (empty, cut short, or overwritten by something else).

    Args:
        path: the file.
        decode: also decode it (finds damage between intact ends); a file above ``max_pixels``
            is not decoded and counts as incomplete.
        max_pixels: the size limit of the decoding check.
    """
    path = Path(path)
    if decode:
        try:
            _read_raw(path, max_pixels=max_pixels)
        except BadSampleError:
            return False
    try:
        size = path.stat().st_size
        with open(path, "rb") as file:
            head = file.read(len(PNG_SIGNATURE))
            file.seek(max(0, size - _MARKER_BYTES))
            tail = file.read()
    except OSError:
        return False
    start = {".png": PNG_SIGNATURE, ".jpg": JPEG_START, ".jpeg": JPEG_START}.get(
        path.suffix.lower(), b""
    )
    return size > 0 and head.startswith(start) and _ends_complete(head, tail) is not False


def _check_not_truncated(path: Path, buffer: np.ndarray) -> None:
    """Raise if a PNG or JPEG file stops before its end marker. Files with data after the marker
    (phone photos with an appended video) are decoded once by PIL to tell them from cut ones."""
    head, tail = buffer[: len(PNG_SIGNATURE)].tobytes(), buffer[-_MARKER_BYTES:].tobytes()
    if _ends_complete(head, tail) is not False:
        return
    try:
        with _pillow_open(io.BytesIO(buffer.tobytes())) as image:
            image.load()
    except OSError as exc:
        raise UnreadableImageError(path, f"truncated file ({exc})") from exc


def _read_raw(
    path: Path, flags: int = cv2.IMREAD_UNCHANGED, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode a file with OpenCV's ``flags`` (by default without any conversion: BGR(A) order,
    native bit depth, EXIF orientation ignored), after checking the size its header declares
    against ``max_pixels`` (:func:`check_image_size`)."""
    declared = check_image_size(path, max_pixels)
    # imdecode instead of imread (same decoders and conversions): no OpenCV warning on stderr,
    # and non-ASCII paths work.
    buffer = np.fromfile(path, dtype=np.uint8)
    _check_not_truncated(path, buffer)
    try:
        image = cv2.imdecode(buffer, flags)
    except cv2.error as exc:  # OpenCV's own limits (data.pixel_limits), a decoder's failure
        raise UnreadableImageError(path, f"cannot decode image ({exc.err})") from exc
    if image is None:
        raise UnreadableImageError(path, "cannot decode image (truncated or unknown format)")
    if image.shape[0] * image.shape[1] != declared[0] * declared[1]:  # EXIF may swap H and W
        raise UnreadableImageError(
            path,
            f"decodes to {image.shape[1]}x{image.shape[0]} px but its header declares "
            f"{declared[1]}x{declared[0]}",
        )
    return image


def _to_unit_float(image: np.ndarray, path: Path) -> np.ndarray:
    """Scale an integer or float image to float32 in [0, 1] according to its dtype (float images
    are clipped to [0, 1])."""
    if image.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        raise BadSampleError(path, f"unsupported pixel type {image.dtype}")
    return np.clip(unit_float_array(image), 0.0, 1.0, dtype=np.float32)


def _colour_channels(image: np.ndarray) -> np.ndarray:
    """Drop the alpha channel of a gray+alpha ([H, W, 2]) or BGRA ([H, W, 4]) image."""
    if image.ndim == 3 and image.shape[2] in (2, 4):
        return image[:, :, : image.shape[2] - 1]
    return image


def to_rgb_levels(image: np.ndarray, source: str | Path, *, bgr: bool = False) -> np.ndarray:
    """A decoded image as ``[H, W, 3]`` RGB at its native bit depth: gray replicated, an alpha
    channel (gray + alpha, RGBA) dropped, as PIL's ``convert("RGB")``.

    Args:
        image: ``[H, W]``, ``[H, W, 1]``, ``[H, W, 2]``, ``[H, W, 3]`` or ``[H, W, 4]``.
        source: the file (or a description of the array) for error messages.
        bgr: the colour channels are in OpenCV's BGR(A) order.

    Raises:
        BadSampleError: another shape, or a pixel type other than uint8 and uint16.
    """
    image = _colour_channels(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)  # gray [H, W] -> [H, W, 3]
    if image.ndim != 3 or image.shape[2] != 3:
        raise BadSampleError(source, f"unsupported image shape {image.shape}")
    if image.dtype not in (np.uint8, np.uint16):
        raise BadSampleError(source, f"unsupported pixel type {image.dtype} (8 or 16 bits)")
    return np.ascontiguousarray(image[:, :, ::-1] if bgr else image)  # BGR -> RGB


def read_rgb_levels(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a colour image as RGB at its native bit depth (see the module docstring).

    Args:
        path: the image file.
        max_pixels: the largest image read; a file declaring more is refused before decoding.

    Returns:
        ``[H, W, 3]`` uint8 or uint16 array, RGB order.

    Raises:
        UnreadableImageError: the file is missing, truncated or cannot be decoded.
        ImageTooLargeError: it declares more than ``max_pixels`` pixels.
        BadSampleError: unsupported pixel type or channel count.
    """
    path = Path(path)
    return to_rgb_levels(_read_raw(path, max_pixels=max_pixels), path, bgr=True)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read a colour image as RGB float32 in [0, 1].

    Args:
        path: image file (see the module docstring for the conversions applied).

    Returns:
        ``[H, W, 3]`` float32 array, RGB order.

    Raises:
        UnreadableImageError: the file is missing, truncated or cannot be decoded.
        BadSampleError: unsupported pixel type or channel count.
    """
    path = Path(path)
    return _to_unit_float(read_rgb_levels(path), path)


def _as_map(image: np.ndarray, source: str | Path) -> np.ndarray:
    """A decoded map at its native bit depth: ``[H, W]`` for a gray image (alpha channel
    dropped, gray saved as colour collapsed), ``[H, W, 3]`` when the colour channels differ."""
    image = _colour_channels(np.asarray(image))
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        first = image[:, :, 0]
        if np.array_equal(first, image[:, :, 1]) and np.array_equal(first, image[:, :, 2]):
            image = first
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3):
        return np.ascontiguousarray(image)
    raise BadSampleError(source, f"unsupported map shape {image.shape}")


def _read_map(path: Path) -> np.ndarray:
    """Decode a map file with :func:`_as_map` (colour channels in BGR order)."""
    return _as_map(_read_raw(path), path)


def read_gray(path: str | Path) -> np.ndarray:
    """Read a single-channel map (alpha matte) as float32 in [0, 1].

    Args:
        path: image file (see the module docstring for the conversions applied).

    Returns:
        ``[H, W]`` float32 array.

    Raises:
        UnreadableImageError: the file is missing or cannot be decoded.
        BadSampleError: unsupported pixel type or channel count.
    """
    path = Path(path)
    image = _read_map(path)
    if image.ndim == 3:
        image = cv2.cvtColor(_to_unit_float(image, path), cv2.COLOR_BGR2GRAY)
    return _to_unit_float(image, path)


def trimap_levels(image: np.ndarray, source: str | Path, *, snap: bool = False) -> np.ndarray:
    """Check a decoded trimap: 8-bit, single-channel (equal colour channels collapse), values 0,
    128 and 255 only; other values are refused, or with ``snap`` moved to the nearest level
    (:func:`data.trimap.snap_trimap`, with a warning naming ``source`` and the share moved).

    Args:
        image: ``[H, W]`` or ``[H, W, C]`` array.
        source: the file (or a description of the array) for messages.
        snap: snap values other than the levels instead of refusing the trimap.

    Returns:
        ``[H, W]`` uint8 array in {0, 128, 255}.

    Raises:
        BadSampleError: not 8-bit, a colour image, or (without ``snap``) values other than the
            levels; the message says how to fix it.
    """
    image = _as_map(image, source)
    if image.ndim != 2:
        raise BadSampleError(source, "trimap must be single-channel, got a colour image")
    if image.dtype != np.uint8:
        raise BadSampleError(source, f"trimap must be 8-bit (0..255), got {image.dtype}")
    share = non_trimap_share(image)
    if not share:
        return image
    if not snap:
        raise BadSampleError(
            source,
            f"{100 * share:.2f}% of the pixels are neither 0, 128 nor 255: not a trimap as it "
            "is (saved as JPEG? resized with interpolation? an alpha matte?); save it losslessly "
            f"(PNG) with only these values, or pass {SNAP_TRIMAP_FLAG} (snap_trimap=True in "
            "Python) to move each value to the nearest of them",
        )
    logger.warning(
        "%s: %.2f%% of the trimap's pixels are neither 0, 128 nor 255; snapped to the nearest (%s)",
        source,
        100 * share,
        SNAP_TRIMAP_FLAG,
    )
    return snap_trimap(image)


def read_trimap_levels(
    path: str | Path, *, snap: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Read an 8-bit trimap (see :func:`trimap_levels`).

    Args:
        path: single-channel 8-bit image file (0 background, 128 unknown, 255 foreground); a
            grayscale PNG saved as RGB(A) is accepted.
        snap: snap values other than the levels instead of refusing the file.
        max_pixels: the largest trimap read; a file declaring more is refused before decoding.

    Returns:
        ``[H, W]`` uint8 array.

    Raises:
        UnreadableImageError: the file is missing, truncated or cannot be decoded.
        ImageTooLargeError: it declares more than ``max_pixels`` pixels.
        BadSampleError: not 8-bit, a colour image, or values other than the levels.
    """
    path = Path(path)
    return trimap_levels(_read_raw(path, max_pixels=max_pixels), path, snap=snap)


def read_trimap(path: str | Path, *, snap: bool = False) -> np.ndarray:
    """Read an 8-bit trimap as the official inference feeds it: file value / 255.

    Returns:
        ``[H, W]`` float32 array (128 -> 128 / 255: levels are kept, not re-quantized).

    Raises:
        UnreadableImageError, BadSampleError: as :func:`read_trimap_levels`.
    """
    return read_trimap_levels(path, snap=snap).astype(np.float32) / UINT8_MAX


def to_map_levels(image: np.ndarray, source: str | Path) -> np.ndarray:
    """A decoded single-channel map (alpha matte, mask) at its native bit depth.

    Args:
        image: ``[H, W]`` or ``[H, W, C]`` array; equal colour channels collapse, an alpha channel
            is dropped.
        source: the file (or a description of the array) for error messages.

    Returns:
        ``[H, W]`` array.

    Raises:
        BadSampleError: a colour image (its channels differ).
    """
    image = _as_map(image, source)
    if image.ndim == 3:
        raise BadSampleError(
            source,
            "a colour image where a single-channel map (alpha matte, trimap, mask) is expected "
            "(evaluate.m would silently use its red channel)",
        )
    return image


def read_map_levels(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a single-channel map at its native bit depth (see :func:`to_map_levels`).

    Args:
        path: the map file.
        max_pixels: the largest map read; a file declaring more is refused before decoding.

    Raises:
        UnreadableImageError: the file is missing, truncated or cannot be decoded.
        ImageTooLargeError: it declares more than ``max_pixels`` pixels.
        BadSampleError: a colour image.
    """
    path = Path(path)
    return to_map_levels(_read_raw(path, max_pixels=max_pixels), path)


def read_map_u8(path: str | Path) -> np.ndarray:
    """Read a map (alpha matte, prediction, trimap) as the 8-bit levels the official MATLAB
    evaluation compares.

    Args:
        path: 8- or 16-bit single-channel image file (a gray image saved as RGB included);
            16-bit values become ``round(v / 257)``.

    Returns:
        ``[H, W]`` uint8 array.

    Raises:
        UnreadableImageError: the file is missing, truncated or cannot be decoded.
        BadSampleError: a colour image, or an unsupported pixel type.
    """
    path = Path(path)
    image = read_map_levels(path)
    if image.dtype == np.uint16:
        return np.round(image.astype(np.float64) / UINT16_PER_UINT8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise BadSampleError(path, f"unsupported pixel type {image.dtype}")
    return image


def read_train_rgb(path: str | Path) -> np.ndarray:
    """Read a training foreground or background as the official pipeline does.

    Args:
        path: image file, decoded as ``cv2.imread(path)``: 8-bit (16-bit values shifted down),
            three channels (gray replicated, an alpha channel dropped), EXIF orientation applied.

    Returns:
        ``[H, W, 3]`` uint8 array, RGB order.

    Raises:
        UnreadableImageError: the file is missing or cannot be decoded.
    """
    image = _read_raw(Path(path), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(image[:, :, ::-1])  # BGR -> RGB


def read_train_alpha(path: str | Path) -> np.ndarray:
    """Read a training alpha matte as the official pipeline does:
    ``cv2.imread(path, 0).astype(np.float32) / 255``.

    Args:
        path: image file, decoded as 8-bit grayscale (a colour file converted by the decoder),
            EXIF orientation applied.

    Returns:
        ``[H, W]`` float32 array in [0, 1].

    Raises:
        UnreadableImageError: the file is missing or cannot be decoded.
    """
    return _read_raw(Path(path), cv2.IMREAD_GRAYSCALE).astype(np.float32) / UINT8_MAX


def encode_image(path: str | Path, image: np.ndarray) -> bytes:
    """The bytes ``write_image`` would write: ``image`` encoded in the format of the file suffix
    (OpenCV's defaults).

    Args:
        path: the file the bytes are for; ``.png``, ``.jpg`` or another suffix OpenCV encodes.
        image: ``[H, W]`` gray or ``[H, W, 3]`` BGR array, uint8 (or uint16 for PNG).

    Raises:
        OSError: OpenCV cannot encode the image in that format.
    """
    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix, image)
    if not ok:
        raise OSError(f"cannot encode {path} ({image.dtype} {image.shape})")
    return encoded.tobytes()


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Encode ``image`` in the format of the file suffix (:func:`encode_image`) and write it
    atomically.

    Args:
        path: output file; ``.png``, ``.jpg`` or another suffix OpenCV encodes.
        image: ``[H, W]`` gray or ``[H, W, 3]`` BGR array, uint8 (or uint16 for PNG).

    Raises:
        OSError: OpenCV cannot encode the image in that format.
    """
    encoded = encode_image(path, image)
    atomic_write(path, lambda file: file.write(encoded))
