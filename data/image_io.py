"""Reading images and single-channel maps from disk, with explicit format conversions, and
writing images atomically.

Every reader returns float32 arrays in [0, 1]:

- bit depth: 8-bit values are divided by 255, 16-bit values by 65535; float images are clipped
  to [0, 1]. Other dtypes are rejected.
- channels: an RGB image (``read_rgb``) is ``[H, W, 3]`` in RGB order. A grayscale file is
  replicated to three channels; an RGBA (or gray + alpha) file loses its alpha channel, as PIL's
  ``convert("RGB")`` does. A map (``read_gray``: alpha matte, trimap) is ``[H, W]``: a
  single-channel file is used as is; from a multi-channel file the alpha channel is dropped and the
  first colour channel is kept when all colour channels are equal (a grayscale PNG saved as RGB),
  otherwise the colour is converted to luma (ITU-R BT.601, as ``cv2.imread(path, 0)`` does).
- orientation: EXIF orientation tags are ignored (as PIL does in the official inference), so an
  image stays pixel-aligned with its trimap and alpha.

Problems with one file raise ``BadSampleError`` (or its subclass ``UnreadableImageError``), which
carries the path, so callers can report the file and skip it.

``write_image`` encodes by the file suffix and writes through ``utils.file_io.atomic_write``, so an
interrupted run never leaves a truncated image behind.
"""

from pathlib import Path

import cv2
import numpy as np

from utils.file_io import atomic_write

__all__ = [
    "IMAGE_EXTENSIONS",
    "BadSampleError",
    "UnreadableImageError",
    "list_images",
    "list_images_by_stem",
    "read_gray",
    "read_rgb",
    "write_image",
]

# File suffixes (lower case) treated as images when listing a folder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

_UINT8_MAX = 255.0
_UINT16_MAX = 65535.0


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


def _read_raw(path: Path) -> np.ndarray:
    """Decode a file without any conversion (BGR(A) order, native bit depth)."""
    if not path.is_file():
        raise UnreadableImageError(path, "file does not exist")
    # imdecode instead of imread: no OpenCV warning on stderr, and non-ASCII paths work.
    buffer = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if buffer.size else None
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


def read_gray(path: str | Path) -> np.ndarray:
    """Read a single-channel map (alpha matte, trimap) as float32 in [0, 1].

    Args:
        path: image file (see the module docstring for the conversions applied).

    Returns:
        ``[H, W]`` float32 array (a trimap keeps its stored levels, e.g. 128 -> 128 / 255).

    Raises:
        UnreadableImageError: the file is missing or cannot be decoded.
        BadSampleError: unsupported pixel type or channel count.
    """
    path = Path(path)
    image = _colour_channels(_read_raw(path))
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        if np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(
            image[:, :, 0], image[:, :, 2]
        ):
            image = image[:, :, 0]
        else:
            image = cv2.cvtColor(_to_unit_float(image, path), cv2.COLOR_BGR2GRAY)
    if image.ndim != 2:
        raise BadSampleError(path, f"unsupported map shape {image.shape}")
    return _to_unit_float(image, path)


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Encode ``image`` in the format of the file suffix (OpenCV's defaults) and write it
    atomically.

    Args:
        path: output file; ``.png``, ``.jpg`` or another suffix OpenCV encodes.
        image: ``[H, W]`` gray or ``[H, W, 3]`` BGR array, uint8 (or uint16 for PNG).

    Raises:
        OSError: OpenCV cannot encode the image in that format.
    """
    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix, image)
    if not ok:
        raise OSError(f"cannot encode {path} ({image.dtype} {image.shape})")
    atomic_write(path, lambda file: file.write(encoded.tobytes()))
