"""A Segment Anything front end: an image and prompts (a box, foreground and background points)
in, a binary mask out, with the ``transformers`` implementations of SAM, SAM-HQ and SAM 2.

The mask rule (the one place it is decided):

- one point and no box: SAM's three candidate masks (``multimask_output=True``); the one with the
  highest predicted IoU is kept;
- a box, or several points (of either label): SAM's single-mask output
  (``multimask_output=False``);
- the kept low-resolution mask logits are brought to the image's size by the processor's own
  ``post_process_masks`` and binarised there (logit > 0).

The image runs through the processor's own preprocessing, so the model sees the image at its
input size (1024 px on the long side for SAM and SAM-HQ, 1024 x 1024 for SAM 2), never at the
photo's resolution. The image embedding (the encoder's output, the expensive part) is computed
once per image and kept in a small cache keyed by the image's content, so a new prompt on the
same image runs the prompt encoder and mask decoder only.

A segmenter is any SAM-family checkpoint that ``transformers`` reads: a Hugging Face hub id
(``facebook/sam-vit-base``, ``syscv-community/sam-hq-vit-base``,
``facebook/sam2-hiera-small-hf``...), downloaded once into the hub cache, or a local folder written
by ``save_pretrained`` (model and processor; a folder saved without the processor gets the
family's processor at the model's input size). The model class comes from the checkpoint's config
(``model_type``: ``sam``, ``sam_hq`` or ``sam2``; ``sam2_video``, how SAM 2's video checkpoints
such as ``facebook/sam2.1-hiera-tiny`` are saved, gives their ``Sam2Model`` part). Nothing is
downloaded at import.

References: Kirillov et al., Segment Anything (2023), ``SamPredictor`` (set the image once,
prompt many times); Matte-Anything and MattePro (a segmenter in front of a trimap-based matting
model).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from torch import Tensor

from data.trimap import AUTO_WIDTH, trimap_from_mask
from predictor.inputs import ImageInput, image_levels
from predictor.prediction import Guidance
from predictor.prompts import Prompts
from utils.device import resolve_device
from utils.levels import UINT8_MAX, UINT16_PER_UINT8

__all__ = [
    "EMBEDDING_CACHE_SIZE",
    "IMAGE_PART_OF",
    "PROCESSOR_FILES",
    "SAM_FAMILY",
    "Guidance",
    "Segmentation",
    "Segmenter",
    "as_segmenter",
    "checkpoint_config",
    "load_or_refuse",
    "load_segmenter",
    "saved_processor",
    "segmenter_rgb",
    "uses_multimask",
]

logger = logging.getLogger(__name__)

# The segmenters: the config's model_type -> the transformers model class, and its processor.
SAM_FAMILY = {"sam": "SamModel", "sam_hq": "SamHQModel", "sam2": "Sam2Model"}
PROCESSORS = {"sam": "SamProcessor", "sam_hq": "SamHQProcessor", "sam2": "Sam2Processor"}
# Checkpoints whose image part is a family's model: SAM 2's video checkpoints (the hub's
# facebook/sam2.1-hiera-* are saved as Sam2VideoModel) hold Sam2Model and the memory modules.
IMAGE_PART_OF = {"sam2_video": "sam2"}
# What save_pretrained writes for a processor (the second name for processors of transformers 5).
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
# Images whose embeddings are kept (a few MiB each: 4 MiB for SAM ViT-B, 16 MiB for SAM 2).
EMBEDDING_CACHE_SIZE = 4


def uses_multimask(prompts: Prompts) -> bool:
    """The mask rule: one point alone gives three candidates (the best predicted IoU is kept);
    a box or several points give SAM's single mask."""
    return not prompts.multiple


@dataclass(frozen=True)
class Segmentation:
    """A segmenter's answer for one image and its prompts.

    Attributes:
        mask: ``[H, W]`` bool, the image's size, True on the subject.
        score: the model's predicted IoU of that mask.
        candidates: how many masks the model proposed (3 for one point, else 1).
    """

    mask: np.ndarray
    score: float
    candidates: int


