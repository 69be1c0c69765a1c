"""Matting inference from Python: :class:`MattingPredictor` (an image and a trimap or a mask in,
alpha out) and the building blocks it shares with ``inference.py`` and the training-time
evaluator (the inference model without its teacher, its weights, the official 8-bit alpha).

Inputs are read as the official ``inference.py`` reads them: RGB / 255 (16-bit images / 65535;
gray replicated, an alpha channel dropped, EXIF orientation ignored, as PIL's
``convert("RGB")``), trimap = 8-bit value / 255 (unknown = 128 / 255). The alpha comes back with
the official known-region clamp (0 where the trimap is 0, 1 where it is 255), so
``floor(alpha * 255)`` is the PNG the official script writes.

References: detectron2 ``DefaultPredictor`` (the idea); MEMatte ``inference.py`` (the protocol).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from data.image_io import (
    UINT8_MAX,
    BadSampleError,
    read_map_levels,
    read_rgb_levels,
    read_trimap_levels,
    to_map_levels,
    to_rgb_levels,
    to_unit_float,
    trimap_levels,
)
from data.trimap import trimap_from_mask
from engine.checkpoint import CheckpointError, clean_state_dict, load_checkpoint
from engine.config import LazyConfig, instantiate
from modeling.backbone.router import GLOBAL_ROUTE
from utils.device import autocast, resolve_device
from utils.token_budget import auto_max_number_token

__all__ = [
    "AUTO",
    "BatchPrediction",
    "ImagePredictor",
    "MattingPredictor",
    "RoutingMaps",
    "alpha_to_uint8",
    "build_inference_model",
    "image_levels",
    "load_inference_weights",
    "mask_levels",
    "prepare_inputs",
    "trimap_input_levels",
]

logger = logging.getLogger(__name__)

UINT16_MAX = 65535  # largest 16-bit gray level a PIL image may hold
AUTO = "auto"
# Keys listed in an error message before the rest is elided.
_MAX_LISTED_KEYS = 8
# PIL modes of 16-bit (or 32-bit integer) gray images, read at their bit depth.
_PIL_DEEP_MODES = ("I;16", "I;16L", "I;16B", "I")

ImageInput = str | Path | Image.Image | np.ndarray | Tensor
MapInput = str | Path | Image.Image | np.ndarray | Tensor


def build_inference_model(config_file: str | Path, overrides: Sequence[str] = ()) -> nn.Module:
    """Instantiate ``cfg.model`` from a LazyConfig file without the distillation teacher."""
    cfg = LazyConfig.load(str(config_file))
    cfg = LazyConfig.apply_overrides(cfg, [*overrides, "model.teacher_backbone=None"])
    return instantiate(cfg.model)


def load_inference_weights(model: nn.Module, path: str | Path, *, trusted: bool = False) -> None:
    """Load an official (``{"model": ...}`` or bare) or trainer checkpoint for inference.

    ``teacher_backbone.*`` and a DDP ``module.`` prefix are dropped. Every model weight must be
    present; unexpected keys are logged.

    Args:
        model: the inference model (no teacher).
        path: the checkpoint file, read by :func:`engine.checkpoint.load_checkpoint`.
        trusted: also load a file that pickles objects other than tensors.

    Raises:
        FileNotFoundError, ValueError: unreadable or untrusted file, or weights missing for the
            model.
    """
    path = Path(path)
    state = clean_state_dict(load_checkpoint(path, trusted=trusted)["model"], drop_teacher=True)
    if not all(isinstance(value, Tensor) for value in state.values()):
        raise CheckpointError(f"{path}: the model state dict holds values that are not tensors")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: another model size
        raise ValueError(f"{path} does not fit the configured model: {exc}") from exc
    if result.missing_keys:
        listed = ", ".join(result.missing_keys[:_MAX_LISTED_KEYS])
        raise ValueError(
            f"{path} lacks {len(result.missing_keys)} weights of the configured model "
            f"(wrong config?): {listed}"
        )
    if result.unexpected_keys:
        logger.warning(
            "%s: %d unused keys: %s",
            path,
            len(result.unexpected_keys),
            ", ".join(result.unexpected_keys[:_MAX_LISTED_KEYS]),
        )


def alpha_to_uint8(alpha: np.ndarray | Tensor, rounding: bool = False) -> np.ndarray:
    """8-bit alpha as the official script writes it: ``floor(alpha * 255)`` (torchvision's
    float-to-PIL conversion truncates), or rounded.

    Args:
        alpha: ``[H, W]`` alpha in [0, 1], known regions already forced (float32).
        rounding: round to the nearest level instead of truncating.

    Returns:
        ``[H, W]`` uint8 array.
    """
    scaled = torch.as_tensor(alpha).float().clamp(0, 1).mul_(UINT8_MAX)
    if rounding:
        scaled.round_()
    return scaled.to(torch.uint8).numpy()


def _pil_levels(image: Image.Image) -> np.ndarray:
    """A PIL image as an array at its bit depth: 16-bit gray as uint16, else ``convert("RGB")``
    (or "L" for single-band images)."""
    if image.mode in _PIL_DEEP_MODES:
        levels = np.array(image)
        if levels.dtype != np.uint16:
            if levels.min() < 0 or levels.max() > UINT16_MAX:
                raise BadSampleError("PIL image", f"{image.mode} values outside 0..65535")
            levels = levels.astype(np.uint16)
        return levels
    return np.array(image.convert("L" if len(image.getbands()) == 1 else "RGB"))


def image_levels(image: ImageInput) -> Tensor:
    """An image input as ``[3, H, W]`` RGB: uint8 or uint16 levels, or float in [0, 1].

    Args:
        image: a file path, a PIL image, an ``[H, W, 3]`` (or ``[H, W]`` gray, ``[H, W, 4]``
            RGBA) uint8/uint16 RGB array, an ``[H, W, 3]`` float array in [0, 1], or a
            ``[3, H, W]`` tensor (uint8 levels or float in [0, 1]).

    Raises:
        BadSampleError: an unreadable file, or a shape or pixel type that is none of these.
        ValueError: float values outside [0, 1].
    """
    if isinstance(image, str | Path):
        levels = read_rgb_levels(image)
    elif isinstance(image, Image.Image):
        levels = to_rgb_levels(_pil_levels(image), "PIL image")
    elif isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise BadSampleError("image tensor", f"expected [3, H, W], got {tuple(image.shape)}")
        return _checked_unit_range(image) if image.is_floating_point() else image
    else:
        array = np.asarray(image)
        if np.issubdtype(array.dtype, np.floating):
            if array.ndim != 3 or array.shape[2] != 3:
                raise BadSampleError("image array", f"expected [H, W, 3], got {array.shape}")
            return _checked_unit_range(torch.from_numpy(array).permute(2, 0, 1).float())
        levels = to_rgb_levels(array, "image array")
    return _read_only_view(levels).permute(2, 0, 1)  # [H, W, 3] -> [3, H, W]


def _read_only_view(array: np.ndarray) -> Tensor:
    """A tensor sharing ``array``'s memory, also when the array is read-only (as arrays of PIL
    images are): the predictor never writes to its inputs, so a copy (72 MiB for a 6K photo)
    is not needed and torch's warning about non-writable arrays does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _checked_unit_range(image: Tensor) -> Tensor:
    if image.numel() and (image.min() < 0 or image.max() > 1):
        raise ValueError("a float image must hold values in [0, 1] (RGB / 255)")
    return image


