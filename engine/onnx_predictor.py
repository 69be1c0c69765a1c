"""Alpha mattes from an exported ONNX graph (``tools/export_onnx.py``) with onnxruntime.

``OnnxMattingPredictor`` has ``engine.predictor.MattingPredictor``'s call signature::

    predictor = OnnxMattingPredictor("MEMatte_S.onnx")  # CPU; CUDA when onnxruntime has it
    alpha = predictor("image.jpg", "trimap.png")  # float32 [H, W] in [0, 1]

The alpha has the trimap's known regions forced to 0 and 1 as the official script does, so
``floor(alpha * 255)`` is the PNG that ``inference.py`` writes. The graph runs one image at a
time (its batch is 1) in float32; the inference itself needs no PyTorch.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from data.image_io import read_rgb, read_trimap

__all__ = [
    "IMAGE_INPUT",
    "KEEP_OUTPUT",
    "MAX_NUMBER_TOKEN_INPUT",
    "NO_CAP",
    "PHAS_OUTPUT",
    "SCORES_OUTPUT",
    "TRIMAP_INPUT",
    "OnnxMattingPredictor",
    "RoutingMaps",
    "read_image",
    "read_trimap_values",
]

logger = logging.getLogger(__name__)

# The graph's interface (written by tools/export_onnx.py): input and output names, the routing
# outputs formatted with the routed block's index.
IMAGE_INPUT, TRIMAP_INPUT, MAX_NUMBER_TOKEN_INPUT = "image", "trimap", "max_number_token"
PHAS_OUTPUT = "phas"
KEEP_OUTPUT, SCORES_OUTPUT = "keep_block{}", "router_scores_block{}"
# A cap at least the token count of any image: global attention for every routed token.
NO_CAP = np.iinfo(np.int64).max
UINT8_MAX = 255.0
CPU_PROVIDER, CUDA_PROVIDER = "CPUExecutionProvider", "CUDAExecutionProvider"
RGB_CHANNELS = 3


@dataclass
class RoutingMaps:
    """Routing of one image, per routed block.

    Attributes:
        blocks: indexes of the routed blocks.
        keep: one ``[h, w]`` bool map per block (True = global attention).
        scores: one ``[h, w, 2]`` float32 log-probability map per block (index 0 = global).
    """

    blocks: list[int]
    keep: list[np.ndarray]
    scores: list[np.ndarray]


def _providers(device: str) -> list[str]:
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU_PROVIDER]
    if device == "cuda" and CUDA_PROVIDER not in available:
        raise ValueError(f"device 'cuda' requested but onnxruntime offers only {available}")
    if device not in ("auto", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return [CUDA_PROVIDER, CPU_PROVIDER] if CUDA_PROVIDER in available else [CPU_PROVIDER]


def _as_array(value: Any) -> np.ndarray:
    """A PIL image, a torch tensor (moved to the CPU) or an array, as a numpy array."""
    if isinstance(value, Image.Image):
        return np.asarray(value)
    if hasattr(value, "detach"):  # a torch tensor; no torch import needed to read it
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _to_unit_float(array: np.ndarray, what: str) -> np.ndarray:
    """uint8 / 255, or a float array in [0, 1] as float32."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / UINT8_MAX
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    raise ValueError(f"{what} must be uint8 or float in [0, 1], got {array.dtype}")


def read_image(image: Any) -> np.ndarray:
    """The image as the official script feeds it: ``[H, W, 3]`` float32 RGB in [0, 1].

    Args:
        image: a file path, a PIL image, an ``[H, W, 3]`` uint8 RGB array or a ``[3, H, W]``
            float tensor in [0, 1].
    """
    if isinstance(image, str | Path):
        return read_rgb(image)
    channels_first = hasattr(image, "detach")
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    array = _as_array(image)
    if channels_first:
        array = array.transpose(1, 2, 0)  # [3, H, W] -> [H, W, 3]
    if array.ndim != 3 or array.shape[2] != RGB_CHANNELS:
        raise ValueError(f"image must be [H, W, 3] RGB (or a [3, H, W] tensor), got {array.shape}")
    return _to_unit_float(array, "image")