@dataclass(frozen=True)
class _Embedding:
    """One image's encoder output and the sizes the processor reported for it."""

    inputs: dict[str, Any]  # image_embeddings (and SAM-HQ's intermediate_embeddings)
    original_sizes: Tensor  # [1, 2] (H, W) of the image
    reshaped_input_sizes: Tensor | None  # [1, 2] (h, w) after the resize (SAM, SAM-HQ)


def segmenter_rgb(image: ImageInput) -> np.ndarray:
    """An image input as the segmenter's ``[H, W, 3]`` uint8 RGB: 8-bit images as they are,
    16-bit ones divided by 257, float ones (in [0, 1]) times 255, rounded.

    Raises:
        BadSampleError, ValueError: as :func:`predictor.inputs.image_levels`.
    """
    levels = image_levels(image)  # [H, W, 3]
    if levels.dtype.kind == "f":
        levels = np.round(levels.astype(np.float32) * np.float32(UINT8_MAX))
    elif levels.dtype != np.uint8:
        levels = np.round(levels.astype(np.float32) / np.float32(UINT16_PER_UINT8))
    return np.ascontiguousarray(levels, dtype=np.uint8)


def _image_key(rgb: np.ndarray) -> tuple:
    """A cache key of an image: its size and a digest of its pixels."""
    return rgb.shape, hashlib.blake2b(rgb.data, digest_size=16).digest()


