"""MEMatte meta-architecture: preprocessing, backbone, decoder and losses.

References: ViTMatte (Yao et al. 2024), MEMatte (Lin et al. 2025).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modeling.lean.mode import to_lean
from modeling.patches import DECODER_OVERLAP, DECODER_PATCH, padded_size, patch_tiles
from utils.device import to_unit_float

__all__ = [
    "BACKBONE_PREFIX",
    "DECODER_OVERLAP",
    "DECODER_PATCH",
    "TEACHER_PREFIX",
    "UNKNOWN",
    "CroppedInput",
    "MEMatte",
    "batr_loss",
    "check_train_trimap",
    "padded_size",
]

# State-dict prefixes of the student backbone and of the frozen distillation teacher.
BACKBONE_PREFIX = "backbone."
TEACHER_PREFIX = "teacher_backbone."
# Trimap value of the unknown region in training batches ({0, 0.5, 1} maps).
UNKNOWN = 0.5


class CroppedInput(Protocol):
    """A network input ``[B, C, H, W]`` read crop by crop (the lean path's ``NormalizedInput``)."""

    shape: torch.Size

    def crop(self, y0: int, y1: int, x0: int, x1: int) -> Tensor:
        """``input[..., y0:y1, x0:x1]``, zeros beyond the input."""
        ...


class MEMatte(nn.Module):
    """Trimap-based matting with adaptive token routing.

    ``model(batch)`` in ``eval()`` mode takes ``{"image": [B, 3, H, W] in 0..1, "trimap":
    [B, 1, H, W] in 0..1}`` (the official script feeds the trimap PNG value / 255) and returns
    ``{"phas": [B, 1, H, W], "router_scores": [[B, h, w, 2]], "keep": [[B, h, w, 1]]}``. In
    ``train()`` mode the batch also holds ``alpha`` [B, 1, H, W], its trimap takes the values
    {0, 0.5, 1} (quantised by the data pipeline), and the forward returns the ``loss_*`` dict
    plus ``phas`` and ``keep_ratios`` for logging.
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
        lean_inference: bool = True,
    ) -> None:
        """
        Args:
            backbone: the routed ViT (student).
            decoder: the detail-capture decoder.
            criterion: matting losses (training only).
            teacher_backbone: frozen ViTMatte backbone for feature distillation (training only;
                None for inference). It always runs in eval mode.
            pixel_mean, pixel_std: RGB normalisation, in 0..1 units.
            size_divisibility: inputs are zero-padded (after normalisation) to a multiple of it.
            distill: add the distillation loss (needs ``teacher_backbone``).
            distill_loss_ratio: weight of the distillation loss.
            token_loss_ratio: weight of the BATR routed-ratio loss.
            lean_inference: in eval mode without autograd, run the memory-lean path of
                ``modeling.lean`` (same results, memory linear in the pixels); False keeps the
                reference forward everywhere.
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
        if teacher_backbone is not None:
            teacher_backbone.eval()
        if lean_inference:
            to_lean(self)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def train(self, mode: bool = True) -> MEMatte:
        """Set the training mode of every module except the teacher, which stays in eval mode."""
        super().train(mode)
        if self.teacher_backbone is not None:
            self.teacher_backbone.eval()
        return self

    def forward(
        self,
        batched_inputs: dict[str, Tensor],
        patch_decoder: bool = True,
        clamp_known: bool = False,
    ) -> dict:
        """Training losses in ``train()`` mode, predictions in ``eval()`` mode (see
        :meth:`inference` for the options)."""
        if self.training:
            return self.forward_train(batched_inputs)
        return self.inference(batched_inputs, patch_decoder, clamp_known)

    def preprocess(self, batched_inputs: dict[str, Tensor]) -> tuple[Tensor, tuple[int, int]]:
        """Normalise RGB, append the trimap and zero-pad (after normalisation, trimap 0).

        Padding follows the official code (see :func:`padded_size`).

        Returns:
            images ``[B, 4, Hp, Wp]`` and the original ``(H, W)``.
        """
        image, trimap = (to_unit_float(batched_inputs[k], self.device) for k in ("image", "trimap"))
        H, W = image.shape[-2:]
        Hp, Wp = padded_size((H, W), self.size_divisibility)
        images = torch.cat([(image - self.pixel_mean) / self.pixel_std, trimap], dim=1)
        return F.pad(images, (0, Wp - W, 0, Hp - H)), (H, W)

    def forward_train(self, batched_inputs: dict[str, Tensor]) -> dict:
        """Matting losses, the distillation loss and the BATR routed-ratio loss.

        Returns:
            ``loss_*`` scalars, plus ``phas`` [B, 1, H, W] (detached) and ``keep_ratios`` (one
            scalar per routed block: its routed-token ratio over the batch) for logging.
        """
        check_train_trimap(batched_inputs["trimap"])
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
        if keep_ratios:  # a backbone without routed blocks (ViTMatte) has no routing loss
            losses["loss_token_ratio"] = self.token_loss_ratio * batr_loss(
                keep_ratios, self.backbone.topk
            )
        return {**losses, "phas": phas.detach(), "keep_ratios": [r.detach() for r in keep_ratios]}

    def distillation_loss(self, features: Tensor, images: Tensor) -> Tensor:
        """MSE between the student features and the frozen teacher's ``[B, C, h, w]``."""
        if self.teacher_backbone is None:
            raise ValueError("distill=True needs a teacher_backbone")
        with torch.no_grad():
            teacher_features = self.teacher_backbone(images).features
        return F.mse_loss(features, teacher_features)

    def inference(
        self,
        batched_inputs: dict[str, Tensor],
        patch_decoder: bool = True,
        clamp_known: bool = False,
    ) -> dict:
        """Alpha matte (float32) and routing maps, cropped back to the input size.

        Args:
            batched_inputs: ``image`` ``[B, 3, H, W]`` and ``trimap`` ``[B, 1, H, W]``, float in
                0..1 or uint8 in 0..255 (read as value / 255, as the official script).
            patch_decoder: decode in 512 px tiles as the official inference (bounded memory).
            clamp_known: return alpha with the trimap's known regions forced (0 where the trimap
                is 0, 1 where it is 1), as the official script writes it; the lean path then
                skips the decoder work that this overwrites.

        Returns:
            ``phas`` ``[B, 1, H, W]``, ``router_scores`` and ``keep`` (one map per routed block).
        """
        images, (H, W) = self.preprocess(batched_inputs)
        out = self.backbone(images)
        if patch_decoder:
            phas = self.decode_patches(out.features, images, out_hw=(H, W), clamp_known=clamp_known)
        else:
            region = ((0, H), (0, W))
            phas = self.decoder(out.features, images, region, clamp_known)["phas"]
        return {"phas": phas.float(), "router_scores": out.router_scores, "keep": out.keep}

    def decode_patches(
        self,
        features: Tensor,
        images: Tensor | CroppedInput,
        patch: int = DECODER_PATCH,
        out_hw: tuple[int, int] | None = None,
        clamp_known: bool = False,
    ) -> Tensor:
        """The official patch decoder: ``patch``-px tiles with a ``DECODER_OVERLAP`` margin.

        The input is zero-padded to a multiple of ``patch``; each tile is decoded with up to
        ``DECODER_OVERLAP`` px of context on every side (none on a side where the margin would
        leave the padded input) and only its central ``patch x patch`` is kept.

        Args:
            features: ``[B, C, h, w]`` with ``h = Hp / stride``.
            images: ``[B, 4, Hp, Wp]``, or a :class:`CroppedInput` of that shape.
            patch: tile side in pixels.
            out_hw: compute only the top-left ``(H, W)`` of the output (default: all of it).
            clamp_known: force the trimap's known regions (see :meth:`inference`).

        Returns:
            alpha ``[B, 1, H, W]`` (``[B, 1, Hp, Wp]`` without ``out_hw``).
        """
        B, _, H, W = images.shape
        stride = H // features.shape[-2]
        out_hw = out_hw if out_hw is not None else (H, W)
        out = features.new_empty(B, 1, *out_hw, dtype=torch.float32)
        for tile in patch_tiles((H, W), out_hw, patch):
            (top, bottom), (left, right) = tile.out
            out[..., top:bottom, left:right] = self.decoder(
                zero_padded_crop(features, *(v // stride for v in tile.crop)),
                zero_padded_crop(images, *tile.crop),
                region=tile.region,
                clamp_known=clamp_known,
            )["phas"]
        return out


def check_train_trimap(trimap: Tensor) -> None:
    """Refuse a training trimap with values other than 0, 0.5 and 1.

    The training losses find the unknown region as ``trimap == 0.5``: a batch with the official
    0/128/255 file levels (or those levels / 255) would have no unknown pixel and train on with
    zero unknown-region losses.

    Args:
        trimap: ``[B, 1, H, W]`` training trimap.

    Raises:
        ValueError: naming the convention and the pipeline that produces it.
    """
    valid = (trimap == 0) | (trimap == UNKNOWN) | (trimap == 1)
    if not bool(valid.all()):
        other = trimap[~valid]
        raise ValueError(
            f"the training trimap holds {other.numel()} values other than 0, 0.5 and 1 (e.g. "
            f"{other[0].item():g}, {trimap.dtype}): training takes the trimap as 0 background, "
            "0.5 unknown, 1 foreground, as data.dim_dataset.DIMTrainDataset gives it "
            "(data.transforms.GenTrimap, then ToTensor); map 0/128/255 file levels to it with "
            "data.trimap.quantize_trimap"
        )


def zero_padded_crop(x: Tensor | CroppedInput, y0: int, y1: int, x0: int, x1: int) -> Tensor:
    """``x[..., y0:y1, x0:x1]`` with zeros beyond the bottom/right border of ``x`` (a view when
    the crop lies inside a tensor)."""
    if not isinstance(x, Tensor):
        return x.crop(y0, y1, x0, x1)
    H, W = x.shape[-2:]
    crop = x[..., y0 : min(y1, H), x0 : min(x1, W)]
    if y1 <= H and x1 <= W:
        return crop
    return F.pad(crop, (0, x1 - min(x1, W), 0, y1 - min(y1, H)))


def batr_loss(keep_ratios: Sequence[Tensor], topk: float) -> Tensor:
    """Batch-constrained routing loss: squared gap between the mean routed ratio and ``topk``.

    Args:
        keep_ratios: one scalar per routed block, its routed-token ratio over the whole batch.
        topk: target ratio.
    """
    total = torch.stack(list(keep_ratios)).mean()
    return (total - topk) ** 2
