"""Shared test helpers: paths of the repository and of ../shared, a tiny MEMatte for fast CPU tests,
random batches, the golden key manifests, a crafted checkpoint whose unpickling runs code, tiny
random SAM-family segmenters saved as transformers checkpoints, and the web demo served in a
subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from torch import nn

from modeling import DetailCapture, MattingCriterion, MEMatte, ViT
from modeling.meta_arch.mematte import BACKBONE_PREFIX, TEACHER_PREFIX
from predictor.prompts import Prompts

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
SHARED_DIR = REPO_ROOT.parent / "shared"
GOLDEN_DIR = SHARED_DIR / "golden"
CONFIG_S = REPO_ROOT / "configs" / "MEMatte_S_topk0.25_win_global_long.py"
CONFIG_B = REPO_ROOT / "configs" / "MEMatte_B_topk0.25_win_global_long.py"
# The tiny demo model and the demo test set that ship with the repository.
TINY_CONFIG = REPO_ROOT / "configs" / "tiny" / "MEMatte_tiny_synthetic.py"
DEMO_CHECKPOINT = REPO_ROOT / "pretrained" / "demo" / "MEMatte_tiny_synthetic.pth"
DEMO_DIR = REPO_ROOT / "demo"
DEMO_NAMES = ("test_000", "test_001", "test_002", "test_003")
# Config overrides that build the golden small reference model from the S config.
SMALL_MODEL_OVERRIDES = [
    "model.backbone.embed_dim=96",
    "model.backbone.num_heads=2",
    "model.decoder.in_chans=96",
    "model.teacher_backbone=None",
]

# Tiny model: 64-d, 4 blocks, 2 heads, 4x4 windows in blocks 0 and 2, routed blocks 1 and 3.
TINY_DIM, TINY_DEPTH, TINY_HEADS, TINY_WINDOW = 64, 4, 2, 4
TINY_WINDOW_BLOCKS = (0, 2)
TINY_RESIDUAL_BLOCKS = (1, 3)
TINY_IMG = 64


def tiny_vit(use_routing: bool = True, **overrides) -> ViT:
    kwargs = dict(
        in_chans=4,
        img_size=TINY_IMG,
        patch_size=16,
        embed_dim=TINY_DIM,
        depth=TINY_DEPTH,
        num_heads=TINY_HEADS,
        window_size=TINY_WINDOW,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        window_block_indexes=TINY_WINDOW_BLOCKS,
        residual_block_indexes=TINY_RESIDUAL_BLOCKS,
        use_rel_pos=True,
        use_routing=use_routing,
        topk=0.25,
    )
    kwargs.update(overrides)
    return ViT(**kwargs)


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter (incl. zero-initialised norms and rel-pos) non-trivial values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.ndim == 1:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.ndim >= 2 and "rel_pos" not in name and "pos_embed" not in name:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def build_tiny_mematte(with_teacher: bool = False, seed: int = 0) -> MEMatte:
    torch.manual_seed(seed)
    model = MEMatte(
        backbone=tiny_vit(),
        teacher_backbone=tiny_vit(use_routing=False) if with_teacher else None,
        decoder=DetailCapture(
            in_chans=TINY_DIM, convstream_out=(8, 16, 32), fusion_out=(32, 16, 16, 8)
        ),
        criterion=MattingCriterion(),
        pixel_mean=[0.485, 0.456, 0.406],
        pixel_std=[0.229, 0.224, 0.225],
        distill=with_teacher,
    )
    randomize_(model, seed)
    if with_teacher:
        model.teacher_backbone.requires_grad_(False)
    return model


def make_batch(batch: int, height: int, width: int, seed: int = 0, train: bool = False) -> dict:
    """Random image-like inputs with a {0, 0.5, 1} trimap band; training batches add alpha/fg/bg."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, height, width, generator=gen)
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    radius = ((yy - height / 2) ** 2 + (xx - width / 2) ** 2).sqrt()[None, None]
    radius = radius * (0.8 + 0.4 * torch.rand(batch, 1, 1, 1, generator=gen))
    alpha = (1 - (radius - height / 4).clamp(0, 4) / 4).expand(batch, 1, height, width)
    trimap = torch.full_like(alpha, 0.5)
    trimap[alpha == 0] = 0.0
    trimap[alpha == 1] = 1.0
    if not train:
        return {"image": image, "trimap": trimap}
    return {
        "image": image,
        "trimap": trimap,
        "alpha": alpha.contiguous(),
        "fg": image.clone(),
        "bg": torch.rand(batch, 3, height, width, generator=gen),
    }


def read_manifest(path: Path) -> dict[str, list[int]]:
    """A key manifest of ``../shared/golden`` (``key [d0,d1,...]`` per line) as key -> shape."""
    entries = {}
    for line in path.read_text().splitlines():
        key, shape = line.split(" ", 1)
        entries[key] = [int(s) for s in shape.strip("[]").split(",") if s]
    return entries


