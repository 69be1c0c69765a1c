"""Datasets, augmentations and test-set readers."""

# First: bounds OpenCV's decoders before anything imports cv2 (see data/pixel_limits.py).
from data import pixel_limits
from data.dim_dataset import DIMTrainDataset
from data.eval_dataset import MattingEvalDataset
from data.image_io import (
    IMAGE_EXTENSIONS,
    BadSampleError,
    UnreadableImageError,
    read_gray,
    read_map_u8,
    read_rgb,
    read_trimap,
    write_image,
)
from data.readers import (
    FOLDER_LAYOUTS,
    FolderLayout,
    MattingItem,
    MattingTestSet,
    detect_layout,
    scan_test_set,
)
from data.seeding import SampleKey, init_worker, sample_generator
from data.transforms import train_transforms

__all__ = [
    "FOLDER_LAYOUTS",
    "IMAGE_EXTENSIONS",
    "BadSampleError",
    "DIMTrainDataset",
    "FolderLayout",
    "MattingEvalDataset",
    "MattingItem",
    "MattingTestSet",
    "SampleKey",
    "UnreadableImageError",
    "detect_layout",
    "init_worker",
    "pixel_limits",
    "read_gray",
    "read_map_u8",
    "read_rgb",
    "read_trimap",
    "scan_test_set",
    "sample_generator",
    "train_transforms",
    "write_image",
]
