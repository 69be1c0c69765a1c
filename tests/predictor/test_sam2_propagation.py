"""Propagation by SAM 2's video model (``--propagate sam2``), on a tiny random SAM 2 video
checkpoint (no network): every frame's mask is the one transformers' own streaming video API
gives for the same prompts or keyframe masks (that API written out here, as its documentation
uses it), keyframes re-anchor, the session stays bounded, and what cannot be used is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from data.synthetic_clips import MASK_THRESHOLD, ClipMotion, iter_clip
from data.trimap import TRIMAP_FG, trimap_from_mask
from predictor.prompts import PromptError, Prompts
from predictor.segmenter import load_segmenter
from predictor.video.propagation import mask_from_trimap
from predictor.video.sam2_propagation import (
    KEPT_KEYFRAMES,
    Sam2Propagator,
    VideoSegmenter,
    load_video_segmenter,
)
from tests.helpers import (
    reference_sam2_video_masks,
    save_tiny_segmenter,
    save_tiny_video_segmenter,
)

pytestmark = pytest.mark.usefixtures("hub_offline")  # no test here reaches for the network

SIZE = (60, 80)
FRAMES = 8
# The share of a frame's pixels whose mask may differ from transformers' own (0.1 %).
MAX_DIFFERENT = 0.001
BOX = (14.0, 10.0, 60.0, 52.0)
POINTS = ((36.0, 30.0, 1), (4.0, 4.0, 0))
KEYFRAME = 4


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return save_tiny_video_segmenter(tmp_path_factory.mktemp("sam2_video"))


@pytest.fixture(scope="module")
def segmenter(folder) -> VideoSegmenter:
    return load_video_segmenter(folder, device="cpu")


@pytest.fixture(scope="module")
def clip() -> list:
    return list(iter_clip(3, SIZE, FRAMES, ClipMotion(subject_speed=2.0, rotation=1.0, sway=1.0)))


def _different(a: np.ndarray, b: np.ndarray) -> float:
    return float((a != b).mean())


def _true_mask(frame) -> np.ndarray:
    return frame.alpha > MASK_THRESHOLD


@pytest.mark.parametrize(
    "prompts",
    [
        Prompts(box=BOX),
        Prompts(points=POINTS[:1]),
        Prompts(points=POINTS),
        Prompts(box=BOX, points=POINTS[:1]),
    ],
    ids=["box", "point", "points", "box+point"],
)
def test_prompted_frames_get_transformers_own_masks(folder, segmenter, clip, prompts):
    images = [frame.image for frame in clip]
    expected = reference_sam2_video_masks(folder, images, prompts=prompts)
    # Not a vacuous comparison: every mask has both sides.
    assert all(mask.any() and not mask.all() for mask in expected)
    propagator = Sam2Propagator(0, segmenter)  # no band: the trimap is SAM 2's mask
    trimaps = [propagator.prompt(0, images[0], prompts)]
    trimaps += [propagator.propagate(i, image, None) for i, image in enumerate(images) if i]
    for index, (trimap, mask) in enumerate(zip(trimaps, expected)):
        assert _different(trimap == TRIMAP_FG, mask) <= MAX_DIFFERENT, index


def test_a_first_frame_mask_and_keyframes_re_anchor_sam2(folder, segmenter, clip):
    images = [frame.image for frame in clip]
    first = _true_mask(clip[0])
    keyframe_trimap = trimap_from_mask(_true_mask(clip[KEYFRAME]), 3)  # a trimap keyframe
    keyframes = {0: first, KEYFRAME: mask_from_trimap(keyframe_trimap)}
    expected = reference_sam2_video_masks(folder, images, masks=keyframes)
    first_only = reference_sam2_video_masks(folder, images, masks={0: first})
    changed = zip(expected[KEYFRAME:], first_only[KEYFRAME:])
    assert any(_different(a, b) > 0.01 for a, b in changed)  # the keyframe matters
    propagator = Sam2Propagator("auto", segmenter)
    for index, image in enumerate(images):
        if index == 0:
            propagator.anchor(0, image, trimap_from_mask(first, "auto"), first)
        elif index == KEYFRAME:
            propagator.anchor(index, image, keyframe_trimap, None)
        else:
            trimap = propagator.propagate(index, image, None)
            reference = trimap_from_mask(expected[index], "auto")
            assert _different(trimap, reference) <= MAX_DIFFERENT, index


def test_the_session_keeps_only_what_sam2_reads_again(segmenter):
    """Over a long clip with many keyframes: no frame's pixels or mask logits, tracked outputs
    only within SAM 2's reach, the most recent keyframes only."""
    propagator = Sam2Propagator(2, segmenter)
    session = propagator.session
    frames = list(iter_clip(1, (32, 40), 2 * KEPT_KEYFRAMES + 4, ClipMotion()))
    for index, frame in enumerate(frames):
        if index % 2 == 0:
            mask = _true_mask(frame)
            propagator.anchor(index, frame.image, trimap_from_mask(mask, 2), mask)
        else:
            propagator.propagate(index, frame.image, None)
        assert not session.processed_frames
        outputs = session.output_dict_per_obj[0]
        tracked, keyframes = outputs["non_cond_frame_outputs"], outputs["cond_frame_outputs"]
        assert all(t > index - segmenter.memory_frames for t in tracked)
        assert len(keyframes) == min(index // 2 + 1, KEPT_KEYFRAMES)
        for stored in [*tracked.values(), *keyframes.values()]:
            assert "high_res_masks" not in stored and "pred_masks" not in stored
        assert not session.point_inputs_per_obj[0] and not session.mask_inputs_per_obj[0]
        assert len(session.frames_tracked_per_obj[0]) <= segmenter.memory_frames


def test_prompts_outside_the_frame_are_refused(segmenter, clip):
    propagator = Sam2Propagator("auto", segmenter)
    with pytest.raises(PromptError, match=r"box 0,0,81,10 reaches outside the image: frame 0"):
        propagator.prompt(0, clip[0].image, Prompts(box=(0, 0, 81, 10)))


def test_propagation_by_sam2_needs_its_video_model(tmp_path):
    with pytest.raises(ValueError, match="--propagate sam2 needs SAM 2's video model"):
        Sam2Propagator("auto", None)
    sam2_image = save_tiny_segmenter("sam2", tmp_path / "sam2_image")
    with pytest.raises(ValueError, match=r"image checkpoint .* none of the memory modules"):
        load_video_segmenter(sam2_image)
    sam = save_tiny_segmenter("sam", tmp_path / "sam")
    with pytest.raises(ValueError, match=rf"{sam}: its config is a 'sam' model"):
        load_video_segmenter(sam)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=rf"{empty}: not a transformers checkpoint folder"):
        load_video_segmenter(empty)


