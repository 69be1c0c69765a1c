"""Video: clips in, temporally stable mattes out (``inference.py --video``, docs/video.md).

- ``io.py``: clips read with PyAV (video files) or from folders of frames; ``encode.py``: the
  output videos; ``frames.py``: the per-frame files of a clip;
- ``guidance.py``: each frame's trimap or mask; ``flow.py``: DIS optical flow and its
  forward-backward check; ``propagation.py``: keyframes carried to the frames without guidance
  by flow, ``sam2_propagation.py``: by SAM 2's video model, ``propagators.py``: the choices;
  ``temporal.py``: the flow-guided temporal blend;
- ``pipeline.py``: one clip, streamed and resumable; ``runner.py``: the clips of a run, sharded;
  ``arguments.py``: the command-line options; ``benchmark.py``: speed and memory measurements.
"""

from predictor.video.arguments import add_video_arguments, check_video_arguments
from predictor.video.io import open_clip
from predictor.video.pipeline import VideoSettings, matte_clip
from predictor.video.runner import run_video_command

__all__ = [
    "VideoSettings",
    "add_video_arguments",
    "check_video_arguments",
    "matte_clip",
    "open_clip",
    "run_video_command",
]
