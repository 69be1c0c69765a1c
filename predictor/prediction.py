"""What every predictor shares, without PyTorch: the one-image call (:class:`ImagePredictor`) and
the results (:class:`BatchPrediction`, :class:`RoutingMaps`, :class:`Guidance`) as numpy arrays.

The PyTorch predictor (``predictor.matting.MattingPredictor``) and the onnxruntime one
(``predictor.onnx_predictor.OnnxMattingPredictor``) implement ``predict_levels``; the inputs are
read and checked once, by :func:`predictor.inputs.prepare_inputs`. A call with prompts (``box=``,
``points=``) asks the predictor's segmenter (:mod:`predictor.segmenter`, PyTorch and
transformers: imported by the predictor that has one) for the mask that makes the trimap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from data.trimap import AUTO_WIDTH
from predictor.inputs import ImageInput, MapInput, image_levels, prepare_inputs
from predictor.prompts import Prompts

if TYPE_CHECKING:
    from predictor.segmenter import Segmenter

__all__ = ["AUTO", "BatchPrediction", "Guidance", "ImagePredictor", "RoutingMaps"]

# The value of a predictor option that is chosen automatically (e.g. ``max_number_token``).
AUTO = "auto"


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
    """Outputs of a predictor's ``predict_levels``.

    Attributes:
        alpha: ``[B, H, W]`` float32, known regions forced.
        keep: per routed block, ``[B, h, w]`` float32 0/1 maps (1 = global attention).
        probability: per routed block, ``[B, h, w]`` router probabilities of global attention.
        block_indexes: backbone block index of each map.
    """

    alpha: np.ndarray
    keep: list[np.ndarray]
    probability: list[np.ndarray]
    block_indexes: tuple[int, ...]

    def routing(self, index: int) -> RoutingMaps:
        """The routing maps of image ``index`` of the batch."""
        return RoutingMaps(
            keep={b: k[index] for b, k in zip(self.block_indexes, self.keep)},
            probability={b: p[index] for b, p in zip(self.block_indexes, self.probability)},
        )


@dataclass(frozen=True)
class Guidance:
    """What a matting call was guided by.

    Attributes:
        mask: ``[H, W]`` bool, the segmenter's mask (None when a trimap or mask was given).
        trimap: ``[H, W]`` uint8 trimap (0, 128, 255) the model saw.
    """

    mask: np.ndarray | None
    trimap: np.ndarray


class ImagePredictor:
    """The one-image call shared by the predictors: inputs read and checked once
    (:func:`prepare_inputs`), or a trimap made from a segmenter's mask of prompts, then the
    subclass's ``predict_levels`` on a batch of one."""

    # The SAM-family front end of box= and points= (predictor.segmenter), set by the subclass.
    segmenter: Segmenter | None = None

    def predict_levels(self, image: np.ndarray, trimap: np.ndarray) -> BatchPrediction:
        """Alpha and routing of ``[B, 3, H, W]`` images (uint8 or uint16 levels, or float in
        [0, 1]) with ``[B, 1, H, W]`` uint8 trimaps."""
        raise NotImplementedError

    def _guided_inputs(
        self,
        image: ImageInput,
        trimap: MapInput | None,
        mask: MapInput | None,
        prompts: Prompts | None,
        unknown_width: float | str | None,
        snap_trimap: bool,
    ) -> tuple[np.ndarray, Guidance]:
        """The image levels ``[H, W, 3]`` and what guides the model: the trimap (given, snapped
        with ``snap_trimap``, or made from a mask), or the segmenter's mask of the prompts and
        its trimap."""
        if prompts is None:
            levels, trimap_map = prepare_inputs(
                image, trimap, mask=mask, unknown_width=unknown_width, snap_trimap=snap_trimap
            )
            return levels, Guidance(mask=None, trimap=trimap_map)
        if trimap is not None or mask is not None:
            raise ValueError("give a trimap, a mask, or box= / points=, not several")
        if self.segmenter is None:
            raise ValueError(
                "box= and points= need a segmenter: build the predictor with segmenter= (a SAM "
                "hub id or a save_pretrained folder, see docs/prompts.md)"
            )
        levels = image_levels(image)
        width = AUTO_WIDTH if unknown_width is None else unknown_width
        return levels, self.segmenter.guidance(levels, prompts, width)

    def __call__(
        self,
        image: ImageInput,
        trimap: MapInput | None = None,
        *,
        mask: MapInput | None = None,
        box: Sequence[float] | None = None,
        points: Sequence[Sequence[float]] | None = None,
        unknown_width: float | str | None = None,
        return_routing: bool = False,
        snap_trimap: bool = False,
        return_guidance: bool = False,
    ) -> np.ndarray | tuple:
        """Alpha matte of one image.

        Args:
            image: a path, a PIL image, an ``[H, W, 3]`` uint8 RGB array or a ``[3, H, W]``
                float tensor in [0, 1] (see :func:`predictor.inputs.image_levels` for the other
                forms).
            trimap: a path, a PIL image or an ``[H, W]`` uint8 array: 0 background, 128
                unknown, 255 foreground; other values are refused unless ``snap_trimap``.
            mask: instead of a trimap, a rough mask (path, PIL image or array; thresholded at
                half its range), turned into a trimap by :func:`data.trimap.trimap_from_mask`.
            box: instead of a trimap, ``(x0, y0, x1, y1)`` around the subject, in pixels, for
                the predictor's segmenter (its mask then makes the trimap).
            points: instead of a trimap (or with ``box``), clicks ``(x, y)`` or
                ``(x, y, label)``, label 1 foreground (default) or 0 background.
            unknown_width: with ``mask`` (required) or prompts (default ``"auto"``): the unknown
                band's width on each side of the mask boundary, in px (int), as a fraction of
                the shorter side (float < 1), or ``"auto"`` (2 % of the diagonal of the mask's
                bounding box, within 4..160 px).
            return_routing: also return the routing maps.
            snap_trimap: move trimap values other than 0, 128 and 255 (a trimap saved as JPEG)
                to the nearest of them (:func:`data.trimap.snap_trimap`) instead of refusing.
            return_guidance: also return the :class:`Guidance`: the segmenter's mask (None
                without prompts) and the trimap the model saw.

        Returns:
            ``[H, W]`` float32 alpha in [0, 1]; with ``return_routing`` and/or
            ``return_guidance``, a tuple of the alpha, the :class:`RoutingMaps` and the
            :class:`Guidance`, in that order.

        Raises:
            BadSampleError: an unreadable input file, an input of an unsupported form, or a
                trimap with other values than 0, 128 and 255 (without ``snap_trimap``).
            PromptError: prompts outside the image, an empty box, an unknown label.
            ValueError: not exactly one of a trimap, a mask and prompts, prompts without a
                segmenter, no ``unknown_width`` with a mask, or sizes that differ.
        """
        prompts = None if box is None and points is None else Prompts.create(box, points)
        levels, guidance = self._guided_inputs(
            image, trimap, mask, prompts, unknown_width, snap_trimap
        )
        # [H, W, 3] -> [1, 3, H, W] and [H, W] -> [1, 1, H, W], as views
        prediction = self.predict_levels(
            levels.transpose(2, 0, 1)[None], guidance.trimap[None, None]
        )
        alpha = prediction.alpha[0]
        extras = [prediction.routing(0)] if return_routing else []
        extras += [guidance] if return_guidance else []
        return (alpha, *extras) if extras else alpha