class Segmenter:
    """A SAM-family model and its processor, prompted many times per image.

    Args:
        model: a ``SamModel``, ``SamHQModel`` or ``Sam2Model``.
        processor: its processor (``SamProcessor``, ``SamHQProcessor``, ``Sam2Processor``).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``...
        name: what it was loaded from (for messages).

    Raises:
        ValueError: a model outside the SAM family, or a CUDA device without CUDA.
    """

    def __init__(
        self, model: Any, processor: Any, *, device: str | torch.device = "auto", name: str = ""
    ) -> None:
        model_type = model.config.model_type
        self.family = IMAGE_PART_OF.get(model_type, model_type)
        if self.family not in SAM_FAMILY:
            raise ValueError(f"{name or 'the model'} is a {self.family!r} model, not SAM-family")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.name = name or self.family
        self._cache: OrderedDict[tuple, _Embedding] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Segmenter({self.name!r}, {self.family}, {self.device})"

    def clear_cache(self) -> None:
        """Forget the kept image embeddings (the next prompt on any image embeds it again)."""
        with self._lock:
            self._cache.clear()

    def embedding(self, rgb: np.ndarray) -> _Embedding:
        """The image's embedding: from the cache, or the processor and the encoder (once)."""
        key = _image_key(rgb)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        encoding = self.processor(images=rgb, return_tensors="pt")
        pixel_values = encoding["pixel_values"].to(self.device)  # [1, 3, input size]
        with torch.inference_mode():
            embeddings = self.model.get_image_embeddings(pixel_values)
        if self.family == "sam_hq":  # the last embedding and the ViT's early ones
            image, intermediate = embeddings
            inputs = {"image_embeddings": image, "intermediate_embeddings": intermediate}
        else:
            inputs = {"image_embeddings": embeddings}
        entry = _Embedding(inputs, encoding["original_sizes"], encoding.get("reshaped_input_sizes"))
        self._cache[key] = entry
        if len(self._cache) > EMBEDDING_CACHE_SIZE:
            self._cache.popitem(last=False)
        logger.debug("%s: embedded a %dx%d image", self.name, rgb.shape[1], rgb.shape[0])
        return entry

    def _prompt_inputs(self, embedding: _Embedding, prompts: Prompts) -> dict[str, Tensor]:
        """The prompts as the processor converts them for this image (coordinates scaled to the
        model's input size), without preprocessing the image again."""
        points = [[[p.x, p.y] for p in prompts.points]] if prompts.points else None
        labels = [[p.label for p in prompts.points]] if prompts.points else None
        boxes = [[list(prompts.box)]] if prompts.box is not None else None
        if self.family == "sam2":  # nested one level deeper: [image, object, point, xy]
            converted = self.processor(
                original_sizes=embedding.original_sizes,
                input_points=None if points is None else [points],
                input_labels=None if labels is None else [labels],
                input_boxes=boxes,
                return_tensors="pt",
            )
        else:
            # SamProcessor and SamHQProcessor convert prompts only together with an image; these
            # are the steps of their __call__ after the image's preprocessing.
            points, labels, boxes = self.processor._check_and_preprocess_points(
                input_points=points, input_labels=labels, input_boxes=boxes
            )
            converted = self.processor._normalize_and_convert(
                {},
                embedding.original_sizes.numpy(),
                input_points=points,
                input_labels=labels,
                input_boxes=boxes,
                return_tensors="pt",
            )
        keys = ("input_points", "input_labels", "input_boxes")
        return {key: converted[key].to(self.device) for key in keys if key in converted}

    def predict(self, image: ImageInput, prompts: Prompts) -> Segmentation:
        """The mask of the subject the prompts point at (the rule: see the module).

        Args:
            image: an image input (see :func:`predictor.inputs.image_levels`).
            prompts: a box and/or points in the image's pixel coordinates.

        Raises:
            PromptError: prompts outside the image.
            BadSampleError, ValueError: an unreadable or unsupported image.
        """
        rgb = segmenter_rgb(image)
        prompts.check_inside(rgb.shape[:2])
        multimask = uses_multimask(prompts)
        with self._lock, torch.inference_mode():
            embedding = self.embedding(rgb)
            outputs = self.model(
                **embedding.inputs,
                **self._prompt_inputs(embedding, prompts),
                multimask_output=multimask,
            )
            scores = outputs.iou_scores[0, 0]  # [candidates]
            best = int(scores.argmax())
            logits = outputs.pred_masks[:, :, best : best + 1]  # [1, 1, 1, h, w]
            sizes = [embedding.original_sizes]
            if embedding.reshaped_input_sizes is not None:
                sizes.append(embedding.reshaped_input_sizes)
            mask = self.processor.post_process_masks(logits, *sizes)[0]  # [1, 1, H, W] bool
        return Segmentation(
            mask=mask[0, 0].cpu().numpy(),
            score=float(scores[best]),
            candidates=int(scores.numel()),
        )

    def guidance(
        self, image: ImageInput, prompts: Prompts, unknown_width: float | str = AUTO_WIDTH
    ) -> Guidance:
        """The mask of :meth:`predict` and its trimap (:func:`data.trimap.trimap_from_mask`).

        Args:
            image: an image input.
            prompts: a box and/or points.
            unknown_width: the unknown band on each side of the mask's edge: px, a fraction of
                the shorter side (float < 1) or ``"auto"`` (relative to the mask's size).

        Raises:
            PromptError, BadSampleError, ValueError: as :meth:`predict`, or a bad width.
        """
        mask = self.predict(image, prompts).mask
        source = f"the mask {self.name} made for {prompts.describe()}"
        return Guidance(mask=mask, trimap=trimap_from_mask(mask, unknown_width, source=source))


def _hub_message(source: str, reason: str) -> str:
    folder = source.rsplit("/", 1)[-1]
    return (
        f"segmenter {source}: not a local folder, and the Hugging Face hub could not give it "
        f"({reason}). With network access, a hub id is downloaded once into the hub cache; "
        f"without it, download the checkpoint on a machine that has access (hf download {source} "
        f"--local-dir {folder}) and pass that folder: --segmenter {folder} (Python: "
        f"segmenter='{folder}')"
    )


