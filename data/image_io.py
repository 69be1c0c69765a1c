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

Two readers take maps with other rules: ``read_trimap`` (inference and evaluation inputs) accepts
only 8-bit single-channel trimaps (a grayscale PNG saved as RGB included) and returns file value
/ 255, as the official inference feeds them; ``read_map_u8`` (``tools/evaluate.py``) returns the
8-bit levels the official MATLAB evaluation compares: 16-bit values become ``round(v / 257)`` and
a colour file keeps its red channel, as ``evaluate.m`` keeps ``(:, :, 1)`` of the RGB image.

Problems with one file raise ``BadSampleError`` (or its subclass ``UnreadableImageError``), which
carries the path, so callers can report the file and skip it.

``write_image`` encodes by the file suffix and writes through ``utils.file_io.atomic_write``, so an
interrupted run never leaves a truncated image behind.
"""

import logging
from pathlib import Path

import cv2
import numpy as np

from utils.file_io import atomic_write

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "BadSampleError",
    "UnreadableImageError",
    "encode_image",
    "list_images",
    "list_images_by_stem",
    "read_gray",
    "read_map_u8",
    "read_rgb",
    "read_train_alpha",
    "read_train_rgb",
    "read_trimap",
    "write_image",
]

# File suffixes (lower case) treated as images when listing a folder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

_UINT8_MAX = 255.0
_UINT16_MAX = 65535.0
UINT16_PER_UINT8 = _UINT16_MAX / _UINT8_MAX  # 257: 16-bit value v is 8-bit round(v / 257)
_BGR_RED = 2  # channel index of red in OpenCV's BGR order


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
    """The file is missing, empty, truncated or not an image that OpenCV can decode."""


def list_images(folder: str | Path) -> list[Path]:
    """Sorted image files directly in ``folder`` (suffix in ``IMAGE_EXTENSIONS``, not hidden)."""
    return sorted(
        path
        for path in Path(folder).iterdir()
        if not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
    )


def list_images_by_stem(folder: str | Path) -> dict[str, Path]:
    """Map file stem -> path for the image files directly inside ``folder``.

    Args:
        folder: directory to list (not recursive). Hidden files are ignored.

    Returns:
        ``{stem: path}``, sorted by stem.

    Raises:
        ValueError: two image files in ``folder`` share a stem (``a.jpg`` and ``a.png``), so the
            match by stem would be ambiguous.
    """
    by_stem: dict[str, Path] = {}
    for path in list_images(folder):
        if path.stem in by_stem:
            raise ValueError(
                f"{folder}: files {by_stem[path.stem].name} and {path.name} share the stem "
                f"{path.stem!r}; keep one so that files can be matched by stem"
            )
        by_stem[path.stem] = path
    return dict(sorted(by_stem.items()))


def _read_raw(path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Decode a file with OpenCV's ``flags`` (by default without any conversion: BGR(A) order,
    native bit depth, EXIF orientation ignored)."""
    if not path.is_file():
        raise UnreadableImageError(path, "file does not exist")
    # imdecode instead of imread (same decoders and conversions): no OpenCV warning on stderr,
    # and non-ASCII paths work.
    buffer = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(buffer, flags) if buffer.size else None
    if image is None:
        raise UnreadableImageError(path, "cannot decode image (empty, truncated or unknown format)")
    return image


def _to_unit_float(image: np.ndarray, path: Path) -> np.ndarray:
    """Scale an integer or float image to float32 in [0, 1] according to its dtype."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / _UINT8_MAX
    if image.dtype == np.uint16:
        return image.astype(np.float32) / _UINT16_MAX
    if image.dtype in (np.float32, np.float64):
        return np.clip(image.astype(np.float32), 0.0, 1.0)
    raise BadSampleError(path, f"unsupported pixel type {image.dtype}")


def _colour_channels(image: np.ndarray) -> np.ndarray:
    """Drop the alpha channel of a gray+alpha ([H, W, 2]) or BGRA ([H, W, 4]) image."""
    if image.ndim == 3 and image.shape[2] in (2, 4):
        return image[:, :, : image.shape[2] - 1]
    return image


def read_rgb(path: str | Path) -> np.ndarray:
    """Read a colour image as RGB float32 in [0, 1].

    Args:
        path: image file (see the module docstring for the conversions applied).

    Returns:
        ``[H, W, 3]`` float32 array, RGB order.

    Raises:
        UnreadableImageError: the file is missing or cannot be decoded.
        BadSampleError: unsupported pixel type or channel count.
    """
    path = Path(path)
    image = _colour_channels(_read_raw(path))
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)  # gray [H, W] -> [H, W, 3]
    if image.ndim != 3 or image.shape[2] != 3:
        raise BadSampleError(path, f"unsupported image shape {image.shape}")
    return np.ascontiguousarray(_to_unit_float(image, path)[:, :, ::-1])  # BGR -> RGB


def _read_map(path: Path) -> np.ndarray:
    """Decode a map at its native bit depth: ``[H, W]`` for a gray file (alpha channel dropped,
    gray saved as colour collapsed), ``[H, W, 3]`` BGR when the colour channels differ."""
    image = _colour_channels(_read_raw(path))
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        first = image[:, :, 0]
        if np.array_equal(first, image[:, :, 1]) and np.array_equal(first, image[:, :, 2]):
            image = first
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3):
        return np.ascontiguousarray(image)
    raise BadSampleError(path, f"unsupported map shape {image.shape}")


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


def read_trimap(path: str | Path) -> np.ndarray:
    """Read an 8-bit trimap as the official inference feeds it: file value / 255.

    Args:
        path: single-channel 8-bit image file (0 background, 128 unknown, 255 foreground); a
            grayscale PNG saved as RGB(A) is accepted.

    Returns:
        ``[H, W]`` float32 array (128 -> 128 / 255: levels are kept, not re-quantized).

    Raises:
        UnreadableImageError: the file is missing or cannot be decoded.
        BadSampleError: not 8-bit, or a colour image.
    """
    path = Path(path)
    image = _read_map(path)
    if image.ndim == 3:
        raise BadSampleError(path, "trimap must be single-channel, got a colour image")
    if image.dtype != np.uint8:
        raise BadSampleError(path, f"trimap must be 8-bit (0..255), got {image.dtype}")
    return image.astype(np.float32) / _UINT8_MAX


def read_map_u8(path: str | Path) -> np.ndarray:
    """Read a map (alpha matte, prediction, trimap) as the 8-bit levels the official MATLAB
    evaluation compares.

    Args:
        path: 8- or 16-bit image file; 16-bit values become ``round(v / 257)``; a colour file
            (channels differ) keeps its red channel, with a warning.

    Returns:
        ``[H, W]`` uint8 array.

    Raises:
        UnreadableImageError: the file is missing or cannot be decoded.
        BadSampleError: unsupported pixel type or channel count.
    """
    path = Path(path)
    image = _read_map(path)
    if image.ndim == 3:
        logger.warning("%s is a colour image; using its red channel, as evaluate.m does", path)
        image = np.ascontiguousarray(image[:, :, _BGR_RED])
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
    return _read_raw(Path(path), cv2.IMREAD_GRAYSCALE).astype(np.float32) / _UINT8_MAX


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
