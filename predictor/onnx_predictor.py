"""Alpha mattes from an exported ONNX graph (``tools/export_onnx.py``) with onnxruntime.

``OnnxMattingPredictor`` has ``predictor.matting.MattingPredictor``'s call signature::

    predictor = OnnxMattingPredictor("MEMatte_S.onnx")  # CPU; CUDA when onnxruntime has it
    alpha = predictor("image.jpg", "trimap.png")  # float32 [H, W] in [0, 1]

The alpha has the trimap's known regions forced to 0 and 1 as the official script does, so
``floor(alpha * 255)`` is the PNG that ``inference.py`` writes (``inference.py --onnx`` runs it).
Inputs are read and converted as ``MattingPredictor`` reads them (one code path); the graph runs
one image at a time (its batch is 1) in float32 under onnxruntime, without PyTorch's model code.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from google.protobuf.message import DecodeError

from modeling.decoder.detail_capture import force_known
from predictor.matting import BatchPrediction, ImagePredictor
from predictor.segmenter import Segmenter, as_segmenter
from utils.device import to_unit_float

__all__ = [
    "IMAGE_INPUT",
    "KEEP_OUTPUT",
    "MAX_NUMBER_TOKEN_INPUT",
    "NO_CAP",
    "PHAS_OUTPUT",
    "SCORES_OUTPUT",
    "TRIMAP_INPUT",
    "OnnxMattingPredictor",
    "check_onnx_file",
    "onnx_providers",
]

logger = logging.getLogger(__name__)

# The graph's interface (written by tools/export_onnx.py): input and output names, the routing
# outputs formatted with the routed block's index.
IMAGE_INPUT, TRIMAP_INPUT, MAX_NUMBER_TOKEN_INPUT = "image", "trimap", "max_number_token"
PHAS_OUTPUT = "phas"
KEEP_OUTPUT, SCORES_OUTPUT = "keep_block{}", "router_scores_block{}"
# A cap at least the token count of any image: global attention for every routed token.
NO_CAP = np.iinfo(np.int64).max
CPU_PROVIDER, CUDA_PROVIDER = "CPUExecutionProvider", "CUDAExecutionProvider"
GLOBAL_ROUTE = 0  # index of "route to global attention" in the router scores


def onnx_providers(device: str) -> list[str | tuple[str, dict[str, int]]]:
    """onnxruntime providers for ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (GPU N).

    Raises:
        ValueError: another device, or CUDA where onnxruntime has no CUDA provider.
    """
    available = ort.get_available_providers()
    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return [CPU_PROVIDER]
    if kind not in ("auto", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if kind == "cuda" and CUDA_PROVIDER not in available:
        raise ValueError(f"device {device!r} requested but onnxruntime offers only {available}")
    if CUDA_PROVIDER not in available:
        return [CPU_PROVIDER]
    return [(CUDA_PROVIDER, {"device_id": int(index or 0)}), CPU_PROVIDER]


def check_onnx_file(path: str | Path) -> None:
    """Check, without building a session, that ``path`` holds a graph written by
    ``tools/export_onnx.py``: an ONNX model with the image and trimap inputs and the alpha output
    (the file is parsed, its external data left unread).

    Raises:
        FileNotFoundError: no such file.
        ValueError: empty, not an ONNX model, or a graph without that interface.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: not an ONNX model ({exc})") from exc
    inputs = {value.name for value in model.graph.input}
    outputs = {value.name for value in model.graph.output}
    if not {IMAGE_INPUT, TRIMAP_INPUT} <= inputs or PHAS_OUTPUT not in outputs:
        found = f"inputs {sorted(inputs) or 'none'}, outputs {sorted(outputs) or 'none'}"
        raise ValueError(
            f"{path}: not a matting graph written by tools/export_onnx.py (needs the inputs "
            f"{IMAGE_INPUT!r} and {TRIMAP_INPUT!r} and the output {PHAS_OUTPUT!r}; has {found})"
        )