def trimap_input_levels(trimap: MapInput) -> np.ndarray:
    """A trimap input as ``[H, W]`` uint8 levels (0, 128, 255; other values with a warning).

    Args:
        trimap: a file path, a PIL image, or an ``[H, W]`` uint8 array or tensor.

    Raises:
        BadSampleError: an unreadable file, a colour or non-8-bit trimap.
    """
    if isinstance(trimap, str | Path):
        return read_trimap_levels(trimap)
    if isinstance(trimap, Image.Image):
        return trimap_levels(_pil_levels(trimap), "trimap (PIL image)")
    return trimap_levels(np.asarray(trimap), "trimap array")


def mask_levels(mask: MapInput) -> np.ndarray:
    """A mask input as an ``[H, W]`` array for :func:`data.trimap.trimap_from_mask`.

    Args:
        mask: a file path (8- or 16-bit gray), a PIL image, or an ``[H, W]`` bool, uint8, uint16
            or float array or tensor.

    Raises:
        BadSampleError: an unreadable file or a colour image.
    """
    if isinstance(mask, str | Path):
        return read_map_levels(mask)
    if isinstance(mask, Image.Image):
        return to_map_levels(_pil_levels(mask), "mask (PIL image)")
    return np.asarray(mask)


def prepare_inputs(
    image: ImageInput,
    trimap: MapInput | None = None,
    *,
    mask: MapInput | None = None,
    unknown_width: float | None = None,
) -> tuple[Tensor, np.ndarray]:
    """One image's predictor inputs: ``[3, H, W]`` RGB (:func:`image_levels`) and its ``[H, W]``
    uint8 trimap, given or made from a mask by :func:`data.trimap.trimap_from_mask`.

    Raises:
        BadSampleError: an unreadable input file, or an input of an unsupported form.
        ValueError: neither or both of ``trimap`` and ``mask``, no ``unknown_width`` with a
            mask, or sizes that differ.
    """
    if (trimap is None) == (mask is None):
        raise ValueError("give either a trimap or a mask (with unknown_width)")
    levels = image_levels(image)
    if mask is not None:
        if unknown_width is None:
            raise ValueError(
                "a mask needs unknown_width: px (e.g. 20) or a fraction of the shorter side "
                "(e.g. 0.02)"
            )
        source = str(mask) if isinstance(mask, str | Path) else "the mask"
        trimap_map = trimap_from_mask(mask_levels(mask), unknown_width, source=source)
    else:
        trimap_map = trimap_input_levels(trimap)
    if trimap_map.shape != tuple(levels.shape[-2:]):
        raise ValueError(
            f"the {'mask' if mask is not None else 'trimap'} is {trimap_map.shape[1]}x"
            f"{trimap_map.shape[0]} but the image is {levels.shape[-1]}x{levels.shape[-2]} "
            "(W x H)"
        )
    return levels, trimap_map


