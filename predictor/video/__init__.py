"""Video: clips in, temporally stable mattes out (``inference.py --video``, docs/video.md).

- ``io.py``: clips read with PyAV (video files) or from folders of frames; ``kinds.py``: the
  kinds of output video, ``encode.py``: their encoding; ``frames.py``: a clip's per-frame files;
- ``guidance.py``: each frame's trimap or mask; ``flow.py``: DIS optical flow and its
  forward-backward check; ``propagation.py``: keyframes carried to the frames without guidance
  by flow, ``sam2_propagation.py``: by SAM 2's video model, ``propagators.py``: the choices;
  ``temporal.py``: the flow-guided temporal blend;
- ``pipeline.py``: one clip, streamed and resumable; ``runner.py``: the clips of a run, sharded;
  ``arguments.py``: the command-line options; ``benchmark.py``: speed and memory measurements.
"""

from utils.lazy import lazy_exports

__all__ = [
    "VideoSettings",
    "add_video_arguments",
    "check_video_arguments",
    "matte_clip",
    "open_clip",
    "run_video_command",
]

# Imported on first use: the options' module imports without PyAV and PyTorch.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "VideoSettings": "predictor.video.pipeline",
        "add_video_arguments": "predictor.video.arguments",
        "check_video_arguments": "predictor.video.arguments",
        "matte_clip": "predictor.video.pipeline",
        "open_clip": "predictor.video.io",
        "run_video_command": "predictor.video.runner",
    },
)