class OnnxMattingPredictor(ImagePredictor):
    """An exported MEMatte (or ViTMatte) graph behind ``MattingPredictor``'s call signature.

    Args:
        model_path: the ``.onnx`` file written by ``tools/export_onnx.py`` (a graph is code for
            onnxruntime's operators only: loading one runs nothing else).
        device: ``auto`` (CUDA when onnxruntime has its CUDA provider, else CPU), ``cpu``,
            ``cuda`` or ``cuda:N``.
        max_number_token: cap on tokens in one global attention; None takes the exported
            config's cap (18500 for the official configs; no cap if the config has none).
        threads: onnxruntime intra-op threads (None: its default, one per core).
        segmenter: for ``box=`` / ``points=`` calls, as ``MattingPredictor``'s (a PyTorch model,
            run on the predictor's device).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unusable device or cap, a file onnxruntime cannot load, or a segmenter
            that cannot be loaded.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        device: str = "auto",
        max_number_token: int | None = None,
        threads: int | None = None,
        segmenter: Segmenter | str | Path | None = None,
    ) -> None:
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"{model_path}: no such ONNX file")
        if max_number_token is not None and not isinstance(max_number_token, int):
            raise ValueError(
                f"max_number_token must be an integer or None, got {max_number_token!r} (the "
                "'auto' rule of predictor/token_budget.py models the PyTorch forward's memory)"
            )
        options = ort.SessionOptions()
        # Memory patterns plan one block for all activations of an input shape, allocated next
        # to the arena's: they more than double the peak from the second call on (measured at
        # 2048 x 2048: +966 MiB against +399 MiB without) and do not pay off when sizes vary.
        options.enable_mem_pattern = False
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(model_path), options, providers=onnx_providers(device)
            )
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            raise ValueError(f"{model_path}: onnxruntime cannot load it ({exc})") from exc
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.routed_blocks: list[int] = json.loads(metadata.get("routed_blocks", "[]"))
        if max_number_token is None:
            max_number_token = json.loads(metadata.get("max_number_token", "null"))
        self.max_number_token = NO_CAP if max_number_token is None else max_number_token
        self.inputs = {value.name for value in self.session.get_inputs()}
        self.outputs = [value.name for value in self.session.get_outputs()]
        provider = self.session.get_providers()[0]
        # Where the tensors of the results (and inference.py's foreground estimation) go.
        gpu = "cuda" if device == "auto" else device  # "cuda" or "cuda:N"
        self.device = torch.device(gpu if provider == CUDA_PROVIDER else "cpu")
        logger.info("%s on %s, cap %s", model_path, provider, self.max_number_token)
        self.segmenter = as_segmenter(segmenter, self.device)

    def predict_levels(self, image: torch.Tensor, trimap: torch.Tensor) -> BatchPrediction:
        """Alpha and routing of a batch of same-sized images, one graph run per image
        (``MattingPredictor.predict_levels``'s interface, so that ``inference.py`` runs either).

        Args:
            image: ``[B, 3, H, W]`` RGB: uint8 or uint16 levels, or float in [0, 1].
            trimap: ``[B, 1, H, W]`` uint8 levels (fed as value / 255).
        """
        alphas, keeps, probabilities = [], [], []
        for rgb, levels in zip(image, trimap, strict=True):
            trimap_values = to_unit_float(levels, "cpu")  # [1, H, W]
            feeds = {
                IMAGE_INPUT: to_unit_float(rgb, "cpu")[None].numpy(),  # [1, 3, H, W]
                TRIMAP_INPUT: trimap_values[None].numpy(),  # [1, 1, H, W]
                MAX_NUMBER_TOKEN_INPUT: np.array(self.max_number_token, dtype=np.int64),
            }
            feeds = {name: value for name, value in feeds.items() if name in self.inputs}
            outputs = dict(zip(self.outputs, self.session.run(self.outputs, feeds), strict=True))
            alpha = torch.from_numpy(outputs[PHAS_OUTPUT][0, 0])
            alphas.append(force_known(alpha, trimap_values[0]))
            # per routed block: keep [1, h, w, 1] -> [h, w]; log-probabilities -> p(global)
            keeps.append(
                [
                    torch.from_numpy(outputs[KEEP_OUTPUT.format(i)][0, ..., 0])
                    for i in self.routed_blocks
                ]
            )
            probabilities.append(
                [
                    torch.from_numpy(outputs[SCORES_OUTPUT.format(i)][0, ..., GLOBAL_ROUTE]).exp()
                    for i in self.routed_blocks
                ]
            )
        return BatchPrediction(
            alpha=torch.stack(alphas),
            keep=[torch.stack(maps) for maps in zip(*keeps, strict=True)],
            probability=[torch.stack(maps) for maps in zip(*probabilities, strict=True)],
            block_indexes=tuple(self.routed_blocks),
        )
