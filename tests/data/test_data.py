"""Training pipeline, sample keys and sampler, augmentations, test-set readers, image reading."""

import logging
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

from data import (
    BadSampleError,
    DIMTrainDataset,
    MattingEvalDataset,
    SampleKey,
    UnreadableImageError,
    detect_layout,
    read_gray,
    read_map_u8,
    read_rgb,
    read_trimap,
    scan_test_set,
    write_image,
)
from data.build import TrainSampler, build_train_loader
from data.image_io import list_images_by_stem, read_train_alpha, read_train_rgb
from data.synthetic_dataset import make_synthetic_dataset
from data.transforms import (
    Composite,
    GenTrimap,
    RandomAffine,
    RandomCrop,
    RandomJitter,
    affine_matrix,
    composite_two_foregrounds,
)
from data.trimap import erosion_trimap, quantize_trimap
from utils import comm

CROP = 64  # small training crop keeps the tests fast
ORIENTATION_TAG = 0x0112  # EXIF
TRIMAP_LEVELS = {0, 128, 255}  # 8-bit, inside the pipeline
NETWORK_TRIMAP_LEVELS = {0.0, 0.5, 1.0}  # what the training batch carries


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root, seed=0, num_fg=3, num_bg=7, num_test=2, size=96)
    return root


def _train_set(root: Path, **kwargs) -> DIMTrainDataset:
    train = root / "train"
    return DIMTrainDataset(
        fg_dir=train / "fg",
        alpha_dir=train / "alpha",
        bg_dir=train / "bg",
        crop_size=CROP,
        **kwargs,
    )


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key]


# --- training dataset ------------------------------------------------------------------------


def test_sample_shapes_dtypes_and_ranges(synthetic_root: Path) -> None:
    dataset = _train_set(synthetic_root)
    for idx in range(len(dataset)):
        sample = dataset[idx]
        assert set(sample) == {"image", "fg", "bg", "alpha", "trimap", "image_name"}
        for key in ("image", "fg", "bg"):
            assert sample[key].shape == (3, CROP, CROP) and sample[key].dtype == torch.float32
            assert sample[key].min() >= 0 and sample[key].max() <= 1
        for key in ("alpha", "trimap"):
            assert sample[key].shape == (1, CROP, CROP) and sample[key].dtype == torch.float32
        assert sample["alpha"].min() >= 0 and sample["alpha"].max() <= 1
        assert set(sample["trimap"].unique().tolist()) <= NETWORK_TRIMAP_LEVELS
        assert (sample["trimap"] == 0.5).any()  # the crop is centred on an unknown pixel
        composite = sample["fg"] * sample["alpha"] + sample["bg"] * (1 - sample["alpha"])
        torch.testing.assert_close(sample["image"], composite, atol=1e-5, rtol=0)


def test_length_is_backgrounds_and_fg_index_wraps(synthetic_root: Path) -> None:
    dataset = _train_set(synthetic_root)
    assert len(dataset) == 7 and dataset.num_foregrounds == 3
    for idx in range(len(dataset)):
        assert dataset[idx]["image_name"] == f"fg_{idx % 3:03d}.png"


def test_default_crop_is_official_512(synthetic_root: Path) -> None:
    train = synthetic_root / "train"
    dataset = DIMTrainDataset(fg_dir=train / "fg", alpha_dir=train / "alpha", bg_dir=train / "bg")
    assert dataset[0]["image"].shape == (3, 512, 512)  # 96 px inputs are upscaled first


def test_same_key_same_sample_other_seed_or_epoch_differs(synthetic_root: Path) -> None:
    first, again, other = (
        [dataset[key] for key in (SampleKey(0, 1), SampleKey(1, 1), SampleKey(0, 1))]
        for dataset in (_train_set(synthetic_root, seed=s) for s in (3, 3, 4))
    )
    for a, b in zip(first, again):
        _assert_same(a, b)
    _assert_same(first[0], first[2])  # a sample depends on its key, not on what came before
    assert not torch.equal(first[0]["image"], first[1]["image"])  # another epoch: other draws
    assert not torch.equal(first[0]["image"], other[0]["image"])
    _assert_same(_train_set(synthetic_root, seed=3)[1], first[0])  # a plain index is epoch 0


