"""Matting requests on uploaded files, one loaded model: what the web demo
(:mod:`predictor.web_app`) runs for each request, without the web framework.

A request brings an image and its trimap: an uploaded trimap, a rough mask (turned into a trimap
by :func:`data.trimap.trimap_from_mask`) or a painting (:func:`painted_trimap`). The session
checks the sizes in the files' headers before it decodes anything (the image against
``max_pixels``, the trimap, mask or painting against the image); a file whose size cannot be read
from its header (a format other than those of ``data.image_io.IMAGE_EXTENSIONS``) is refused, so
no decoder ever sees a file larger than ``max_pixels``. It reads the files as ``inference.py``
does (its readers bounded by ``max_pixels`` too), predicts with the request's options (token cap,
precision, patch decoder) and estimates the foreground colours. A request it cannot serve raises
:class:`InputError`, with a message for the person who sent it that names their file; the session
stays usable.

Requests run one at a time (a lock around each): a request's options are set on the shared model,
and two forwards of large images at once could exhaust the memory that ``max_pixels`` was sized
for (:func:`default_max_pixels`).
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from data.image_io import (
    HEADER_FORMATS,
    BadSampleError,
    ImageTooLargeError,
    image_size,
    read_rgb_levels,
    read_trimap_levels,
)
from data.pixel_limits import DECODER_MAX_PIXELS
from data.trimap import TRIMAP_BG, TRIMAP_LEVELS, trimap_from_mask
from modeling.meta_arch.mematte import padded_size
from predictor.foreground import estimate_foreground, foreground_to_uint8
from predictor.inputs import mask_levels
from predictor.matting import AUTO, BatchPrediction, MattingPredictor, RoutingMaps
from predictor.token_budget import SAFETY, peak_bytes
from utils.device import resolve_device
from utils.memory import MIB, TRIM_THRESHOLD_BYTES, free_memory_bytes, peak_memory_bytes

__all__ = [
    "BRUSH_COLOURS",
    "InputError",
    "MattingSession",
    "RequestOptions",
    "SessionResult",
    "Upload",
    "default_max_pixels",
    "painted_trimap",
    "planned_forward_bytes",
    "planned_results_bytes",
]

# Brushes of a painted trimap: each paints its trimap level as a gray (RGB hex).
BRUSH_COLOURS = {"foreground": "#ffffff", "unknown": "#808080", "background": "#000000"}
# A painted layer covers a pixel where its alpha is above half its range.
PAINT_ALPHA_THRESHOLD = 127
# Bytes per image pixel alive after the forward, while a request's results are made and written:
# the image and trimap levels (4), the float32 alpha (4), the 8-bit foreground and alpha (4), and
# the float32 temporaries of the composite (its weight, colours, background and their products:
# 60).
OUTPUT_BYTES_PER_PIXEL = 72
# Memory under those results that does not grow with the image: the freed buffers the heap keeps
# (with the allocator settings of utils.memory.configure_malloc, which the web demo applies).
# Measured (tiny model, CPU, fp32, composite written; tests/test_web_demo.py): peak RSS 0.96 GiB
# over the idle process for 4000 x 3000 px and 2.09 GiB for 6017 x 4872 px, i.e. 70 bytes per
# pixel and 0.17 GiB more.
OUTPUT_FIXED_BYTES = TRIM_THRESHOLD_BYTES
# Side of the largest (square) image default_max_pixels considers, px: the largest square the
# image decoders read (data.pixel_limits).
MAX_PLANNED_SIDE = math.isqrt(DECODER_MAX_PIXELS)
# What the reported peak memory covers on each device type (utils.memory.peak_memory_bytes).
PEAK_MEMORY_SCOPE = {
    "cuda": "torch allocations of this request",
    "cpu": "peak RSS of the server process since it started",
}


class InputError(ValueError):
    """A request the session cannot serve; the message is for the person who sent it."""


@dataclass(frozen=True)
class Upload:
    """An uploaded file.

    Attributes:
        path: where the server stored it.
        name: its name on the sender's machine (for messages and output names).
    """

    path: Path
    name: str


@dataclass(frozen=True)
class RequestOptions:
    """Options of one request.

    Attributes:
        max_number_token: cap on the tokens in one global attention: None for the config's, an
            int, or ``"auto"`` (the largest that fits the free memory).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (CUDA only).
        patch_decoder: decode in the official 512 px tiles.
    """

    max_number_token: int | str | None = None
    precision: str = "fp32"
    patch_decoder: bool = True


@dataclass
class SessionResult:
    """What one request produced.

    Attributes:
        name: the image's file stem, reduced to characters safe in a file name.
        image: ``[3, H, W]`` RGB levels (uint8 or uint16), as read.
        trimap: ``[H, W]`` uint8, the trimap the model saw.
        alpha: ``[H, W]`` float32 in [0, 1], known regions forced (the official protocol).
        foreground: ``[H, W, 3]`` uint8 RGB foreground colours (the levels the cutout files
            hold).
        routing: the routing maps per routed block.
        numbers: the request's numbers, JSON-ready: image and size, options, the token cap in
            effect, tokens, share of tokens in global attention per routed block, seconds, peak
            memory.
    """

    name: str
    image: Tensor
    trimap: np.ndarray
    alpha: np.ndarray
    foreground: np.ndarray
    routing: RoutingMaps
    numbers: dict = field(default_factory=dict)


def painted_trimap(layers: Sequence[np.ndarray], hw: tuple[int, int]) -> np.ndarray:
    """The trimap of a painting: unpainted pixels are background, painted ones take the trimap
    level nearest to the gray of their brush (:data:`BRUSH_COLOURS`), later layers on top.

    Args:
        layers: ``[H, W, 4]`` uint8 RGBA layers, transparent where nothing is painted.
        hw: the image's ``(H, W)``.

    Returns:
        ``[H, W]`` uint8 trimap in {0, 128, 255}.

    Raises:
        InputError: a layer that is not ``[H, W, 4]``.
    """
    trimap = np.full(hw, TRIMAP_BG, np.uint8)
    levels = np.array(TRIMAP_LEVELS, np.float32)
    for layer in layers:
        if layer.shape != (*hw, 4):
            raise InputError(
                f"the painting is {layer.shape} but the image is {_size_text(hw)}: paint on the "
                "image shown in the editor"
            )
        painted = layer[:, :, 3] > PAINT_ALPHA_THRESHOLD
        gray = layer[:, :, :3][painted].astype(np.float32).mean(axis=1)  # [P] painted pixels
        nearest = np.abs(gray[:, None] - levels[None]).argmin(axis=1)  # [P] index of the level
        trimap[painted] = levels[nearest].astype(np.uint8)
    return trimap


def planned_forward_bytes(model: nn.Module, hw: tuple[int, int]) -> int:
    """Planned peak bytes of a request's forward on an image of size ``hw`` under the model's
    token cap: :func:`predictor.token_budget.peak_bytes` with every token routed up to the cap.

    Args:
        model: a MEMatte (reads the backbone's width, heads, patch size and token cap, and the
            padding step).
        hw: the image's ``(H, W)``.
    """
    backbone = model.backbone
    patch = backbone.patch_embed.proj.kernel_size[0]
    Hp, Wp = padded_size(hw, model.size_divisibility)
    tokens = (Hp // patch) * (Wp // patch)
    cap = backbone.max_number_token
    return peak_bytes(
        hw,
        tokens if cap is None else min(cap, tokens),
        backbone.embed_dim,
        backbone.blocks[0].attn.num_heads,
        patch,
        model.size_divisibility,
    )


def planned_results_bytes(hw: tuple[int, int]) -> int:
    """Planned peak bytes, in host memory, of a request's results on an image of size ``hw``
    (after the forward): ``OUTPUT_FIXED_BYTES + OUTPUT_BYTES_PER_PIXEL`` per pixel."""
    return OUTPUT_FIXED_BYTES + OUTPUT_BYTES_PER_PIXEL * hw[0] * hw[1]


def default_max_pixels(
    model: nn.Module,
    device: torch.device | str,
    free_bytes: int | None = None,
    host_free_bytes: int | None = None,
) -> int:
    """The largest image, in pixels, whose request fits the free memory: the square of the
    largest side whose planned peaks stay within ``SAFETY`` times the free memory, the rule of
    the auto token cap (:mod:`predictor.token_budget`), up to ``MAX_PLANNED_SIDE`` (the decoders'
    ceiling). On the CPU the forward and the results use
    the same memory, one after the other (:func:`planned_forward_bytes`,
    :func:`planned_results_bytes`: the larger must fit); on CUDA the forward must fit the GPU and
    the results the host.

    Args:
        model: the MEMatte that serves the requests (its ``backbone.max_number_token`` is the cap
            planned for).
        device: where it runs.
        free_bytes: free memory of ``device`` to plan for; default:
            :func:`utils.memory.free_memory_bytes`.
        host_free_bytes: with a CUDA device, the host's free memory; default: read as above.

    Returns:
        the pixel count, 0 when not even a 1 px image fits.
    """
    device = torch.device(device)
    if free_bytes is None:
        free_bytes = free_memory_bytes(device)
    if device.type == "cpu":
        host_free_bytes = free_bytes
    elif host_free_bytes is None:
        host_free_bytes = free_memory_bytes("cpu")

    def fits(side: int) -> bool:
        hw = (side, side)
        return (
            planned_forward_bytes(model, hw) <= SAFETY * free_bytes
            and planned_results_bytes(hw) <= SAFETY * host_free_bytes
        )

    if not fits(1):
        return 0
    if fits(MAX_PLANNED_SIDE):
        return MAX_PLANNED_SIDE**2
    # fits() is monotone in the side: bisect for the largest side that fits.
    lo, hi = 1, MAX_PLANNED_SIDE
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo**2


class MattingSession:
    """One loaded model answering matting requests, one at a time.

    Args:
        model: a MEMatte (no teacher needed); its ``backbone.max_number_token`` is the config's
            token cap, used by requests that set none.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``...
        max_pixels: largest image (H x W) a request may bring, at most
            ``data.pixel_limits.DECODER_MAX_PIXELS``; default: :func:`default_max_pixels` of the
            device's free memory now.
        snap_trimap: move an uploaded trimap's values other than 0, 128 and 255 (a trimap saved
            as JPEG) to the nearest of them instead of refusing it.

    Raises:
        ValueError: a CUDA device without CUDA, or ``max_pixels`` above the decoders' ceiling.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        device: str | torch.device = AUTO,
        max_pixels: int | None = None,
        snap_trimap: bool = False,
    ) -> None:
        self.snap_trimap = snap_trimap
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.config_cap = self.model.backbone.max_number_token
        self.max_pixels = (
            default_max_pixels(self.model, self.device) if max_pixels is None else max_pixels
        )
        if self.max_pixels > DECODER_MAX_PIXELS:
            raise ValueError(
                f"max_pixels {self.max_pixels} is above the image decoders' ceiling "
                f"{DECODER_MAX_PIXELS} (data.pixel_limits)"
            )
        self._lock = threading.Lock()

    def run(
        self,
        image: Upload,
        *,
        trimap: Upload | None = None,
        mask: Upload | None = None,
        unknown_width: float | None = None,
        painting: Sequence[Upload] | None = None,
        options: RequestOptions = RequestOptions(),  # noqa: B008 (frozen: one shared default)
    ) -> SessionResult:
        """Alpha matte, foreground colours and routing of one image.

        The trimap comes from exactly one of ``trimap``, ``mask`` (with ``unknown_width``) and
        ``painting``.

        Args:
            image: the image file.
            trimap: an 8-bit trimap file: 0 background, 128 unknown, 255 foreground.
            mask: a rough mask file (thresholded at half its range).
            unknown_width: with ``mask``: the unknown band on each side of the mask's edge, in px
                (below 1: a fraction of the image's shorter side).
            painting: RGBA layers painted with the :data:`BRUSH_COLOURS` (see
                :func:`painted_trimap`).
            options: the request's token cap, precision and patch decoder.

        Raises:
            InputError: not exactly one trimap source, a file that is not a readable image, a
                trimap, mask or painting of another size than the image, an image above
                ``max_pixels``, nothing painted, an option the device does not support, or a
                forward that failed (out of memory).
        """
        start = time.perf_counter()
        if sum(guide is not None for guide in (trimap, mask, painting)) != 1:
            raise InputError("give one trimap: upload a trimap or a mask, or paint one")
        if mask is not None and unknown_width is None:
            raise InputError("a mask needs an unknown width (px on each side of its edge)")
        guides = [(trimap, "trimap")] if trimap is not None else [(mask, "mask")]
        if painting is not None:
            guides = [(layer, "painting") for layer in painting]
        # Sizes from the headers first: nothing is decoded for a request that is refused.
        hw = self.image_size(image)
        for upload, what in guides:
            _check_same_size(upload, what, self._header_hw(upload), image, hw)
        levels = self.read_image(image)
        trimap_levels = _trimap(
            image, hw, trimap, mask, unknown_width, painting, self.max_pixels, self.snap_trimap
        )
        image_levels = torch.from_numpy(levels).permute(2, 0, 1)  # [H, W, 3] -> [3, H, W]
        with self._lock:
            prediction, numbers = self._predict(image_levels, trimap_levels, options)
            alpha = prediction.alpha[0]
            foreground_start = time.perf_counter()
            foreground = foreground_to_uint8(estimate_foreground(levels, alpha, device=self.device))
            numbers["foreground_seconds"] = time.perf_counter() - foreground_start
        numbers["seconds"] = time.perf_counter() - start
        return SessionResult(
            name=_safe_stem(image.name),
            image=image_levels,
            trimap=trimap_levels,
            alpha=alpha,
            foreground=foreground,
            routing=prediction.routing(0),
            numbers={"image": image.name, "width": hw[1], "height": hw[0], **numbers},
        )

    def image_size(self, image: Upload) -> tuple[int, int]:
        """An uploaded image's ``(H, W)`` from its header, refused above ``max_pixels``.

        Raises:
            InputError: a file whose size cannot be read from its header, or too large.
        """
        hw = self._header_hw(image)
        self._check_pixels(image, hw)
        return hw

    def read_image(self, image: Upload) -> np.ndarray:
        """An uploaded image's ``[H, W, 3]`` RGB levels, read as ``inference.py`` reads images
        (its size checked from the header first: nothing is decoded for a refused image).

        Raises:
            InputError: not a readable image, or above ``max_pixels``.
        """
        self.image_size(image)
        return _read(image, functools.partial(read_rgb_levels, max_pixels=self.max_pixels))

    def _header_hw(self, upload: Upload) -> tuple[int, int]:
        """``(H, W)`` from a file's header, without decoding (:func:`data.image_io.image_size`).

        Raises:
            InputError: a file whose size cannot be read that way, or that declares more pixels
                than any limit allows.
        """
        try:
            return image_size(upload.path)
        except ImageTooLargeError as exc:
            raise InputError(
                f"{upload.name} declares more pixels than this server's limit of "
                f"{self.max_pixels / 1e6:.2f} MP (--max-pixels)"
            ) from exc
        except BadSampleError as exc:
            raise InputError(f"{upload.name}: {exc.reason}") from exc

    def _check_pixels(self, upload: Upload, hw: tuple[int, int]) -> None:
        """Refuse an image of size ``hw`` above ``max_pixels``."""
        if hw[0] * hw[1] > self.max_pixels:
            raise InputError(
                f"{upload.name} is {_size_text(hw)} = {hw[0] * hw[1] / 1e6:.2f} MP, above this "
                f"server's limit of {self.max_pixels / 1e6:.2f} MP (--max-pixels)"
            )

    def _predict(
        self, image: Tensor, trimap: np.ndarray, options: RequestOptions
    ) -> tuple[BatchPrediction, dict]:
        """The forward with the request's options (under the lock), and its numbers."""
        self.model.backbone.max_number_token = self.config_cap  # an earlier request set its own
        try:
            predictor = MattingPredictor(
                self.model,
                device=self.device,
                precision=options.precision,
                max_number_token=options.max_number_token,
                patch_decoder=options.patch_decoder,
            )
        except ValueError as exc:  # fp16 on a CPU, a negative cap
            raise InputError(str(exc)) from exc
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        try:
            prediction = predictor.predict_levels(image[None], torch.from_numpy(trimap)[None, None])
        except RuntimeError as exc:  # out of memory, or another failure of the forward
            raise InputError(f"the model failed on this image: {exc}") from exc
        model_seconds = time.perf_counter() - start
        numbers = {
            "device": str(self.device),
            "precision": options.precision,
            "patch_decoder": options.patch_decoder,
            "token_cap": self.model.backbone.max_number_token,
            "token_cap_from": _cap_source(options.max_number_token),
            "tokens": int(prediction.keep[0][0].size) if prediction.keep else 0,
            "global_attention_share": {
                str(block): float(keep.mean())
                for block, keep in zip(prediction.block_indexes, prediction.keep)
            },
            "model_seconds": model_seconds,
            "peak_memory_mib": peak_memory_bytes(self.device) / MIB,
            "peak_memory_of": PEAK_MEMORY_SCOPE[self.device.type],
        }
        return prediction, numbers


