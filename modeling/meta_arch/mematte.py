"""MEMatte meta-architecture: preprocessing, backbone, decoder and losses.

References: ViTMatte (Yao et al. 2024), MEMatte (Lin et al. 2025).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BACKBONE_PREFIX", "TEACHER_PREFIX", "MEMatte", "NormalizedInput", "padded_size"]

# State-dict prefixes of the student backbone and of the frozen distillation teacher.
BACKBONE_PREFIX = "backbone."
TEACHER_PREFIX = "teacher_backbone."
# 8-bit trimap thresholds of the official training pipeline: < 85 background, >= 170 foreground.
TRIMAP_BG_BELOW = 85
TRIMAP_FG_FROM = 170
UNKNOWN = 0.5
# Patch-wise decoding at inference: 512 px patches, each decoded with a 64 px context margin.
DECODER_PATCH = 512
DECODER_OVERLAP = 64


class MEMatte(nn.Module):
    """Trimap-based matting with adaptive token routing.

    ``model(batch)`` in ``eval()`` mode takes ``{"image": [B, 3, H, W] in 0..1, "trimap":
    [B, 1, H, W] in 0..1}`` and returns ``{"phas": [B, 1, H, W], "router_scores": [[B, h, w, 2]],
    "keep": [[B, h, w, 1]]}``. In ``train()`` mode the batch also holds ``alpha`` [B, 1, H, W],
    ``fg`` and ``bg``, its trimap in 0..255, and the forward returns the ``loss_*`` dict plus
    ``phas`` and ``keep_ratios`` for logging.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        decoder: nn.Module,
        criterion: nn.Module | None = None,
        teacher_backbone: nn.Module | None = None,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int = 32,
        distill: bool = True,
        distill_loss_ratio: float = 1.0,
        token_loss_ratio: float = 1.0,
    ) -> None:
        """
        Args:
            backbone: the routed ViT (student).
            decoder: the detail-capture decoder.
            criterion: matting losses (training only).
            teacher_backbone: frozen ViTMatte backbone for feature distillation (training only;
                None for inference).
            pixel_mean, pixel_std: RGB normalisation, in 0..1 units.
            size_divisibility: inputs are zero-padded (after normalisation) to a multiple of it.
            distill: add the distillation loss (needs ``teacher_backbone``).
            distill_loss_ratio: weight of the distillation loss.
            token_loss_ratio: weight of the BATR routed-ratio loss.
        """
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder
        self.criterion = criterion
        self.teacher_backbone = teacher_backbone
        self.size_divisibility = size_divisibility
        self.distill = distill
        self.distill_loss_ratio = distill_loss_ratio
        self.token_loss_ratio = token_loss_ratio
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: dict[str, Tensor], patch_decoder: bool = True) -> dict:
        """Training losses in ``train()`` mode, predictions in ``eval()`` mode."""
        if self.training:
            return self.forward_train(batched_inputs)
        return self.inference(batched_inputs, patch_decoder=patch_decoder)

    def preprocess(self, batched_inputs: dict[str, Tensor]) -> tuple[Tensor, tuple[int, int]]:
        """Normalise RGB, append the trimap and pad (see :meth:`network_input`).

        Returns:
            images ``[B, 4, Hp, Wp]`` and the original ``(H, W)``.
        """
        source = self.network_input(batched_inputs)
        return source.whole(), source.hw

    def network_input(self, batched_inputs: dict[str, Tensor]) -> NormalizedInput:
        """The padded network input of a batch, built crop by crop on demand.

        Training batches (they carry ``fg``) have 0..255 trimaps, quantised to {0, 0.5, 1}.
        Padding follows the official code: when either side is not a multiple of
        ``size_divisibility``, *both* sides grow to the next multiple strictly above them (so a
        side that was already a multiple grows by a full step); padded pixels are zeros after
        normalisation, with trimap 0.
        """
        image = batched_inputs["image"].to(self.device)
        trimap = batched_inputs["trimap"].to(self.device)
        if "fg" in batched_inputs:
            trimap = quantize_trimap(trimap)
        padded_hw = padded_size(tuple(image.shape[-2:]), self.size_divisibility)
        return NormalizedInput(image, trimap, self.pixel_mean, self.pixel_std, padded_hw)

    def forward_train(self, batched_inputs: dict[str, Tensor]) -> dict:
        """Matting losses, the distillation loss and the BATR routed-ratio loss.

        Returns:
            ``loss_*`` scalars, plus ``phas`` [B, 1, H, W] (detached) and ``keep_ratios`` (one
            scalar per routed block: its routed-token ratio over the batch) for logging.
        """
        images, (H, W) = self.preprocess(batched_inputs)
        out = self.backbone(images)
        phas = self.decoder(out.features, images)["phas"][..., :H, :W]
        alpha = batched_inputs["alpha"].to(self.device)
        unknown = (images[:, 3:4, :H, :W] == UNKNOWN).to(phas.dtype)
        losses = dict(self.criterion(phas, alpha, unknown))
        if self.distill:
            losses["loss_distill"] = self.distill_loss_ratio * self.distillation_loss(
                out.features, images
            )
        keep_ratios = [keep.mean() for keep in out.keep]
        losses["loss_token_ratio"] = self.token_loss_ratio * batr_loss(
            keep_ratios, self.backbone.topk
        )
        return {
            **losses,
            "phas": phas.detach(),
            "keep_ratios": [r.detach() for r in keep_ratios],
        }

    def distillation_loss(self, features: Tensor, images: Tensor) -> Tensor:
        """MSE between the student features and the frozen teacher's ``[B, C, h, w]``."""
        if self.teacher_backbone is None:
            raise ValueError("distill=True needs a teacher_backbone")
        self.teacher_backbone.eval()
        with torch.no_grad():
            teacher_features = self.teacher_backbone(images).features
        return F.mse_loss(features, teacher_features)

    def inference(self, batched_inputs: dict[str, Tensor], patch_decoder: bool = True) -> dict:
        """Alpha matte (float32) and routing maps, cropped back to the input size.

        With the patch decoder the padded network input never exists as a whole: the backbone's
        patch embedding and every decoder tile build their own crops of it.
        """
        source = self.network_input(batched_inputs)
        H, W = source.hw
        if patch_decoder:
            out = self.backbone(source)
            phas = self.decode_patches(out.features, source, out_hw=(H, W))
        else:
            images = source.whole()
            out = self.backbone(images)
            phas = self.decoder(out.features, images)["phas"][..., :H, :W]
        return {
            "phas": phas.to(torch.float32),
            "router_scores": out.router_scores,
            "keep": out.keep,
        }

    def decode_patches(
        self,
        features: Tensor,
        images: Tensor | NormalizedInput,
        patch: int = DECODER_PATCH,
        out_hw: tuple[int, int] | None = None,
    ) -> Tensor:
        """Run the decoder on ``patch``-px tiles with a ``DECODER_OVERLAP`` margin.

        The image is (virtually) zero-padded to a multiple of ``patch``; each tile is decoded
        with up to ``DECODER_OVERLAP`` px of context on every side (less at the borders) and only
        its central ``patch x patch`` is kept, so peak decoder memory is bounded by the tile size.
        Tiles are cropped from the unpadded tensors (zero-filled only where a tile crosses the
        border), and the decoder computes only the kept pixels (and their dependency cone).

        Args:
            features: ``[B, C, h, w]`` with ``h = Hp / stride``.
            images: ``[B, 4, Hp, Wp]``, or a :class:`NormalizedInput` of that shape.
            patch: tile side in pixels.
            out_hw: compute only the top-left ``(H, W)`` of the output (default: all of it).

        Returns:
            alpha ``[B, 1, H, W]`` (``[B, 1, Hp, Wp]`` without ``out_hw``).
        """
        B, _, H, W = images.shape
        stride = H // features.shape[-2]
        out_h, out_w = out_hw if out_hw is not None else (H, W)
        padded_h, padded_w = H + (-H) % patch, W + (-W) % patch
        crop_images = (
            images.crop
            if isinstance(images, NormalizedInput)
            else functools.partial(_zero_padded_crop, images)
        )
        out = features.new_empty(B, 1, out_h, out_w, dtype=torch.float32)
        for top in range(0, out_h, patch):
            for left in range(0, out_w, patch):
                y0, y1 = _context_span(top, patch, padded_h)
                x0, x1 = _context_span(left, patch, padded_w)
                bottom, right = min(top + patch, out_h), min(left + patch, out_w)
                region = ((top - y0, bottom - y0), (left - x0, right - x0))
                tile_features = _zero_padded_crop(
                    features, y0 // stride, y1 // stride, x0 // stride, x1 // stride
                )
                tile_images = crop_images(y0, y1, x0, x1)
                out[..., top:bottom, left:right] = self.decoder(
                    tile_features, tile_images, region=region
                )["phas"]
        return out


