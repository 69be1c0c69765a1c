"""Pixel limits of the image readers: the default largest image a run reads, and the ceiling that
bounds every decoder the project uses.

A reader checks the size a file declares in its header before it decodes anything
(:func:`data.image_io.image_size`), against the caller's limit (``DEFAULT_MAX_PIXELS`` unless
given; ``inference.py --max-pixels``, the web demo's ``--max-pixels``). The decoders are bounded
on their own as well, in case a file's header and data disagree:

- OpenCV refuses images above ``OPENCV_IO_MAX_IMAGE_PIXELS``, a variable it reads once, when its
  library loads. Importing this module sets it to ``DECODER_MAX_PIXELS`` unless the environment
  already sets it; ``data/__init__.py`` imports this module before anything of ``data`` imports
  cv2, so every entry point whose first project import is from ``data`` (or reaches ``data``
  before cv2: ``inference.py``, ``tools/web_demo.py``, ``tools/evaluate.py``) runs bounded.
- Pillow refuses images above twice ``PIL.Image.MAX_IMAGE_PIXELS`` (its default, 2 x 89.5 M px),
  above ``DECODER_MAX_PIXELS``.

So no limit may exceed ``DECODER_MAX_PIXELS``.
"""

from __future__ import annotations

import argparse
import os

__all__ = [
    "DECODER_MAX_PIXELS",
    "DEFAULT_MAX_PIXELS",
    "OPENCV_MAX_PIXELS_VARIABLE",
    "max_pixels_argument",
]

# The largest image a run reads unless told otherwise: 8192 x 8192 (a 6K photo is 29 M px); its
# forward fits a few GiB with the automatic token cap (predictor.token_budget).
DEFAULT_MAX_PIXELS = 2**26
# The ceiling of every decoder (16384 x 8192), below Pillow's refusal (2 x 89,478,485 px).
DECODER_MAX_PIXELS = 2**27
OPENCV_MAX_PIXELS_VARIABLE = "OPENCV_IO_MAX_IMAGE_PIXELS"

os.environ.setdefault(OPENCV_MAX_PIXELS_VARIABLE, str(DECODER_MAX_PIXELS))


def max_pixels_argument(value: str) -> int:
    """A command line's ``--max-pixels``: a whole number of pixels, 1 to ``DECODER_MAX_PIXELS``.

    Raises:
        argparse.ArgumentTypeError: anything else (argparse reports it as a usage error).
    """
    try:
        pixels = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("takes a whole number of pixels (H x W)") from None
    if not 1 <= pixels <= DECODER_MAX_PIXELS:
        raise argparse.ArgumentTypeError(
            f"must be 1 to {DECODER_MAX_PIXELS} ({DECODER_MAX_PIXELS / 1e6:.1f} MP, the ceiling "
            "of the image decoders)"
        )
    return pixels