def official_vitmatte_shapes(manifest: Path) -> dict[str, list[int]]:
    """ViTMatte's state dict from a MEMatte manifest: the teacher's entries as ``backbone.*`` and
    the decoder's, i.e. what the official ``ViTMatte_{S,B}_Com.pth`` hold."""
    shapes = {}
    for key, shape in read_manifest(manifest).items():
        if key.startswith(TEACHER_PREFIX):
            shapes[BACKBONE_PREFIX + key.removeprefix(TEACHER_PREFIX)] = shape
        elif key.startswith("decoder."):
            shapes[key] = shape
    return shapes


class _CreateMarker:
    """Pickles as a call of ``os.mkdir(marker)``: unpickling it with ``weights_only=False``
    creates the folder, which shows that code stored in the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (os.mkdir, (self.marker,))


def save_untrusted_checkpoint(path: Path, state_dict: dict, marker: Path) -> None:
    """A checkpoint ``{"model": state_dict, "payload": ...}`` whose payload creates ``marker``."""
    torch.save({"model": state_dict, "payload": _CreateMarker(marker)}, path)


# A sitecustomize module that makes importing some packages (and their submodules) fail.
_BLOCKING_SITE = """import sys

BLOCKED = {blocked!r}


class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} cannot be imported in this process (a test without it)")
        return None


