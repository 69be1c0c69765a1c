"""What every predictor shares, without PyTorch: the one-image call (:class:`ImagePredictor`) and
the results (:class:`BatchPrediction`, :class:`RoutingMaps`) as numpy arrays.

The PyTorch predictor (``predictor.matting.MattingPredictor``) and the onnxruntime one
(``predictor.onnx_predictor.OnnxMattingPredictor``) implement ``predict_levels``; the inputs are
read and checked once, by :func:`predictor.inputs.prepare_inputs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from predictor.inputs import ImageInput, MapInput, prepare_inputs

__all__ = ["AUTO", "BatchPrediction", "ImagePredictor", "RoutingMaps"]

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


class ImagePredictor:
    """The one-image call shared by the predictors: inputs read and checked once
    (:func:`prepare_inputs`), then the subclass's ``predict_levels`` on a batch of one."""

    def predict_levels(self, image: np.ndarray, trimap: np.ndarray) -> BatchPrediction:
        """Alpha and routing of ``[B, 3, H, W]`` images (uint8 or uint16 levels, or float in
        [0, 1]) with ``[B, 1, H, W]`` uint8 trimaps."""
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
                float tensor in [0, 1] (see :func:`predictor.inputs.image_levels` for the other
                forms).
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
        # [H, W, 3] -> [1, 3, H, W] and [H, W] -> [1, 1, H, W], as views
        prediction = self.predict_levels(levels.transpose(2, 0, 1)[None], trimap_map[None, None])
        alpha = prediction.alpha[0]
        return (alpha, prediction.routing(0)) if return_routing else alpha
