"""Datasets, augmentations, test-set readers, and the image readers and writers.

The names below are imported on first use, so that the readers (``data.image_io``,
``data.readers``, ``data.trimap``) import without PyTorch: the onnxruntime predictor uses them.
"""

# First: bounds OpenCV's decoders before anything imports cv2 (see data/pixel_limits.py).
from data import pixel_limits
from utils.lazy import lazy_exports

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

_HOMES = {
    "DIMTrainDataset": "data.dim_dataset",
    "MattingEvalDataset": "data.eval_dataset",
    "train_transforms": "data.transforms",
    **dict.fromkeys(("SampleKey", "init_worker", "sample_generator"), "data.seeding"),
    **dict.fromkeys(
        (
            "FOLDER_LAYOUTS",
            "FolderLayout",
            "MattingItem",
            "MattingTestSet",
            "detect_layout",
            "scan_test_set",
        ),
        "data.readers",
    ),
    **dict.fromkeys(
        (
            "IMAGE_EXTENSIONS",
            "BadSampleError",
            "UnreadableImageError",
            "read_gray",
            "read_map_u8",
            "read_rgb",
            "read_trimap",
            "write_image",
        ),
        "data.image_io",
    ),
}
__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
