"""Full-scale pixel levels of 8- and 16-bit images: what every layer that scales levels divides
by (the readers, the model's crop-wise input conversion, the predictors, the output writers and
the metrics). No imports, so that code without PyTorch can use them too; the conversion of levels
to float tensors is :func:`utils.device.to_unit_float`.
"""

__all__ = ["UINT8_MAX", "UINT16_MAX", "UINT16_PER_UINT8"]

UINT8_MAX = 255.0  # 8-bit level of full intensity
UINT16_MAX = 65535.0  # 16-bit level of full intensity
UINT16_PER_UINT8 = UINT16_MAX / UINT8_MAX  # 257: 16-bit value v is 8-bit round(v / 257)
