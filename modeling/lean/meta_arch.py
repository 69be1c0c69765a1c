"""Lean inference variant of the MEMatte meta-architecture."""

from __future__ import annotations

from torch import Tensor

from modeling.meta_arch.mematte import MEMatte, padded_size

from .input import NormalizedInput
from .mode import lean_active, lean_variant

__all__ = ["LeanMEMatte"]


@lean_variant(MEMatte)
class LeanMEMatte(MEMatte):
    """With the patch decoder, the padded network input never exists as a whole: the backbone's
    patch embedding and every decoder tile read their own crops of a :class:`NormalizedInput`."""

    def inference(
        self,
        batched_inputs: dict[str, Tensor],
        patch_decoder: bool = True,
        clamp_known: bool = False,
    ) -> dict:
        if not (lean_active(self) and patch_decoder):
            return super().inference(batched_inputs, patch_decoder, clamp_known)
        image = batched_inputs["image"].to(self.device)
        trimap = batched_inputs["trimap"].to(self.device)
        padded_hw = padded_size(tuple(image.shape[-2:]), self.size_divisibility)
        source = NormalizedInput(image, trimap, self.pixel_mean, self.pixel_std, padded_hw)
        out = self.backbone(source)
        phas = self.decode_patches(out.features, source, out_hw=source.hw, clamp_known=clamp_known)
        return {"phas": phas, "router_scores": out.router_scores, "keep": out.keep}