def _loader_batches(root: Path, num_workers: int, epochs: int = 2) -> list[torch.Tensor]:
    loader = build_train_loader(
        _train_set(root, seed=5), batch_size=2, num_workers=num_workers, seed=5
    )
    batches = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        batches += [batch["image"] for batch in loader]
    return batches


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 2 workers, few cores
def test_samples_do_not_depend_on_the_loading_workers(synthetic_root: Path) -> None:
    in_process = _loader_batches(synthetic_root, num_workers=0)
    with_workers = _loader_batches(synthetic_root, num_workers=2)
    assert len(in_process) == len(with_workers) == 2 * (7 // 2)
    for a, b in zip(in_process, with_workers, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(in_process[0], in_process[3])  # epoch 1 is another shuffle


def test_loader_workers_persist_and_leave_the_global_generator_alone(synthetic_root):
    loader = build_train_loader(_train_set(synthetic_root), batch_size=2, num_workers=1)
    assert loader.persistent_workers and loader.generator is not None
    state = torch.get_rng_state()
    next(iter(loader))  # creating the iterator draws the workers' base seed
    assert torch.equal(torch.get_rng_state(), state)


# --- training sampler ----------------------------------------------------------------------------


class _Sized(torch.utils.data.Dataset):
    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def _keys(sampler: TrainSampler, epoch: int) -> list[SampleKey]:
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("rank", [0, 1])
def test_sampler_order_is_distributed_samplers(monkeypatch, rank: int) -> None:
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "get_rank", lambda: rank)
    dataset = _Sized(11)  # not a multiple of the ranks: ours drops, the official pads
    ours = TrainSampler(dataset, seed=3)
    official = TrainSampler(dataset, seed=0, official_order=True)
    official_sampler = DistributedSampler(dataset, num_replicas=2, rank=rank)  # never set_epoch
    for epoch in range(3):
        reference = DistributedSampler(dataset, 2, rank, seed=3, drop_last=True)
        reference.set_epoch(epoch)
        assert _keys(ours, epoch) == [SampleKey(epoch, i) for i in reference]
        assert _keys(official, epoch) == [SampleKey(epoch, i) for i in official_sampler]
    assert len(_keys(ours, 0)) == 5 and len(_keys(official, 0)) == 6
    assert _keys(ours, 1) != [SampleKey(1, key.index) for key in _keys(ours, 0)]


def test_sampler_skips_the_start_of_one_pass() -> None:
    sampler = TrainSampler(_Sized(8), seed=1)
    full = _keys(sampler, 2)
    sampler.set_epoch(2)
    sampler.skip(5)
    assert list(sampler) == full[5:]
    assert list(sampler) == full  # the skip applies to one pass only


def test_official_file_order(synthetic_root: Path, tmp_path: Path) -> None:
    train = synthetic_root / "train"
    dataset = _train_set(synthetic_root, official_order=True)
    fg_names = {os.path.splitext(p)[0] for p in os.listdir(train / "fg")}
    alpha_names = {os.path.splitext(p)[0] for p in os.listdir(train / "alpha")}
    names = list(fg_names & alpha_names)
    np.random.RandomState(0).shuffle(names)
    assert [p.stem for p in dataset.fg_paths] == names
    assert [p.stem for p in dataset.alpha_paths] == names
    assert [p.name for p in dataset.bg_paths] == os.listdir(train / "bg")
    default = _train_set(synthetic_root)
    assert [p.name for p in default.bg_paths] == sorted(os.listdir(train / "bg"))
    assert default.fg_paths == sorted(dataset.fg_paths)


def test_train_loader_rejects_a_dataset_smaller_than_a_batch(synthetic_root):
    dataset = _train_set(synthetic_root)
    with pytest.raises(ValueError, match="fewer than one batch"):
        build_train_loader(dataset, batch_size=len(dataset) + 1, num_workers=0)


# --- bad training input ----------------------------------------------------------------------


def _write_pair(root: Path, stem: str, fg_size: tuple[int, int], alpha_size: tuple[int, int]):
    for sub in ("fg", "alpha", "bg"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(root / "fg" / f"{stem}.jpg"), rng.integers(0, 255, (*fg_size, 3), np.uint8))
    alpha = np.zeros(alpha_size, np.uint8)
    alpha[
        alpha_size[0] // 4 : alpha_size[0] * 3 // 4, alpha_size[1] // 4 : alpha_size[1] * 3 // 4
    ] = 255
    cv2.imwrite(str(root / "alpha" / f"{stem}.png"), cv2.GaussianBlur(alpha, (7, 7), 2))
    cv2.imwrite(str(root / "bg" / f"{stem}.jpg"), rng.integers(0, 255, (*fg_size, 3), np.uint8))


def _dirs(root: Path) -> dict[str, Path]:
    return {"fg_dir": root / "fg", "alpha_dir": root / "alpha", "bg_dir": root / "bg"}


def test_no_pairs_error_names_folder(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a", (40, 40), (40, 40))
    (tmp_path / "alpha" / "a.png").rename(tmp_path / "alpha" / "b.png")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "fg")):
        DIMTrainDataset(**_dirs(tmp_path), crop_size=16)
    with pytest.raises(FileNotFoundError, match="missing"):
        DIMTrainDataset(fg_dir=tmp_path / "missing", alpha_dir=tmp_path, bg_dir=tmp_path)