sys.meta_path.insert(0, _Blocked())
"""


def run_without_torch(
    args: list[str], folder: Path, timeout: float = 600, blocked: tuple[str, ...] = ("torch",)
) -> subprocess.CompletedProcess:
    """``python args`` from the repository root in a process where importing the ``blocked``
    packages (PyTorch by default) fails: a ``sitecustomize`` written to ``folder`` (put first on
    PYTHONPATH) refuses them."""
    (folder / "sitecustomize.py").write_text(_BLOCKING_SITE.format(blocked=tuple(sorted(blocked))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(REPO_ROOT)])}
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# Tiny SAM-family segmenters: 256 px input (16 x 16 embeddings, 64 x 64 low-resolution masks),
# 32-d, random weights. What transformers' SAM, SAM-HQ and SAM 2 classes build from a config.
SEGMENTER_FAMILIES = ("sam", "sam_hq", "sam2")
SEGMENTER_SIZE = 256
_SEGMENTER_DIM = 32
_PROMPT = {"hidden_size": _SEGMENTER_DIM, "image_size": SEGMENTER_SIZE, "patch_size": 16}
_DECODER = {
    "hidden_size": _SEGMENTER_DIM,
    "mlp_dim": 2 * _SEGMENTER_DIM,
    "num_attention_heads": 2,
    "iou_head_hidden_dim": _SEGMENTER_DIM,
}
_SAM_VISION = {
    "hidden_size": _SEGMENTER_DIM,
    "output_channels": _SEGMENTER_DIM,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": SEGMENTER_SIZE,
    "window_size": 4,
    "global_attn_indexes": [1],
    "num_pos_feats": _SEGMENTER_DIM // 2,
}
_SAM2_VISION = {
    "backbone_config": {
        "model_type": "sam2_hiera_det_model",
        "hidden_size": 8,
        "image_size": [SEGMENTER_SIZE, SEGMENTER_SIZE],
        "blocks_per_stage": [1, 1, 2, 1],
        "embed_dim_per_stage": [8, 16, 32, 64],
        "num_attention_heads_per_stage": [1, 1, 1, 1],
        "window_size_per_stage": [4, 4, 4, 4],
        "global_attention_blocks": [3],  # not a stage's first block (those pool the queries)
    },
    "backbone_channel_list": [64, 32, 16, 8],
    "backbone_feature_sizes": [[SEGMENTER_SIZE // s] * 2 for s in (4, 8, 16)],
    "fpn_hidden_size": _SEGMENTER_DIM,
}


def save_tiny_segmenter(family: str, folder: Path, seed: int = 0) -> Path:
    """A tiny random SAM (``"sam"``), SAM-HQ (``"sam_hq"``) or SAM 2 (``"sam2"``) model and its
    processor, saved with ``save_pretrained`` into ``folder``; returns ``folder``."""
    mask_side = SEGMENTER_SIZE // 4
    torch.manual_seed(seed)  # buffers (SAM's random positional features) are drawn at build
    if family == "sam2":
        config = transformers.Sam2Config(
            vision_config=_SAM2_VISION, prompt_encoder_config=_PROMPT, mask_decoder_config=_DECODER
        )
        model = transformers.Sam2Model(config)
        processor = transformers.Sam2Processor(
            transformers.Sam2ImageProcessor(
                size={"height": SEGMENTER_SIZE, "width": SEGMENTER_SIZE},
                mask_size={"height": mask_side, "width": mask_side},
            )
        )
    else:
        hq = family == "sam_hq"
        decoder = {**_DECODER, "vit_dim": _SEGMENTER_DIM} if hq else _DECODER
        config_class, model_class, processor_class = (
            (transformers.SamHQConfig, transformers.SamHQModel, transformers.SamHQProcessor)
            if hq
            else (transformers.SamConfig, transformers.SamModel, transformers.SamProcessor)
        )
        config = config_class(
            vision_config=_SAM_VISION, prompt_encoder_config=_PROMPT, mask_decoder_config=decoder
        )
        model = model_class(config)
        processor = processor_class(
            transformers.SamImageProcessor(
                size={"longest_edge": SEGMENTER_SIZE},
                pad_size={"height": SEGMENTER_SIZE, "width": SEGMENTER_SIZE},
                mask_size={"longest_edge": mask_side},
                mask_pad_size={"height": mask_side, "width": mask_side},
            )
        )
    randomize_(model, seed)  # the default init leaves SAM's encoder near zero
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# SAM 2's video model: transformers fixes the memory's width at 64 channels and needs the model's
# width to be a multiple of it, larger (its object pointers are split into memory-width tokens).
_VIDEO_DIM = 128
_MEMORY_DIM = 64
# A few memory frames and object pointers, so that tests of the session's trimming see it full.
TINY_VIDEO_MEMORY = {"num_maskmem": 3, "max_object_pointers_in_encoder": 4}
# Logit of "the object is in the frame" added by the object-score head: random weights would
# otherwise often declare the object gone, and every propagated mask empty.
_OBJECT_SCORE_BIAS = 10.0


def save_tiny_video_segmenter(folder: Path, seed: int = 0) -> Path:
    """A tiny random SAM 2 *video* model (``Sam2VideoModel``: the image part of
    :func:`save_tiny_segmenter`'s SAM 2 at the same 256 px input, with the memory attention,
    memory encoder and object pointers) and its ``Sam2VideoProcessor``, saved with
    ``save_pretrained`` into ``folder``; returns ``folder``."""
    torch.manual_seed(seed)  # transformers' own init: masks of a few tenths of the frame
    wide = {"hidden_size": _VIDEO_DIM}
    config = transformers.Sam2VideoConfig(
        vision_config={**_SAM2_VISION, "fpn_hidden_size": _VIDEO_DIM},
        prompt_encoder_config={**_PROMPT, **wide},
        mask_decoder_config={**_DECODER, **wide},
        image_size=SEGMENTER_SIZE,
        memory_attention_hidden_size=_VIDEO_DIM,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=_MEMORY_DIM,
        memory_attention_rope_feat_sizes=[SEGMENTER_SIZE // 16] * 2,
        memory_encoder_hidden_size=_VIDEO_DIM,
        memory_encoder_output_channels=_MEMORY_DIM,
        mask_downsampler_embed_dim=_VIDEO_DIM,
        memory_fuser_embed_dim=_VIDEO_DIM,
        memory_fuser_intermediate_dim=_MEMORY_DIM,
        **TINY_VIDEO_MEMORY,
    )
    model = transformers.Sam2VideoModel(config)
    with torch.no_grad():
        model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(_OBJECT_SCORE_BIAS)
    size = {"height": SEGMENTER_SIZE, "width": SEGMENTER_SIZE}
    mask_side = SEGMENTER_SIZE // 4
    processor = transformers.Sam2VideoProcessor(
        transformers.Sam2ImageProcessor(
            size=size, mask_size={"height": mask_side, "width": mask_side}
        ),
        transformers.Sam2VideoVideoProcessor(size=size),
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def reference_sam_mask(
    folder: Path,
    image: Path,
    box: tuple[float, ...] | None = None,
    points: tuple[tuple[float, float, int], ...] = (),
) -> np.ndarray:
    """The mask transformers' own processor and model give for a box and (x, y, label) points
    under the documented rule: one point alone -> the best of three candidates by predicted IoU,
    else the single-mask output; every candidate post-processed by the processor, then picked.

    Returns:
        ``[H, W]`` bool.
    """
    model = transformers.AutoModel.from_pretrained(folder).eval()
    processor = transformers.AutoProcessor.from_pretrained(folder)
    sam2 = model.config.model_type == "sam2"
    kwargs = {}
    if points:
        xy, labels = [[[x, y] for x, y, _ in points]], [[label for _, _, label in points]]
        kwargs["input_points"] = [xy] if sam2 else xy  # SAM 2 nests one level deeper
        kwargs["input_labels"] = [labels] if sam2 else labels
    if box is not None:
        kwargs["input_boxes"] = [[list(box)]]
    inputs = processor(images=Image.open(image).convert("RGB"), return_tensors="pt", **kwargs)
    with torch.no_grad():
        outputs = model(**inputs, multimask_output=box is None and len(points) == 1)
    sizes = [inputs["original_sizes"]] + ([] if sam2 else [inputs["reshaped_input_sizes"]])
    masks = processor.post_process_masks(outputs.pred_masks, *sizes)[0]  # [1, C, H, W]
    return masks[0, outputs.iou_scores[0, 0].argmax()].numpy()


def reference_sam2_video_masks(
    folder: Path,
    images: list[np.ndarray],
    prompts: Prompts | None = None,
    masks: dict[int, np.ndarray] | None = None,
) -> list[np.ndarray]:
    """transformers' streaming video API on ``images``: a session fed one frame at a time, the
    prompts added on frame 0, each keyframe's mask on its frame, the processor's binarised
    ``post_process_masks`` at the frame's size (``[H, W]`` bool per frame)."""
    model = transformers.Sam2VideoModel.from_pretrained(folder).eval()
    processor = transformers.Sam2VideoProcessor.from_pretrained(folder)
    session = processor.init_video_session(inference_device="cpu", dtype=torch.float32)
    results = []
    for index, image in enumerate(images):
        inputs = processor(images=image, return_tensors="pt")
        if index == 0 and prompts is not None:
            kwargs = {"original_size": inputs.original_sizes[0]}
            if prompts.points:
                kwargs["input_points"] = [[[[p.x, p.y] for p in prompts.points]]]
                kwargs["input_labels"] = [[[p.label for p in prompts.points]]]
            if prompts.box is not None:
                kwargs["input_boxes"] = [[list(prompts.box)]]
            processor.add_inputs_to_inference_session(session, 0, obj_ids=1, **kwargs)
        elif masks and index in masks:
            processor.add_inputs_to_inference_session(
                session, index, obj_ids=1, input_masks=masks[index]
            )
        with torch.inference_mode():
            output = model(inference_session=session, frame=inputs.pixel_values[0])
        mask = processor.post_process_masks([output.pred_masks], inputs.original_sizes)[0]
        results.append(mask[0, 0].numpy())
    return results