class NormalizedInput:
    """The network input ``[B, 4, Hp, Wp]``: normalised RGB and the trimap, zero-padded.

    Crops are built on demand (:meth:`crop`), so that inference with the patch decoder never
    holds the whole padded 4-channel float input (64 MiB at 2048x2048, 450 MiB at 4872x6017).

    Args:
        image: RGB ``[B, 3, H, W]`` in 0..1.
        trimap: ``[B, 1, H, W]`` in 0..1.
        pixel_mean, pixel_std: ``[3, 1, 1]`` normalisation.
        padded_hw: ``(Hp, Wp)``, at least ``(H, W)``.
    """

    def __init__(
        self,
        image: Tensor,
        trimap: Tensor,
        pixel_mean: Tensor,
        pixel_std: Tensor,
        padded_hw: tuple[int, int],
    ) -> None:
        self.image, self.trimap = image, trimap
        self.pixel_mean, self.pixel_std = pixel_mean, pixel_std
        self.hw = tuple(image.shape[-2:])
        channels = image.shape[1] + trimap.shape[1]
        self.shape = torch.Size((image.shape[0], channels, *padded_hw))

    def whole(self) -> Tensor:
        """The whole input ``[B, 4, Hp, Wp]``."""
        return self.crop(0, self.shape[-2], 0, self.shape[-1])

    def crop(self, y0: int, y1: int, x0: int, x1: int) -> Tensor:
        """``input[..., y0:y1, x0:x1]``, zeros wherever it lies beyond the image ``(H, W)``."""
        H, W = self.hw
        rgb_chans = self.image.shape[1]
        out = self.image.new_zeros(self.shape[0], self.shape[1], y1 - y0, x1 - x0)
        h, w = min(y1, H) - y0, min(x1, W) - x0
        if h > 0 and w > 0:
            image = self.image[..., y0 : y0 + h, x0 : x0 + w]
            rgb = out[:, :rgb_chans, :h, :w]
            torch.sub(image, self.pixel_mean, out=rgb).div_(self.pixel_std)
            out[:, rgb_chans:, :h, :w] = self.trimap[..., y0 : y0 + h, x0 : x0 + w]
        return out