def test_a_video_checkpoint_missing_weights_is_refused(folder, tmp_path):
    model = transformers.Sam2VideoModel.from_pretrained(folder)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("memory_encoder")}
    partial = tmp_path / "partial"
    model.save_pretrained(partial, state_dict=state)
    transformers.Sam2VideoProcessor.from_pretrained(folder).save_pretrained(partial)
    with pytest.raises(ValueError, match=r"its weights lack .* memory_encoder"):
        load_video_segmenter(partial)


def test_an_unreachable_hub_id_says_how_to_pass_a_local_folder():
    with pytest.raises(ValueError) as refused:
        load_video_segmenter("mematte-tests/no-such-sam2-video")
    message = str(refused.value)
    assert "not a local folder" in message
    assert "--segmenter no-such-sam2-video" in message


def test_a_video_checkpoint_also_serves_as_the_image_segmenter(folder, clip):
    """(``--propagate flow`` with prompts and SAM 2's video checkpoint): its ``Sam2Model`` part,
    as transformers loads it from the folder, makes the first frame's mask."""
    image = clip[0].image
    model = transformers.Sam2Model.from_pretrained(folder).eval()
    processor = transformers.Sam2Processor(transformers.Sam2ImageProcessor.from_pretrained(folder))
    inputs = processor(images=image, input_boxes=[[list(BOX)]], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs, multimask_output=False)
    expected = processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"])[0]
    segmenter = load_segmenter(folder, device="cpu")
    assert segmenter.family == "sam2"
    mask = segmenter.predict(image, Prompts(box=BOX)).mask
    assert mask.any() and np.array_equal(mask, expected[0, 0].numpy())