def load_or_refuse(load: Callable[[], Any], source: str, problem: str) -> Any:
    """``load()``; its errors as one ValueError: for a hub id, how to pass a local folder
    instead; for a folder, ``problem`` and the reason."""
    try:
        return load()
    except (OSError, ValueError) as exc:  # no network, no such repo or file, a bad config
        reason = str(exc).splitlines()[0]
        if not Path(source).is_dir():
            raise ValueError(_hub_message(source, reason)) from exc
        raise ValueError(f"segmenter {source}: {problem} ({reason})") from exc


def checkpoint_config(source: str) -> Any:
    """The transformers config of a segmenter's checkpoint (a hub id or a folder).

    Raises:
        ValueError: as :func:`load_or_refuse` words it.
    """
    return load_or_refuse(
        lambda: transformers.AutoConfig.from_pretrained(source),
        source,
        "not a transformers checkpoint folder; give a folder written by save_pretrained "
        "(config.json, weights, processor)",
    )


def saved_processor(source: str) -> bool:
    """Whether ``AutoProcessor`` can read a processor from ``source``: a hub id, or a folder
    holding a processor config (:data:`PROCESSOR_FILES`)."""
    folder = Path(source)
    return not folder.is_dir() or any((folder / name).is_file() for name in PROCESSOR_FILES)


def _processor(source: str, config: Any, family: str) -> Any:
    """The checkpoint's processor; for a folder saved without one, the family's processor at
    the model's input size (its prompt encoder's image size), with a warning."""
    if saved_processor(source):
        return transformers.AutoProcessor.from_pretrained(source)
    side = config.prompt_encoder_config.image_size
    if family == "sam2":
        image_processor = transformers.Sam2ImageProcessor(size={"height": side, "width": side})
    else:
        image_processor = transformers.SamImageProcessor(
            size={"longest_edge": side}, pad_size={"height": side, "width": side}
        )
    logger.warning(
        "segmenter %s has no processor config (%s): using %s at the model's input size, %d px",
        source,
        " or ".join(PROCESSOR_FILES),
        PROCESSORS[family],
        side,
    )
    return getattr(transformers, PROCESSORS[family])(image_processor)


def load_segmenter(source: str | Path, *, device: str | torch.device = "auto") -> Segmenter:
    """A SAM-family segmenter from a hub id or a local ``save_pretrained`` folder.

    Args:
        source: a Hugging Face hub id (``facebook/sam-vit-base``) or a folder holding the
            model's config, weights and processor.
        device: where the model runs.

    Raises:
        ValueError: a hub id that cannot be fetched (the message says how to pass a local
            folder), a folder that is not a transformers checkpoint, a checkpoint that is not
            SAM-family, or one whose model or processor cannot be loaded.
    """
    text = str(source)
    config = checkpoint_config(text)
    model_type = getattr(config, "model_type", None)
    family = IMAGE_PART_OF.get(model_type, model_type)
    if family not in SAM_FAMILY:
        raise ValueError(
            f"segmenter {text}: its config is a {model_type!r} model, not a SAM-family segmenter "
            f"(model_type {', '.join([*SAM_FAMILY, *IMAGE_PART_OF])})"
        )
    model, processor = load_or_refuse(
        lambda: (
            getattr(transformers, SAM_FAMILY[family]).from_pretrained(text),
            _processor(text, config, family),
        ),
        text,
        f"cannot load its {family} model and processor; save both with save_pretrained into "
        "the folder",
    )
    segmenter = Segmenter(model, processor, device=device, name=text)
    logger.info("segmenter %s (%s) on %s", text, family, segmenter.device)
    return segmenter


def as_segmenter(
    segmenter: Segmenter | str | Path | None, device: str | torch.device
) -> Segmenter | None:
    """A :class:`Segmenter` as given, or loaded from a hub id or folder onto ``device``."""
    if segmenter is None or isinstance(segmenter, Segmenter):
        return segmenter
    return load_segmenter(segmenter, device=device)