def padded_size(hw: tuple[int, int], step: int) -> tuple[int, int]:
    """Size after :meth:`MEMatte.preprocess` padding (the official rule, quirk included: when
    either side is not a multiple of ``step``, both sides grow to the next multiple strictly
    above them)."""
    H, W = hw
    if H % step or W % step:
        return H + step - H % step, W + step - W % step
    return H, W


def _zero_padded_crop(x: Tensor, y0: int, y1: int, x0: int, x1: int) -> Tensor:
    """``x[..., y0:y1, x0:x1]`` of ``x`` zero-extended beyond its bottom/right border (a view
    when the crop lies inside)."""
    H, W = x.shape[-2:]
    crop = x[..., y0 : min(y1, H), x0 : min(x1, W)]
    if y1 <= H and x1 <= W:
        return crop
    return F.pad(crop, (0, x1 - min(x1, W), 0, y1 - min(y1, H)))


def _context_span(start: int, patch: int, size: int) -> tuple[int, int]:
    """Pixel span of a tile with its context margin, as the official patch inference takes it:
    the margin is dropped entirely (not clipped) on a side where it would leave the image."""
    lo = start - DECODER_OVERLAP if start - DECODER_OVERLAP >= 0 else start
    hi = start + patch + DECODER_OVERLAP
    return lo, hi if hi <= size else start + patch


def quantize_trimap(trimap: Tensor) -> Tensor:
    """Map a 0..255 trimap to {0, 0.5, 1} with the official thresholds (returns a new tensor)."""
    out = torch.full_like(trimap, UNKNOWN, dtype=torch.float32)
    out[trimap < TRIMAP_BG_BELOW] = 0.0
    out[trimap >= TRIMAP_FG_FROM] = 1.0
    return out


def batr_loss(keep_ratios: Sequence[Tensor], topk: float) -> Tensor:
    """Batch-constrained routing loss: squared gap between the mean routed ratio and ``topk``.

    Args:
        keep_ratios: one scalar per routed block, its routed-token ratio over the whole batch.
        topk: target ratio.
    """
    total = torch.stack(list(keep_ratios)).mean()
    return (total - topk) ** 2
