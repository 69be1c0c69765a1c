"""Full-scale pixel levels of 8- and 16-bit images: what every layer that scales levels divides
by (the readers, the model's crop-wise input conversion, the predictors, the output writers and
the metrics), and the conversion of level arrays to floats in [0, 1]. NumPy only, so that code
without PyTorch can use them too; the conversion of levels to float tensors (on a device) is
:func:`utils.device.to_unit_float`, with the same arithmetic.
"""

from __future__ import annotations

import numpy as np

__all__ = ["UINT8_MAX", "UINT16_MAX", "UINT16_PER_UINT8", "unit_float_array"]

UINT8_MAX = 255.0  # 8-bit level of full intensity
UINT16_MAX = 65535.0  # 16-bit level of full intensity
UINT16_PER_UINT8 = UINT16_MAX / UINT8_MAX  # 257: 16-bit value v is 8-bit round(v / 257)


def unit_float_array(levels: np.ndarray) -> np.ndarray:
    """Pixel levels as a new float32 array in [0, 1]: uint8 / 255, uint16 / 65535 (in float32,
    as :func:`utils.device.to_unit_float`), floats as they are."""
    levels = np.asarray(levels)
    if levels.dtype == np.uint8:
        return levels.astype(np.float32) / np.float32(UINT8_MAX)
    if levels.dtype == np.uint16:
        return levels.astype(np.float32) / np.float32(UINT16_MAX)
    return levels.astype(np.float32)