WEB_DEMO_START_SECONDS = 180


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def served_web_demo(root: Path, *args: str) -> Iterator[str]:
    """tools/web_demo.py on the demo model and the CPU, with ``args``, in a subprocess on a free
    port, run from ``root`` (Gradio's files under it, its output in ``root / "server.log"``, the
    hub offline): its URL while it serves; stopped with SIGINT, as Ctrl-C stops it."""
    port = _free_port()
    env = {
        **os.environ,
        "GRADIO_TEMP_DIR": str(root / "gradio"),
        "GRADIO_ANALYTICS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
    }
    command = [sys.executable, str(REPO_ROOT / "tools" / "web_demo.py")]
    command += ["--config-file", str(TINY_CONFIG), "--checkpoint", str(DEMO_CHECKPOINT)]
    command += ["--device", "cpu", "--port", str(port), *args]
    log = root / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
            # A test run started in the background (`cmd &` in a script) ignores SIGINT, and a
            # child inherits that: Ctrl-C's default action, so that the SIGINT below stops it.
            preexec_fn=_default_sigint,
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + WEB_DEMO_START_SECONDS
    while True:
        if process.poll() is not None:
            pytest.fail(f"the web demo exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the web demo did not start:\n{log.read_text()}")
            time.sleep(0.5)
    yield url
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"the web demo did not stop on SIGINT:\n{log.read_text()}")


KILL_WAIT_SECONDS = 300


def kill_when_written(command: list[str], folder: Path, count: int, env=None) -> int:
    """Run ``command`` and SIGKILL it once ``folder`` holds ``count`` PNGs (or after
    :data:`KILL_WAIT_SECONDS`); returns how many PNGs it left there."""
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    deadline = time.monotonic() + KILL_WAIT_SECONDS
    while time.monotonic() < deadline and len(list(folder.glob("*.png"))) < count:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return len(list(folder.glob("*.png")))


def write_test_video(
    path: Path,
    frames: list,
    *,
    codec: str = "ffv1",
    pixel_format: str = "bgr0",
    rate: int = 25,
    pts: list[int] | None = None,
    time_base=None,
    rotation: float | None = None,
    options: dict | None = None,
) -> None:
    """Encode ``[H, W, 3]`` uint8 RGB frames with PyAV (lossless FFV1 by default), optionally with
    given timestamps (``pts`` in ``time_base``) and display-rotation metadata."""
    import av

    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pixel_format
        if time_base is not None:
            stream.codec_context.time_base = time_base
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[index], time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