def test_alpha_size_mismatch_names_file(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a", (40, 50), (40, 40))
    dataset = DIMTrainDataset(**_dirs(tmp_path), crop_size=16)
    with pytest.raises(BadSampleError, match="a.png") as info:
        dataset[0]
    assert info.value.path == tmp_path / "alpha" / "a.png"


def test_unreadable_image_is_logged_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write_pair(tmp_path, "good", (40, 40), (40, 40))
    _write_pair(tmp_path, "zbad", (40, 40), (40, 40))
    (tmp_path / "fg" / "zbad.jpg").write_bytes(b"not an image")
    dataset = DIMTrainDataset(**_dirs(tmp_path), crop_size=16, seed=1)
    with caplog.at_level(logging.WARNING, logger="data.dim_dataset"):
        samples = [dataset[1] for _ in range(5)]  # bg 1 pairs with the broken fg 1
    assert all(s["image_name"] == "good.jpg" for s in samples)
    assert "zbad.jpg" in caplog.text


# --- augmentations -----------------------------------------------------------------------------


def _soft_disc(size: int = 640) -> np.ndarray:
    """``[size, size]`` float32 alpha: an opaque disc with a soft rim and a translucent patch."""
    disc = np.zeros((size, size), np.float32)
    cv2.circle(disc, (size // 2, size // 2), size // 4, 1.0, -1)
    disc = cv2.GaussianBlur(disc, (0, 0), 6)
    disc[10:60, 10:60] = 0.4
    return disc


def test_erosion_trimap_by_hand() -> None:
    # Columns: 4 background, one fractional, 4 foreground. OpenCV's 3x3 ellipse is a cross and
    # erosion treats pixels beyond the border as belonging to the region.
    alpha = np.tile(np.array([0, 0, 0, 0, 0.5, 1, 1, 1, 1], np.float32), (5, 1))
    row = erosion_trimap(alpha, fg_kernel=1, bg_kernel=1)[2]
    assert row.tolist() == [0, 0, 0, 0, 128, 255, 255, 255, 255]
    row = erosion_trimap(alpha, fg_kernel=3, bg_kernel=1)[2]
    assert row.tolist() == [0, 0, 0, 0, 128, 128, 255, 255, 255]
    row = erosion_trimap(alpha, fg_kernel=1, bg_kernel=5)[2]
    assert row.tolist() == [0, 0, 128, 128, 128, 255, 255, 255, 255]
    assert erosion_trimap(alpha, 3, 3).dtype == np.uint8


def test_definite_regions_follow_the_official_float32_expressions() -> None:
    # Just above 1e-5, (1 - alpha + 1e-5) still rounds to 1 in float32: official background.
    alpha = np.array([[0.0, 1.0e-5, 1.000005e-5, 1.0043e-5, 1.0045e-5, 2e-5, 0.5, 1.0]], np.float32)
    row = erosion_trimap(alpha, fg_kernel=1, bg_kernel=1)[0]
    assert row.tolist() == [0, 0, 0, 0, 128, 128, 128, 255]
    values = np.random.default_rng(0).uniform(-0.2, 1.2, (64, 64)).astype(np.float32)
    values[::3] = np.float32(1e-5) + np.random.default_rng(1).uniform(-1e-7, 1e-7, (22, 64))
    values[1::3] = np.float32(1 - 1e-5) + np.random.default_rng(2).uniform(-1e-7, 1e-7, (21, 64))
    trimap = erosion_trimap(values, 1, 1)
    official_fg = (values + 1e-5).astype(int).astype(np.uint8) == 1
    official_bg = (1 - values + 1e-5).astype(int).astype(np.uint8) == 1
    assert np.array_equal(trimap == 255, official_fg & ~official_bg)
    assert np.array_equal(trimap == 0, official_bg)


def test_quantize_trimap_uses_the_official_thresholds() -> None:
    levels = np.array([0, 84, 85, 127, 128, 169, 170, 254, 255], np.uint8)
    expected = [0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0]
    quantized = quantize_trimap(levels)
    assert quantized.dtype == np.float32 and quantized.tolist() == expected


def test_gen_trimap_band_covers_fractional_alpha_and_is_at_most_a_kernel_wide() -> None:
    alpha = _soft_disc()  # already at the 640 working size: the resizes are identities
    max_kernel = GenTrimap().max_kernel
    definite_fg, definite_bg = alpha >= 1 - 1e-5, alpha <= 1e-5
    # Distance of each definite pixel to the nearest pixel outside its region.
    fg_depth = cv2.distanceTransform(definite_fg.astype(np.uint8), cv2.DIST_L2, 5)
    bg_depth = cv2.distanceTransform(definite_bg.astype(np.uint8), cv2.DIST_L2, 5)
    trimaps = []
    for seed in range(5):
        trimap = GenTrimap()({"alpha": alpha.copy()}, np.random.default_rng(seed))["trimap"]
        assert set(np.unique(trimap).tolist()) <= TRIMAP_LEVELS
        assert np.all(trimap[~definite_fg & ~definite_bg] == 128)
        # A kernel narrower than max_kernel erodes less than max_kernel / 2 px off a region.
        assert np.all(trimap[fg_depth > max_kernel / 2] == 255)
        assert np.all(trimap[bg_depth > max_kernel / 2] == 0)
        trimaps.append(trimap)
    again = GenTrimap()({"alpha": alpha.copy()}, np.random.default_rng(4))["trimap"]
    assert np.array_equal(again, trimaps[4])
    assert len({t.tobytes() for t in trimaps}) > 1  # the band width is drawn


def _crop_sample(trimap: np.ndarray) -> dict:
    height, width = trimap.shape
    return {
        "fg": np.zeros((height, width, 3), np.uint8),
        "alpha": (trimap / 255).astype(np.float32),
        "bg": np.zeros((30, 20, 3), np.uint8),
        "trimap": trimap.astype(np.uint8),
        "image_name": "x",
    }


def test_random_crop_is_centred_on_unknown_pixels() -> None:
    trimap = np.zeros((300, 400), np.float32)
    trimap[100:120, 250:270] = 128
    for seed in range(10):
        out = RandomCrop(64)(_crop_sample(trimap), np.random.default_rng(seed))
        assert all(out[k].shape[:2] == (64, 64) for k in ("fg", "alpha", "bg", "trimap"))
        assert out["trimap"][28:36, 28:36].max() == 128  # an unknown pixel near the centre


def test_random_crop_upscales_small_and_resizes_without_unknown() -> None:
    small = np.full((40, 50), 128, np.float32)
    out = RandomCrop(64)(_crop_sample(small), np.random.default_rng(0))
    assert out["fg"].shape == (64, 64, 3) and out["bg"].shape == (64, 64, 3)
    flat = np.full((200, 200), 255, np.float32)
    out = RandomCrop(64)(_crop_sample(flat), np.random.default_rng(0))
    assert out["trimap"].shape == (64, 64) and np.all(out["trimap"] == 255)


def test_affine_matrix_flip_and_rotation() -> None:
    center = (10.0, 20.0)
    identity = affine_matrix(center, 0.0, (1.0, 1.0), 0.0, (1.0, 1.0))
    np.testing.assert_allclose(identity, [[1, 0, 0], [0, 1, 0]], atol=1e-12)
    mirror = affine_matrix(center, 0.0, (1.0, 1.0), 0.0, (-1.0, 1.0))
    np.testing.assert_allclose(mirror @ [13.0, 5.0, 1.0], [7.0, 5.0], atol=1e-12)  # x -> 2cx - x
    quarter = affine_matrix(center, 90.0, (2.0, 2.0), 0.0, (1.0, 1.0))
    np.testing.assert_allclose(quarter @ [11.0, 20.0, 1.0], [10.0, 22.0], atol=1e-12)
    # The official code builds the inverse; for shear s, angle a the linear part inverts to
    # [[cos a, sin(a + s)], [-sin a, cos(a + s)]] / cos(s) (scale 1, no flip).
    a, s = math.radians(12.0), math.radians(7.0)
    inverse = cv2.invertAffineTransform(affine_matrix(center, 12.0, (1.0, 1.0), 7.0, (1.0, 1.0)))
    expected = np.array([[math.cos(a), math.sin(a + s)], [-math.sin(a), math.cos(a + s)]])
    np.testing.assert_allclose(inverse[:, :2], expected / math.cos(s), atol=1e-12)


def test_random_affine_keeps_size_and_rotates_only_large_images() -> None:
    rng = np.random.default_rng(0)
    fg = rng.integers(0, 255, (50, 70, 3), np.uint8)
    out = RandomAffine()({"fg": fg, "alpha": np.ones((50, 70), np.float32)}, rng)
    assert out["fg"].shape == (50, 70, 3) and out["alpha"].shape == (50, 70)
    # Without scale, shear or flip, a small image is left as is (no rotation below 1024 px).
    still = RandomAffine(scale=(1.0, 1.0), shear=0.0, flip_prob=0.0)
    alpha = _soft_disc(100)
    out = still({"fg": fg[:, :50].copy(), "alpha": alpha.copy()}, rng)
    np.testing.assert_allclose(out["alpha"][5:-5, 5:-5], alpha[5:-5, 5:-5], atol=0.05)


def test_jitter_skips_empty_alpha_and_stays_in_range() -> None:
    rng = np.random.default_rng(0)
    fg = rng.integers(0, 255, (32, 32, 3), np.uint8)
    empty = RandomJitter()({"fg": fg, "alpha": np.zeros((32, 32), np.float32)}, rng)
    assert empty["fg"] is fg
    out = RandomJitter()({"fg": fg, "alpha": np.ones((32, 32), np.float32)}, rng)
    assert out["fg"].dtype == np.float32 and out["fg"].min() >= 0 and out["fg"].max() <= 255.01


def test_two_foreground_alpha_rule_and_composite_clipping() -> None:
    rng = np.random.default_rng(0)
    fg = np.full((8, 8, 3), 200, np.uint8)
    half = np.full((8, 8), 0.5, np.float32)
    merged_fg, merged_alpha = composite_two_foregrounds(fg, half, fg // 2, half.copy(), rng)
    np.testing.assert_allclose(merged_alpha, 0.75)  # two 50% layers make 75%
    assert merged_fg.dtype == np.uint8 and np.all(merged_fg == 150)
    sample = {"fg": fg, "bg": np.zeros_like(fg), "alpha": np.full((8, 8), 1.2, np.float32)}
    out = Composite()(sample, rng)
    assert out["alpha"].max() == 1.0 and np.allclose(out["image"], 200)


# --- image reading -----------------------------------------------------------------------------


def test_read_conversions(tmp_path: Path) -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    assert read_rgb(tmp_path / "gray.png").shape == (3, 4, 3)
    np.testing.assert_allclose(read_rgb(tmp_path / "gray.png")[:, :, 1], gray / 255, atol=1e-6)
    bgra = np.zeros((3, 4, 4), np.uint8)
    bgra[..., 0], bgra[..., 3] = 255, 7  # blue, nearly transparent
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    np.testing.assert_allclose(read_rgb(tmp_path / "rgba.png")[0, 0], [0, 0, 1])  # RGB order
    deep = np.full((3, 4), 65535 // 2, np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    np.testing.assert_allclose(read_gray(tmp_path / "deep.png"), 0.5, atol=1e-4)
    cv2.imwrite(str(tmp_path / "tri3.png"), np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_allclose(read_gray(tmp_path / "tri3.png"), gray / 255, atol=1e-6)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(UnreadableImageError, match="broken.png"):
        read_rgb(tmp_path / "broken.png")
    with pytest.raises(UnreadableImageError, match="nothere.png"):
        read_gray(tmp_path / "nothere.png")


def _jpeg_with_orientation(path: Path, image: np.ndarray, orientation: int) -> None:
    exif = Image.Image.getexif(Image.new("RGB", (1, 1)))
    exif[ORIENTATION_TAG] = orientation
    Image.fromarray(image).save(path, exif=exif.tobytes(), quality=100)


def test_training_files_are_read_as_the_official_cv2_imread(tmp_path: Path) -> None:
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :10] = (255, 0, 0)  # a red band on the left (RGB)
    _jpeg_with_orientation(tmp_path / "rotated.jpg", image, orientation=6)  # 90 deg clockwise
    official_fg = cv2.imread(str(tmp_path / "rotated.jpg"))  # BGR, orientation applied
    official_alpha = cv2.imread(str(tmp_path / "rotated.jpg"), 0).astype(np.float32) / 255
    fg, alpha = read_train_rgb(tmp_path / "rotated.jpg"), read_train_alpha(tmp_path / "rotated.jpg")
    assert fg.shape == (40, 20, 3) and fg.dtype == np.uint8
    assert np.array_equal(fg, official_fg[:, :, ::-1])  # RGB
    assert fg[2, 10, 0] > 200 and fg[-3, 10, 0] < 50  # the band now on top
    assert alpha.dtype == np.float32 and np.array_equal(alpha, official_alpha)
    assert read_rgb(tmp_path / "rotated.jpg").shape == (20, 40, 3)  # inference: as stored
    deep = (np.arange(24, dtype=np.uint16).reshape(4, 6) * 2000)[:, :, None].repeat(3, axis=2)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    assert np.array_equal(
        read_train_rgb(tmp_path / "deep.png"), cv2.imread(str(tmp_path / "deep.png"))
    )
    with pytest.raises(UnreadableImageError, match="nothere.png"):
        read_train_rgb(tmp_path / "nothere.png")


def test_read_map_u8_gives_the_8bit_levels_of_16bit_files_and_refuses_colour(
    tmp_path: Path,
) -> None:
    levels = np.array([[0, 1, 127, 128], [129, 200, 254, 255]], np.uint8)
    cv2.imwrite(str(tmp_path / "gray.png"), levels)
    cv2.imwrite(str(tmp_path / "gray_as_rgb.png"), np.dstack([levels] * 3))
    # 257 v + 128 lies just below the midpoint to the next level: round((257 v + 128) / 257) = v
    deep = levels.astype(np.uint16) * 257 + np.where(levels < 255, 128, 0).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    colour = np.dstack([np.full_like(levels, 255), np.zeros_like(levels), levels])  # BGR
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    for name in ("gray", "gray_as_rgb", "deep"):
        read = read_map_u8(tmp_path / f"{name}.png")
        assert read.dtype == np.uint8 and np.array_equal(read, levels), name
    with pytest.raises(BadSampleError, match="colour.png.*colour image"):
        read_map_u8(tmp_path / "colour.png")


def test_read_trimap_takes_8bit_single_channel_maps_only(tmp_path: Path) -> None:
    trimap = np.array([[0, 128], [255, 128]], np.uint8)
    write_image(tmp_path / "trimap.png", trimap)
    write_image(tmp_path / "trimap_rgb.png", np.dstack([trimap] * 3))
    for name in ("trimap", "trimap_rgb"):
        expected = trimap.astype(np.float32) / np.float32(255)  # file value / 255, not re-quantized
        np.testing.assert_array_equal(read_trimap(tmp_path / f"{name}.png"), expected)
    write_image(tmp_path / "deep.png", trimap.astype(np.uint16) * 257)
    with pytest.raises(BadSampleError, match="8-bit"):
        read_trimap(tmp_path / "deep.png")
    write_image(tmp_path / "colour.png", np.dstack([trimap, trimap, 255 - trimap]))
    with pytest.raises(BadSampleError, match="single-channel"):
        read_trimap(tmp_path / "colour.png")


def test_duplicate_stems_are_rejected(tmp_path: Path) -> None:
    for name in ("a.jpg", "a.png"):
        cv2.imwrite(str(tmp_path / name), np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="a.jpg and a.png"):
        list_images_by_stem(tmp_path)


# --- test-set readers --------------------------------------------------------------------------


def _make_test_folder(
    root: Path, image_dir: str, trimap_dir: str, alpha_dir: str | None, stems=("x", "y")
) -> Path:
    rng = np.random.default_rng(0)
    for stem in stems:
        (root / image_dir).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(
            str(root / image_dir / f"{stem}.jpg"), rng.integers(0, 255, (12, 16, 3), np.uint8)
        )
        (root / trimap_dir).mkdir(parents=True, exist_ok=True)
        trimap = np.zeros((12, 16), np.uint8)
        trimap[:, 5:10], trimap[:, 10:] = 128, 255
        cv2.imwrite(str(root / trimap_dir / f"{stem}.png"), trimap)
        if alpha_dir is not None:
            (root / alpha_dir).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / alpha_dir / f"{stem}.png"), trimap)
    return root


@pytest.mark.parametrize(
    ("dirs", "layout"),
    [
        (("merged", "trimaps", "alpha_copy"), "composition-1k"),
        (("merged", "trimaps", "alpha"), "composition-1k"),
        (("original", "trimap", "mask"), "aim-500"),
        (("Image", "Trimap", "GT"), "distinctions-646"),
        (("images", "trimaps", "alphas"), "generic"),
        (("images", "trimaps", None), "generic"),
    ],
)
def test_detect_each_layout(tmp_path: Path, dirs: tuple, layout: str) -> None:
    root = _make_test_folder(tmp_path, *dirs)
    assert detect_layout(root).name == layout
    test_set = scan_test_set(root)
    assert [item.name for item in test_set.items] == ["x", "y"]
    has_alpha = dirs[2] is not None
    assert all((item.alpha_path is not None) == has_alpha for item in test_set.items)
    assert not test_set.missing_trimaps and not test_set.missing_alphas


def test_uhrim_is_read_as_composition_layout(tmp_path: Path) -> None:
    root = _make_test_folder(tmp_path, "merged", "trimaps", "alpha_copy")
    assert scan_test_set(root, layout="uhrim").layout.name == "uhrim"
    with pytest.raises(ValueError, match="unknown test-set layout"):
        scan_test_set(root, layout="nope")


def test_unknown_layout_lists_supported(tmp_path: Path) -> None:
    (tmp_path / "pictures").mkdir()
    with pytest.raises(ValueError, match="pictures/") as info:
        detect_layout(tmp_path)
    for name in ("composition-1k", "aim-500", "distinctions-646", "generic", "uhrim"):
        assert name in str(info.value)


def test_missing_trimap_and_alpha_are_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _make_test_folder(tmp_path, "merged", "trimaps", "alpha_copy", stems=("a", "b", "c"))
    (root / "trimaps" / "b.png").unlink()
    (root / "alpha_copy" / "c.png").unlink()
    with caplog.at_level(logging.WARNING, logger="data.readers"):
        test_set = scan_test_set(root)
    assert [item.name for item in test_set.items] == ["a", "c"]
    assert test_set.missing_trimaps == [root / "merged" / "b.jpg"]
    assert test_set.missing_alphas == [root / "merged" / "c.jpg"]
    assert "b.jpg" in caplog.text and "c.jpg" in caplog.text


def test_eval_dataset_values_and_bad_items(tmp_path: Path) -> None:
    root = _make_test_folder(tmp_path, "images", "trimaps", "alphas")
    dataset = MattingEvalDataset(root)
    sample = dataset[0]
    assert sample["image"].shape == (3, 12, 16) and sample["image"].dtype == torch.uint8
    assert sample["trimap"].shape == (1, 12, 16) and sample["alpha"].shape == (1, 12, 16)
    assert sample["trimap"].dtype == sample["alpha"].dtype == torch.uint8
    levels = torch.tensor([0, 128, 255], dtype=torch.uint8)
    assert torch.equal(sample["trimap"].unique(), levels)  # the file's levels
    assert sample["image_name"] == "x.jpg"
    batch = next(iter(DataLoader(dataset, batch_size=1)))
    assert batch["image"].shape == (1, 3, 12, 16)

    cv2.imwrite(str(root / "trimaps" / "y.png"), np.zeros((5, 5), np.uint8))
    with pytest.raises(BadSampleError, match="y.png") as info:
        dataset[1]
    assert info.value.path == root / "trimaps" / "y.png"
    (root / "images" / "x.jpg").write_bytes(b"")
    with pytest.raises(UnreadableImageError, match="x.jpg"):
        dataset[0]


def test_eval_dataset_refuses_other_trimap_values_unless_it_snaps_them(tmp_path: Path) -> None:
    root = _make_test_folder(tmp_path, "images", "trimaps", "alphas")
    trimap_path = root / "trimaps" / "x.png"
    trimap = cv2.imread(str(trimap_path), cv2.IMREAD_GRAYSCALE)
    trimap[0, 0] = 100  # nearest to 128
    cv2.imwrite(str(trimap_path), trimap)
    with pytest.raises(BadSampleError, match="--snap-trimap") as info:
        MattingEvalDataset(root)[0]
    assert info.value.path == trimap_path
    snapped = MattingEvalDataset(root, snap_trimap=True)[0]["trimap"][0].numpy()
    trimap[0, 0] = 128
    np.testing.assert_array_equal(snapped, trimap)