@dataclass
class RoutingMaps:
    """Routing decisions of one image, per routed backbone block.

    Attributes:
        keep: block index -> ``[h, w]`` float32 map, 1 where the token went to global attention.
        probability: block index -> ``[h, w]`` float32 router probability of global attention.
    """

    keep: dict[int, np.ndarray]
    probability: dict[int, np.ndarray]


@dataclass
class BatchPrediction:
    """Outputs of :meth:`MattingPredictor.predict_levels`.

    Attributes:
        alpha: ``[B, H, W]`` float32 on the CPU, known regions forced.
        keep: per routed block, ``[B, h, w]`` 0/1 maps (1 = global attention), on the CPU.
        probability: per routed block, ``[B, h, w]`` router probabilities of global attention.
        block_indexes: backbone block index of each map.
    """

    alpha: Tensor
    keep: list[Tensor]
    probability: list[Tensor]
    block_indexes: tuple[int, ...]

    def routing(self, index: int) -> RoutingMaps:
        """The routing maps of image ``index`` of the batch."""
        return RoutingMaps(
            keep={b: k[index].numpy() for b, k in zip(self.block_indexes, self.keep)},
            probability={b: p[index].numpy() for b, p in zip(self.block_indexes, self.probability)},
        )


class ImagePredictor:
    """The one-image call shared by the predictors (:class:`MattingPredictor` and
    ``engine.onnx_predictor.OnnxMattingPredictor``): inputs read and checked once
    (:func:`prepare_inputs`), then the subclass's ``predict_levels`` on a batch of one."""

    def predict_levels(self, image: Tensor, trimap: Tensor) -> BatchPrediction:
        """Alpha and routing of ``[B, 3, H, W]`` images with ``[B, 1, H, W]`` uint8 trimaps."""
        raise NotImplementedError

    def __call__(
        self,
        image: ImageInput,
        trimap: MapInput | None = None,
        *,
        mask: MapInput | None = None,
        unknown_width: float | None = None,
        return_routing: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, RoutingMaps]:
        """Alpha matte of one image.

        Args:
            image: a path, a PIL image, an ``[H, W, 3]`` uint8 RGB array or a ``[3, H, W]``
                float tensor in [0, 1] (see :func:`image_levels` for the other forms).
            trimap: a path, a PIL image or an ``[H, W]`` uint8 array: 0 background, 128
                unknown, 255 foreground.
            mask: instead of a trimap, a rough mask (path, PIL image or array; thresholded at
                half its range), turned into a trimap by :func:`data.trimap.trimap_from_mask`.
            unknown_width: with ``mask``: the unknown band's width on each side of the mask
                boundary, in px (int) or as a fraction of the shorter side (float < 1).
            return_routing: also return the routing maps.

        Returns:
            ``[H, W]`` float32 alpha in [0, 1], with the :class:`RoutingMaps` when
            ``return_routing``.

        Raises:
            BadSampleError: an unreadable input file, or an input of an unsupported form.
            ValueError: neither or both of ``trimap`` and ``mask``, no ``unknown_width`` with a
                mask, or sizes that differ.
        """
        levels, trimap_map = prepare_inputs(image, trimap, mask=mask, unknown_width=unknown_width)
        prediction = self.predict_levels(levels[None], torch.from_numpy(trimap_map)[None, None])
        alpha = prediction.alpha[0].numpy()
        return (alpha, prediction.routing(0)) if return_routing else alpha


