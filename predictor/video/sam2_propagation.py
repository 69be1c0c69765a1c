"""Guidance carried through a clip by SAM 2's video model (``--propagate sam2``).

SAM 2 (``transformers``' ``Sam2VideoModel`` and ``Sam2VideoProcessor``) segments each frame from
its image features conditioned on a memory bank: the keyframes it was prompted on (a mask, or a
box and points) and the masks it predicted on the few frames before. It runs as a stream (the
processor's inference session fed one frame at a time, in order), so no clip is held in memory.

:class:`Sam2Propagator` anchors at every keyframe: its mask (a trimap keyframe's: its foreground
and the nearer half of its band, :func:`~predictor.video.propagation.mask_from_trimap`), or the
first frame's prompts, becomes a conditioning frame of SAM 2's memory; every other frame gets
SAM 2's mask (binarised at logit 0 by the processor's ``post_process_masks``) and the trimap
``trimap_from_mask(mask, unknown_width)``. Like flow propagation it depends on the frames and
the guidance only, so a resumed run rebuilds it by replaying the frames before the first missing
one.

Memory stays bounded: after each frame the session is trimmed, through its own structures, to
what SAM 2 reads later (:meth:`VideoSegmenter.track`): the frame's pixels and its mask inputs
are dropped, the per-frame outputs SAM 2 no longer reads (its masks at the model's input size),
the outputs of frames older than its memory reaches (``num_maskmem`` frames for the memory bank,
``max_object_pointers_in_encoder`` for the object pointers), and keyframes beyond the
:data:`KEPT_KEYFRAMES` most recent.

What it is good for, and where it breaks (see docs/video.md): it re-finds a subject after an
occlusion or a fast move, where flow loses it; its masks come from 256 x 256 logits (the
model's 1024 px input / 4) brought to the frame's size, so hair, thin strands and small parts
are lost or blurred: the unknown band must cover them.

References: Ravi et al., SAM 2: Segment Anything in Images and Videos (2024), the streaming
memory of its video predictor.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from data.trimap import trimap_from_mask
from predictor.prompts import Prompts
from predictor.segmenter import (
    PROCESSOR_FILES,
    checkpoint_config,
    load_or_refuse,
    saved_processor,
    segmenter_rgb,
)
from predictor.video.flow import FlowPair
from predictor.video.propagation import Propagator, mask_from_trimap
from utils.device import resolve_device

__all__ = [
    "KEPT_KEYFRAMES",
    "SAM2_VIDEO",
    "Sam2Propagator",
    "VideoSegmenter",
    "load_video_segmenter",
]

logger = logging.getLogger(__name__)

# The config model_type of SAM 2's video checkpoints, and of its image-only ones.
SAM2_VIDEO, SAM2_IMAGE = "sam2_video", "sam2"
# The one object a clip's guidance describes (SAM 2 tracks objects by id).
OBJECT_ID = 1
# Keyframes kept as SAM 2's conditioning memory (the most recent ones; older keyframes are
# dropped, so memory and SAM 2's memory attention stay bounded with many keyframes).
KEPT_KEYFRAMES = 8
# Per-frame outputs SAM 2 never reads again once the frame is done: its mask logits (at the
# model's input size and at the mask decoder's), which the memory encoder has consumed.
UNREAD_OUTPUTS = ("high_res_masks", "pred_masks")
_EXAMPLE = "facebook/sam2.1-hiera-tiny"


class VideoSegmenter:
    """SAM 2's video model and its processor, run as a stream of frames.

    Args:
        model: a ``Sam2VideoModel``.
        processor: its ``Sam2VideoProcessor``.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``...
        name: what it was loaded from (for messages).

    Raises:
        ValueError: a model that is not SAM 2's video model, or a CUDA device without CUDA.
    """

    def __init__(
        self, model: Any, processor: Any, *, device: str | torch.device = "auto", name: str = ""
    ) -> None:
        if model.config.model_type != SAM2_VIDEO:
            raise ValueError(f"{name or 'the model'} is not SAM 2's video model (Sam2VideoModel)")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.name = name or SAM2_VIDEO
        config = model.config
        # How far back a frame reads the outputs of the tracked frames before it: the memory
        # bank num_maskmem - 1 frames, the object pointers max_object_pointers_in_encoder - 1.
        self.memory_frames = max(config.num_maskmem, config.max_object_pointers_in_encoder) - 1

    def __repr__(self) -> str:
        return f"VideoSegmenter({self.name!r}, {self.device})"

    def start(self) -> Any:
        """A new streaming session (``Sam2VideoInferenceSession``) for one clip."""
        return self.processor.init_video_session(inference_device=self.device, dtype=torch.float32)

    def track(
        self,
        session: Any,
        index: int,
        image: np.ndarray,
        *,
        prompts: Prompts | None = None,
        mask: np.ndarray | None = None,
    ) -> np.ndarray:
        """SAM 2's mask of the next frame of the stream, after adding its prompts or its mask
        (a keyframe) to the session; then the session is trimmed (see the module docstring).

        Args:
            session: from :meth:`start`, fed the clip's frames in order.
            index: the frame's position in the clip.
            image: ``[H, W, 3]`` uint8 or uint16 RGB levels (16-bit ones divided by 257).
            prompts: a box and/or points on this frame.
            mask: ``[H, W]`` bool, this frame's mask.

        Returns:
            ``[H, W]`` bool.

        Raises:
            PromptError: prompts outside the frame.
        """
        rgb = segmenter_rgb(image)
        height, width = rgb.shape[:2]
        pixels = self.processor(images=rgb, return_tensors="pt")["pixel_values"]  # [1, 3, S, S]
        if prompts is not None:
            prompts.check_inside((height, width), f"frame {index}")
            self.processor.add_inputs_to_inference_session(
                session,
                frame_idx=index,
                obj_ids=OBJECT_ID,
                original_size=(height, width),
                **_prompt_inputs(prompts),
            )
        elif mask is not None:
            self.processor.add_inputs_to_inference_session(
                session, frame_idx=index, obj_ids=OBJECT_ID, input_masks=torch.from_numpy(mask)
            )
        with torch.inference_mode():
            output = self.model(inference_session=session, frame_idx=index, frame=pixels[0])
            logits = output.pred_masks  # [objects, 1, s, s]
            masks = self.processor.post_process_masks([logits], [[height, width]])[0]
        self._trim(session, index)
        return masks[0, 0].cpu().numpy()  # [objects, 1, H, W] -> [H, W]

    def _trim(self, session: Any, index: int) -> None:
        """Drop from the session what SAM 2 will not read once frame ``index`` is done (its
        reads: ``Sam2VideoModel._gather_memory_frame_outputs`` and ``_get_object_pointers``)."""
        session.processed_frames.pop(index, None)  # its pixels (their features are cached)
        oldest = index + 1 - self.memory_frames  # the oldest frame the next frame reads
        for obj_idx, outputs in session.output_dict_per_obj.items():
            session.remove_point_inputs(obj_idx, index)
            session.remove_mask_inputs(obj_idx, index)
            for by_frame in outputs.values():  # keyframes, and the tracked frames
                for key in UNREAD_OUTPUTS:
                    by_frame.get(index, {}).pop(key, None)
            tracked = outputs["non_cond_frame_outputs"]
            for frame in [t for t in tracked if t < oldest]:
                del tracked[frame]
            keyframes = outputs["cond_frame_outputs"]
            for frame in sorted(keyframes)[:-KEPT_KEYFRAMES]:
                del keyframes[frame]
            done = session.frames_tracked_per_obj[obj_idx]
            for frame in [t for t in done if t < oldest]:
                del done[frame]


def _prompt_inputs(prompts: Prompts) -> dict[str, list]:
    """Prompts nested as the processor takes them for one frame and one object."""
    inputs: dict[str, list] = {}
    if prompts.points:
        inputs["input_points"] = [[[[p.x, p.y] for p in prompts.points]]]  # [frame, obj, pt, xy]
        inputs["input_labels"] = [[[p.label for p in prompts.points]]]
    if prompts.box is not None:
        inputs["input_boxes"] = [[list(prompts.box)]]  # [frame, box, xyxy]
    return inputs


def _video_processor(source: str, config: Any) -> Any:
    """The checkpoint's ``Sam2VideoProcessor``; for a folder saved without a processor, one at
    the model's input size, with a warning.

    Raises:
        ValueError: the saved processor is of another kind.
    """
    if saved_processor(source):
        processor = transformers.AutoProcessor.from_pretrained(source)
        if not isinstance(processor, transformers.Sam2VideoProcessor):
            raise ValueError(
                f"its processor is a {type(processor).__name__}, not a Sam2VideoProcessor"
            )
        return processor
    side = config.image_size
    size = {"height": side, "width": side}
    logger.warning(
        "segmenter %s has no processor config (%s): using Sam2VideoProcessor at the model's "
        "input size, %d px",
        source,
        " or ".join(PROCESSOR_FILES),
        side,
    )
    return transformers.Sam2VideoProcessor(
        transformers.Sam2ImageProcessor(size=size), transformers.Sam2VideoVideoProcessor(size=size)
    )


def load_video_segmenter(
    source: str | Path, *, device: str | torch.device = "auto"
) -> VideoSegmenter:
    """SAM 2's video model from a hub id or a local ``save_pretrained`` folder.

    Args:
        source: a Hugging Face hub id (``facebook/sam2.1-hiera-tiny``...) or a folder holding
            the model's config, weights and processor.
        device: where the model runs.

    Raises:
        ValueError: a hub id that cannot be fetched (the message says how to pass a local
            folder), a folder that is not a transformers checkpoint, a checkpoint that is not
            SAM 2's video model (a SAM 2 image checkpoint has no memory modules), weights that
            lack some of its modules, or a model or processor that cannot be loaded.
    """
    text = str(source)
    config = checkpoint_config(text)
    model_type = getattr(config, "model_type", None)
    if model_type == SAM2_IMAGE:
        raise ValueError(
            f"segmenter {text}: a SAM 2 image checkpoint (model_type {SAM2_IMAGE}, Sam2Model): it "
            "has none of the memory modules (memory attention, memory encoder, object pointers) "
            f"that --propagate sam2 needs; give SAM 2's video checkpoint (model_type "
            f"{SAM2_VIDEO}, e.g. {_EXAMPLE}), or use --propagate flow with this one"
        )
    if model_type != SAM2_VIDEO:
        raise ValueError(
            f"segmenter {text}: its config is a {model_type!r} model; --propagate sam2 needs SAM "
            f"2's video checkpoint (model_type {SAM2_VIDEO}, e.g. {_EXAMPLE})"
        )
    model, info = load_or_refuse(
        lambda: transformers.Sam2VideoModel.from_pretrained(text, output_loading_info=True),
        text,
        "cannot load its SAM 2 video model; save it with save_pretrained into the folder",
    )
    missing = sorted({key.split(".")[0] for key in info["missing_keys"]})
    if missing:
        raise ValueError(
            f"segmenter {text}: its weights lack {len(info['missing_keys'])} tensors of "
            f"{', '.join(missing)}: SAM 2's video model needs them all (a SAM 2 image "
            "checkpoint has no memory modules); give a complete video checkpoint"
        )
    processor = load_or_refuse(
        lambda: _video_processor(text, config),
        text,
        "cannot load its processor; save its Sam2VideoProcessor with save_pretrained into the "
        "folder",
    )
    segmenter = VideoSegmenter(model, processor, device=device, name=text)
    logger.info("segmenter %s (SAM 2 video) on %s", text, segmenter.device)
    return segmenter


class Sam2Propagator(Propagator):
    """Keyframes carried by SAM 2's video model (see the module docstring).

    Args:
        unknown_width: the band on each side of SAM 2's mask edge, as
            :func:`data.trimap.trimap_from_mask` takes it (px, fraction or ``"auto"``).
        segmenter: SAM 2's video model (:func:`load_video_segmenter`).

    Raises:
        ValueError: no :class:`VideoSegmenter`.
    """

    def __init__(self, unknown_width: float | str, segmenter: VideoSegmenter | None) -> None:
        if not isinstance(segmenter, VideoSegmenter):
            raise ValueError("--propagate sam2 needs SAM 2's video model: give --segmenter")
        self.unknown_width = unknown_width
        self.segmenter = segmenter
        self.session = segmenter.start()

    def _trimap(self, mask: np.ndarray, index: int) -> np.ndarray:
        source = f"SAM 2's mask of frame {index}"
        return trimap_from_mask(mask, self.unknown_width, source=source)

    def anchor(
        self, index: int, image: np.ndarray, trimap: np.ndarray, mask: np.ndarray | None
    ) -> None:
        keyframe_mask = mask_from_trimap(trimap) if mask is None else mask
        self.segmenter.track(self.session, index, image, mask=keyframe_mask)

    def prompt(self, index: int, image: np.ndarray, prompts: Prompts) -> np.ndarray:
        return self._trimap(
            self.segmenter.track(self.session, index, image, prompts=prompts), index
        )

    def propagate(self, index: int, image: np.ndarray, flow: FlowPair | None) -> np.ndarray:
        return self._trimap(self.segmenter.track(self.session, index, image), index)