def read_trimap_values(trimap: Any) -> np.ndarray:
    """The trimap as the official script feeds it: ``[H, W]`` float32, file value / 255.

    Args:
        trimap: a file path, a PIL image or an ``[H, W]`` uint8 array with 0 / 128 / 255.
    """
    if isinstance(trimap, str | Path):
        return read_trimap(trimap)
    if isinstance(trimap, Image.Image):
        trimap = trimap.convert("L")
    array = _as_array(trimap)
    if array.ndim != 2 or array.dtype != np.uint8:
        raise ValueError(f"trimap must be an [H, W] uint8 array, got {array.dtype} {array.shape}")
    return array.astype(np.float32) / UINT8_MAX


class OnnxMattingPredictor:
    """An exported MEMatte (or ViTMatte) graph behind ``MattingPredictor``'s call signature.

    Args:
        model_path: the ``.onnx`` file written by ``tools/export_onnx.py``.
        device: ``auto`` (CUDA when onnxruntime has its CUDA provider, else CPU), ``cpu`` or
            ``cuda``.
        max_number_token: cap on tokens in one global attention; None takes the exported
            config's cap (18500 for the official configs; no cap if the config has none).
        threads: onnxruntime intra-op threads (None: its default, one per core).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unusable device or cap.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        device: str = "auto",
        max_number_token: int | None = None,
        threads: int | None = None,
    ) -> None:
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"{model_path}: no such ONNX file")
        if max_number_token is not None and not isinstance(max_number_token, int):
            raise ValueError(
                f"max_number_token must be an integer or None, got {max_number_token!r} (the "
                "'auto' rule of utils/token_budget.py models the PyTorch forward's memory)"
            )
        options = ort.SessionOptions()
        # Memory patterns plan one block for all activations of an input shape, allocated next
        # to the arena's: they more than double the peak from the second call on (measured at
        # 2048 x 2048: +966 MiB against +399 MiB without) and do not pay off when sizes vary.
        options.enable_mem_pattern = False
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model_path), options, providers=_providers(device))
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.routed_blocks: list[int] = json.loads(metadata.get("routed_blocks", "[]"))
        if max_number_token is None:
            max_number_token = json.loads(metadata.get("max_number_token", "null"))
        self.max_number_token = NO_CAP if max_number_token is None else max_number_token
        self.inputs = {value.name for value in self.session.get_inputs()}
        logger.info(
            "%s on %s, cap %s", model_path, self.session.get_providers()[0], self.max_number_token
        )

    def __call__(
        self, image: Any, trimap: Any, *, return_routing: bool = False
    ) -> np.ndarray | tuple[np.ndarray, RoutingMaps]:
        """Alpha of one image.

        Args:
            image: a path, a PIL image, an ``[H, W, 3]`` uint8 RGB array or a ``[3, H, W]``
                float tensor in [0, 1].
            trimap: a path, a PIL image or an ``[H, W]`` uint8 array with 0 / 128 / 255.
            return_routing: also return the routing maps.

        Returns:
            alpha ``[H, W]`` float32 in [0, 1] with the known regions forced (0 where the trimap
            is 0, 1 where it is 255), and with ``return_routing`` a :class:`RoutingMaps`.

        Raises:
            ValueError: unsupported inputs, or image and trimap of different sizes.
        """
        rgb, values = read_image(image), read_trimap_values(trimap)
        if rgb.shape[:2] != values.shape:
            raise ValueError(
                f"image is {rgb.shape[1]}x{rgb.shape[0]} but trimap is "
                f"{values.shape[1]}x{values.shape[0]} (W x H)"
            )
        feeds = {
            IMAGE_INPUT: np.ascontiguousarray(rgb.transpose(2, 0, 1)[None]),  # [1, 3, H, W]
            TRIMAP_INPUT: values[None, None],  # [1, 1, H, W]
            MAX_NUMBER_TOKEN_INPUT: np.array(self.max_number_token, dtype=np.int64),
        }
        feeds = {name: value for name, value in feeds.items() if name in self.inputs}
        names = [output.name for output in self.session.get_outputs()]
        outputs = dict(zip(names, self.session.run(names, feeds), strict=True))
        alpha = outputs[PHAS_OUTPUT][0, 0]
        alpha[values == 0] = 0.0
        alpha[values == 1] = 1.0
        if not return_routing:
            return alpha
        routing = RoutingMaps(
            blocks=self.routed_blocks,
            keep=[outputs[KEEP_OUTPUT.format(i)][0, ..., 0] > 0 for i in self.routed_blocks],
            scores=[outputs[SCORES_OUTPUT.format(i)][0] for i in self.routed_blocks],
        )
        return alpha, routing