class MattingPredictor(ImagePredictor):
    """Alpha mattes from an image and a trimap (or a mask), with the official protocol.

    ``predictor(image, trimap)`` returns ``[H, W]`` float32 alpha in [0, 1] with the known
    regions forced as the official script does, so ``floor(alpha * 255)`` is exactly the PNG
    ``inference.py`` writes. The model runs in eval mode without autograd, so the configs'
    memory-lean inference path (``modeling/lean``) is the one used.

    Args:
        model: a MEMatte (no teacher needed).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (CUDA only) autocast.
        max_number_token: cap on the tokens in one global attention per image: None keeps the
            model's (18500 in the configs, as official), an int sets it, ``"auto"`` picks for
            each image size the largest cap that fits the device's free memory
            (:func:`utils.token_budget.auto_max_number_token`; the cap chosen is logged).
        patch_decoder: decode in the official 512 px tiles (False: the whole image at once, which
            can change results slightly at tile borders).

    Raises:
        ValueError: an unknown precision, fp16 on a CPU, a CUDA device without CUDA, or a bad
            ``max_number_token``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        device: str | torch.device = AUTO,
        precision: str = "fp32",
        max_number_token: int | str | None = None,
        patch_decoder: bool = True,
    ) -> None:
        self.device = resolve_device(device)
        autocast(self.device, precision)  # validates the precision for the device
        if not (max_number_token is None or max_number_token == AUTO):
            if isinstance(max_number_token, bool) or not isinstance(max_number_token, int):
                raise ValueError(
                    f"max_number_token must be an int, 'auto' or None, not {max_number_token!r}"
                )
            if max_number_token < 0:
                raise ValueError(f"max_number_token must be >= 0, got {max_number_token}")
            model.backbone.max_number_token = max_number_token
        self.model = model.to(self.device).eval()
        self.precision = precision
        self.auto_cap = max_number_token == AUTO
        self.patch_decoder = patch_decoder
        self._auto_caps: dict[tuple[int, int], int | None] = {}

    @classmethod
    def from_config(
        cls,
        config_file: str | Path,
        checkpoint: str | Path | None = None,
        *,
        device: str | torch.device = AUTO,
        precision: str = "fp32",
        max_number_token: int | str | None = None,
        patch_decoder: bool = True,
        overrides: Sequence[str] = (),
        trust_checkpoint: bool = False,
    ) -> MattingPredictor:
        """Build the model of a LazyConfig file (without the teacher) and load its weights.

        Args:
            config_file: a config, e.g. ``configs/MEMatte_S_topk0.25_win_global_long.py``
                (configs are code: only from a trusted source).
            checkpoint: official or trainer checkpoint; None keeps random weights (with a
                warning).
            device, precision, max_number_token, patch_decoder: see the class.
            overrides: config overrides ``key=value``.
            trust_checkpoint: also load a checkpoint that pickles objects other than tensors
                (runs code stored in the file).

        Raises:
            FileNotFoundError, ValueError: a missing config or checkpoint, an unreadable or
                untrusted checkpoint, or weights that do not fit the config.
        """
        model = build_inference_model(config_file, overrides)
        if checkpoint is None:
            logger.warning("no checkpoint given: %s has random weights", config_file)
        else:
            load_inference_weights(model, checkpoint, trusted=trust_checkpoint)
        return cls(
            model,
            device=device,
            precision=precision,
            max_number_token=max_number_token,
            patch_decoder=patch_decoder,
        )

    def _set_auto_cap(self, hw: tuple[int, int]) -> None:
        """``max_number_token="auto"``: the cap for images of size ``hw``, logged once."""
        if hw not in self._auto_caps:
            cap = auto_max_number_token(self.model, hw, self.device)
            self._auto_caps[hw] = cap
            chosen = "no cap (every token fits)" if cap is None else f"cap {cap} tokens"
            logger.info("max_number_token auto for %dx%d (HxW) images: %s", *hw, chosen)
        self.model.backbone.max_number_token = self._auto_caps[hw]

    def predict_levels(self, image: Tensor, trimap: Tensor) -> BatchPrediction:
        """Alpha and routing of a batch of same-sized images.

        Args:
            image: ``[B, 3, H, W]`` RGB: uint8 or uint16 levels, or float in [0, 1].
            trimap: ``[B, 1, H, W]`` uint8 levels (fed as value / 255).

        Returns:
            the :class:`BatchPrediction`; each image's result equals its batch-1 result.
        """
        if self.auto_cap:
            self._set_auto_cap(tuple(image.shape[-2:]))
        # uint8 levels go to the model as they are: it converts them crop by crop (value / 255),
        # so a 6K image never exists as floats; other depths are converted here.
        inputs = {
            key: levels.to(self.device, non_blocking=True)
            if levels.dtype == torch.uint8
            else to_unit_float(levels, self.device)
            for key, levels in (("image", image), ("trimap", trimap))
        }
        with torch.inference_mode():
            with autocast(self.device, self.precision):
                # The official clamp of the known regions, done by the model, which then skips
                # the decoder work that the clamp overwrites.
                out = self.model(inputs, patch_decoder=self.patch_decoder, clamp_known=True)
            del inputs
            alpha = out["phas"][:, 0].float()
        return BatchPrediction(
            alpha=alpha.cpu(),
            keep=[keep[..., 0].float().cpu() for keep in out["keep"]],
            # router log-probabilities [B, h, w, 2] -> p(global) [B, h, w]
            probability=[s[..., GLOBAL_ROUTE].float().exp().cpu() for s in out["router_scores"]],
            block_indexes=tuple(self.model.backbone.routed_block_indexes),
        )