def _trimap(
    image: Upload,
    hw: tuple[int, int],
    trimap: Upload | None,
    mask: Upload | None,
    unknown_width: float | None,
    painting: Sequence[Upload] | None,
    max_pixels: int,
    snap_trimap: bool,
) -> np.ndarray:
    """A request's trimap, decoded (files above ``max_pixels`` refused) and checked against the
    image size ``hw`` (an uploaded trimap's other values than 0, 128 and 255 refused, or snapped
    with ``snap_trimap``)."""
    if painting is not None:
        levels = painted_trimap([_read(layer, _read_rgba) for layer in painting], hw)
        if not (levels != TRIMAP_BG).any():
            raise InputError(
                "nothing is painted: paint the foreground (white brush) and the unknown band "
                "along its edge (gray brush); unpainted pixels are background"
            )
        return levels
    if trimap is not None:
        levels = _read(
            trimap,
            functools.partial(read_trimap_levels, snap=snap_trimap, max_pixels=max_pixels),
        )
        _check_same_size(trimap, "trimap", levels.shape, image, hw)
        return levels
    levels = _read(mask, functools.partial(mask_levels, max_pixels=max_pixels))
    _check_same_size(mask, "mask", levels.shape, image, hw)
    try:
        return trimap_from_mask(levels, unknown_width)
    except ValueError as exc:  # a mask of an unsupported pixel type, a negative width
        raise InputError(f"{mask.name}: {exc}") from exc


