"""The parts of the video path: optical flow and warping, flow propagation of keyframes (against
a plain warp of the mask, on synthetic clips with ground truth), the temporal blend, guidance
matching, and the video encoders (alpha in VP9 and ProRes, the composite, an abandoned video)."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from data.image_io import BadSampleError, write_image
from data.synthetic_clips import ClipMotion
from data.trimap import TRIMAP_UNKNOWN, trimap_from_mask
from evaluation.video_quality import propagation_recall
from predictor.video.encode import VideoEncoder
from predictor.video.flow import FlowEstimator, FlowPair, to_gray, warp
from predictor.video.guidance import ClipGuidance
from predictor.video.kinds import VIDEO_KINDS
from predictor.video.propagation import FlowPropagator, mask_from_trimap
from predictor.video.temporal import temporal_blend, temporal_weight


def _texture(shape=(96, 128), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (shape[0] // 8, shape[1] // 8, 3), dtype=np.uint8)
    import cv2

    return cv2.resize(small, shape[::-1], interpolation=cv2.INTER_CUBIC)


def test_flow_of_a_translation_and_its_consistency():
    image = _texture()
    moved = np.roll(image, (2, 3), axis=(0, 1))  # content moves 3 px right, 2 px down
    pair = FlowEstimator().pair(to_gray(image), to_gray(moved))
    inner = np.s_[16:-16, 16:-16]
    assert np.median(pair.backward[inner][..., 0]) == pytest.approx(-3, abs=0.2)
    assert np.median(pair.backward[inner][..., 1]) == pytest.approx(-2, abs=0.2)
    assert pair.consistent[inner].mean() > 0.9
    carried = warp(image.astype(np.float32), pair.backward)
    assert np.abs(carried[inner] - moved[inner]).mean() < 4


def test_warp_replicates_the_edges():
    image = np.arange(20, dtype=np.float32).reshape(4, 5)
    flow = np.zeros((4, 5, 2), np.float32)
    flow[..., 0] = 0.5
    assert warp(image, flow)[0].tolist() == [0.5, 1.5, 2.5, 3.5, 4.0]


def test_mask_from_trimap_splits_the_band_in_the_middle():
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    split = mask_from_trimap(trimap_from_mask(mask, 4))
    assert (split != mask).sum() <= 4  # the square's corners, rounded by the band


def test_a_trimap_keyframe_keeps_its_band_on_still_frames():
    mask = np.zeros((48, 64), bool)
    mask[12:36, 16:48] = True
    trimap = trimap_from_mask(mask, 3)
    trimap[0:6, 0:6] = TRIMAP_UNKNOWN  # a user's extra unknown region
    propagator = FlowPropagator(3)
    propagator.anchor(0, np.zeros((48, 64, 3), np.uint8), trimap, None)
    still = FlowPair(
        np.zeros((48, 64, 2), np.float32),
        np.zeros((48, 64, 2), np.float32),
        np.ones((48, 64), bool),
    )
    for _ in range(3):
        propagated = propagator.propagate(1, np.zeros((48, 64, 3), np.uint8), still)
    assert np.array_equal(propagated, trimap)


def test_flow_failures_near_the_band_become_unknown():
    mask = np.zeros((48, 64), bool)
    mask[12:36, 16:48] = True
    propagator = FlowPropagator(2)
    propagator.anchor(0, np.zeros((48, 64, 3), np.uint8), trimap_from_mask(mask, 2), mask)
    consistent = np.ones((48, 64), bool)
    consistent[20:24, 10:14] = False  # near the left edge of the subject
    consistent[40:44, 58:62] = False  # far from it
    flow = FlowPair(
        np.zeros((48, 64, 2), np.float32), np.zeros((48, 64, 2), np.float32), consistent
    )
    trimap = propagator.propagate(1, np.zeros((48, 64, 3), np.uint8), flow)
    assert (trimap[20:24, 10:14] == TRIMAP_UNKNOWN).all()
    assert (trimap[40:44, 58:62] == 0).all()


@pytest.mark.parametrize(
    ("motion", "frames", "gain"),
    [
        (ClipMotion(subject_speed=1.0, rotation=0.0, sway=0.0, background_speed=0.5), 12, 0.0),
        (ClipMotion(subject_speed=2.0, rotation=0.5, sway=3.0, background_speed=0.5), 16, 0.03),
    ],
)
def test_flow_propagation_keeps_more_of_the_fractional_truth_than_a_plain_warp(
    motion, frames, gain
):
    worst = {"flow": [], "plain warp": [], "true mask": []}
    for seed in range(3):
        stats = propagation_recall(seed, (144, 192), frames, motion, 8)
        for method in worst:
            worst[method].append(min(stats[method].recall))
    flow, plain = np.mean(worst["flow"]), np.mean(worst["plain warp"])
    assert flow >= plain + gain
    assert flow > 0.6


def test_the_temporal_blend_follows_flow_and_colours():
    image = _texture((32, 48))
    still = FlowPair(
        np.zeros((32, 48, 2), np.float32),
        np.zeros((32, 48, 2), np.float32),
        np.ones((32, 48), bool),
    )
    changed = image.copy()
    changed[:, :24] = 255 - changed[:, :24]  # the left half changes colour
    weight = temporal_weight(changed, image, still, strength=0.8)
    assert (weight[:, 24:] == pytest.approx(0.8)) and (weight[:, :24] < 0.8).all()
    assert weight[:, :24].mean() < 0.1
    alpha = np.full((32, 48), 0.2, np.float32)
    previous = np.full((32, 48), 0.6, np.float32)
    trimap = np.full((32, 48), TRIMAP_UNKNOWN, np.uint8)
    trimap[:4] = 255  # known: untouched
    alpha[:4] = 1.0
    blended = temporal_blend(alpha, trimap, previous, weight, still)
    assert np.allclose(blended[4:, 24:], 0.2 + 0.8 * (0.6 - 0.2))
    assert (blended[:4] == 1.0).all()


def test_guidance_matches_by_name_then_by_number(tmp_path):
    for name in ("clip_0003", "frame_0001"):
        write_image(tmp_path / f"{name}.png", np.zeros((8, 8), np.uint8))
    guidance = ClipGuidance(tmp_path, None, False, None)
    assert guidance.guide(1, "frame_0001").path.name == "frame_0001.png"
    assert guidance.guide(3, "00003").path.name == "clip_0003.png"
    assert guidance.guide(2, "00002") is None
    write_image(tmp_path / "x_3.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="both frame 3"):
        ClipGuidance(tmp_path, None, False, None)


def test_a_guidance_file_of_another_size_is_refused(tmp_path):
    write_image(tmp_path / "0.png", np.zeros((8, 8), np.uint8))
    guidance = ClipGuidance(None, tmp_path / "0.png", True, 2)
    with pytest.raises(BadSampleError, match="differs from the frame"):
        guidance.load(guidance.guide(0, "00000"), (8, 10))


def _encode(path, kind, frames, deep=False):
    encoder = VideoEncoder(
        path, VIDEO_KINDS[kind], frames[0].shape[1], frames[0].shape[0], Fraction(25), deep
    )
    for index, frame in enumerate(frames):
        encoder.put(frame, index, Fraction(1, 25))
    return encoder


def test_rgba_videos_carry_the_alpha(tmp_path):
    rng = np.random.default_rng(0)
    alpha = np.zeros((48, 64), np.uint8)
    alpha[8:40, 16:48] = 255
    colours = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    frames = [np.dstack([colours, alpha])] * 3
    _encode(tmp_path / "rgba.webm", "webm", frames).close()
    _encode(tmp_path / "rgba.mov", "prores", frames).close()
    with av.open(str(tmp_path / "rgba.webm")) as container:
        stream = container.streams.video[0]
        assert stream.metadata.get("alpha_mode") == "1"
        decoder = av.CodecContext.create("libvpx-vp9", "r")  # FFmpeg's vp9 drops the alpha
        decoded = [f for p in container.demux(stream) for f in decoder.decode(p)]
    assert decoded[0].format.name == "yuva420p"
    plane = decoded[0].to_ndarray(format="rgba")[..., 3]
    assert np.abs(plane.astype(int) - alpha).mean() < 8
    with av.open(str(tmp_path / "rgba.mov")) as container:
        frame = next(container.decode(video=0))
    assert frame.format.name.startswith("yuva444p")
    decoded_alpha = frame.to_ndarray(format="rgba")[..., 3]
    assert np.abs(decoded_alpha.astype(int) - alpha).max() <= 2


def test_an_abandoned_video_leaves_no_file(tmp_path):
    encoder = _encode(tmp_path / "alpha.mkv", "lossless", [np.zeros((8, 8), np.uint8)] * 2)
    encoder.abort()
    assert list(tmp_path.iterdir()) == []
