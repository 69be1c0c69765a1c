"""Shared test helpers: paths of the repository and of ../shared, a tiny MEMatte for fast CPU tests,
random batches, the golden key manifests, and a crafted checkpoint whose unpickling runs code."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import torch
from torch import nn

from modeling import DetailCapture, MattingCriterion, MEMatte, ViT
from modeling.meta_arch.mematte import BACKBONE_PREFIX, TEACHER_PREFIX

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