def _cap_source(max_number_token: int | str | None) -> str:
    """Where a request's token cap comes from: ``"config"``, ``"auto"`` or ``"request"``."""
    if max_number_token is None:
        return "config"
    return AUTO if max_number_token == AUTO else "request"


def _size_text(hw: tuple[int, ...]) -> str:
    return f"{hw[1]}x{hw[0]} (W x H)"


def _check_same_size(
    upload: Upload,
    what: str,
    hw: tuple[int, ...] | None,
    image: Upload,
    image_hw: tuple[int, ...],
) -> None:
    """Refuse a trimap, mask or painting of size ``hw`` (None: not known yet) other than the
    image's."""
    if hw is not None and tuple(hw) != tuple(image_hw):
        raise InputError(
            f"the {what} {upload.name} is {_size_text(hw)} but the image {image.name} is "
            f"{_size_text(image_hw)}: give a {what} of the image's size"
        )


def _read(upload: Upload, reader: Callable[[Path], np.ndarray]) -> np.ndarray:
    """``reader(upload.path)``, its errors as :class:`InputError` naming the upload."""
    try:
        return reader(upload.path)
    except BadSampleError as exc:
        raise InputError(f"{upload.name}: {exc.reason}") from exc


def _read_rgba(path: Path) -> np.ndarray:
    """A painted layer as ``[H, W, 4]`` uint8 RGBA (its transparency kept, which the readers of
    :mod:`data.image_io` drop)."""
    try:
        with Image.open(path, formats=HEADER_FORMATS) as image:  # the formats sized above
            return np.array(image.convert("RGBA"))
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadSampleError(path, "not a readable image") from exc


def _safe_stem(name: str) -> str:
    """The file stem of ``name`` with the characters outside ``[A-Za-z0-9._-]`` replaced."""
    stem = Path(name).stem or "image"
    return "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in stem)
