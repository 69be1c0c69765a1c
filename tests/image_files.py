"""Image files for the format and decoder-bomb tests: a small picture in each readable format,
the same file with another size declared in its header (a bomb: a few hundred bytes that claim
gigabytes), and a real PNG bomb (a valid file, its rows of zeros compressed a thousandfold).

The headers are patched by hand from each format's specification, independently of the readers
under test.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# Pillow's writer for the suffixes it does not map by itself.
_PILLOW_FORMATS = {".jpe": "JPEG", ".pbm": "PPM", ".pgm": "PPM", ".ppm": "PPM", ".pnm": "PPM"}
# PNG chunk types and the TIFF tags of the image size.
_IHDR, _IDAT, _IEND = b"IHDR", b"IDAT", b"IEND"
_TIFF_WIDTH, _TIFF_LENGTH, _TIFF_SHORT = 256, 257, 3
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Rows of a bomb compressed at once.
_BOMB_ROWS = 256


def picture(hw: tuple[int, int] = (30, 40), seed: int = 0) -> np.ndarray:
    """A smooth ``[H, W, 3]`` uint8 RGB picture (compresses like a photo, survives JPEG)."""
    coarse = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return cv2.resize(coarse, hw[::-1], interpolation=cv2.INTER_LINEAR)


def tall_image_and_trimap(folder: Path) -> tuple[Path, Path, tuple[int, int]]:
    """A tall, narrow image (40 tokens by 1.5: 26.7:1) and its trimap in ``folder``: their paths
    and ``(H, W)``."""
    hw = (16 * 40, 24)
    image, trimap = folder / "tall.png", folder / "tall_trimap.png"
    cv2.imwrite(str(image), picture(hw))
    levels = np.zeros(hw, np.uint8)
    levels[:, 8:16], levels[:, 16:] = 128, 255
    cv2.imwrite(str(trimap), levels)
    return image, trimap, hw


def write_picture(path: Path, rgb: np.ndarray) -> np.ndarray:
    """Write ``rgb`` in the format of ``path``'s suffix with Pillow (gray for ``.pgm``, 1-bit for
    ``.pbm``, lossless WebP, a palette for GIF); return the file's RGB levels as Pillow decodes
    them (the reference for OpenCV's decoding)."""
    suffix = path.suffix.lower()
    image = Image.fromarray(rgb)
    if suffix == ".pgm":
        image = image.convert("L")
    elif suffix == ".pbm":
        image = image.convert("1")
    options = {"lossless": True} if suffix == ".webp" else {}
    image.save(path, format=_PILLOW_FORMATS.get(suffix), **options)
    with Image.open(path) as saved:
        return np.asarray(saved.convert("RGB"))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def declare_size(path: Path, width: int, height: int) -> None:
    """Patch the size declared in the header of a file written by :func:`write_picture`, its data
    left as it is."""
    data = bytearray(path.read_bytes())
    suffix = path.suffix.lower()
    if suffix == ".png":
        data[16:24] = struct.pack(">II", width, height)  # IHDR: width, height
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    elif suffix in (".jpg", ".jpeg", ".jpe"):
        at = data.index(b"\xff\xc0")  # SOF0: length, precision, height, width
        data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    elif suffix == ".bmp":
        data[18:26] = struct.pack("<ii", width, height)  # BITMAPINFOHEADER
    elif suffix in (".tif", ".tiff"):
        order = "<" if data[:2] == b"II" else ">"
        (ifd,) = struct.unpack(order + "I", data[4:8])
        (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
        for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
            tag, kind = struct.unpack(order + "HH", data[entry : entry + 4])
            if tag in (_TIFF_WIDTH, _TIFF_LENGTH):
                value = width if tag == _TIFF_WIDTH else height
                packed = (
                    struct.pack(order + "HH", value, 0)
                    if kind == _TIFF_SHORT
                    else struct.pack(order + "I", value)
                )
                data[entry + 8 : entry + 12] = packed
    elif suffix == ".webp":  # lossless: 14 bits each of width - 1 and height - 1
        at = data.index(b"VP8L") + 9  # chunk type and size, then the signature byte
        bits = int.from_bytes(data[at : at + 4], "little") & ~((1 << 28) - 1)
        bits |= (width - 1) | ((height - 1) << 14)
        data[at : at + 4] = bits.to_bytes(4, "little")
    elif suffix == ".gif":  # the logical screen and the first image descriptor
        data[6:10] = struct.pack("<HH", width, height)
        at = data.index(b"\x2c", 13)
        data[at + 5 : at + 9] = struct.pack("<HH", width, height)
    else:  # PNM family: "P<n>\n<width> <height>\n..."
        magic, _, rest = bytes(data).partition(b"\n")
        _, _, rest = rest.partition(b"\n")
        data = bytearray(magic + b"\n" + f"{width} {height}".encode() + b"\n" + rest)
    path.write_bytes(bytes(data))


def png_bomb(path: Path, width: int, height: int) -> None:
    """A valid 8-bit gray PNG of zeros, ``width`` x ``height``, written row block by row block
    (a 10000 x 10000 one takes about 100 KB on disk and 100 MB once decoded)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    chunks = []
    for start in range(0, height, _BOMB_ROWS):
        chunks.append(compressor.compress(row * min(_BOMB_ROWS, height - start)))
    chunks.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray
    path.write_bytes(
        PNG_SIGNATURE
        + _png_chunk(_IHDR, header)
        + _png_chunk(_IDAT, b"".join(chunks))
        + _png_chunk(_IEND, b"")
    )
