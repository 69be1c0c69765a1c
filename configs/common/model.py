"""Base MEMatte model (ViT-S width); variant files set the window layout and routing target.

Mirrors the official ``configs/common/model.py``: the student backbone, the frozen ViTMatte
teacher used for feature distillation, the detail-capture decoder and the matting losses. The
teacher and the decoder width follow the student backbone (OmegaConf interpolation), so a variant
sets a width or a layout once.
"""

from functools import partial

from torch import nn

from engine.config import LazyCall as L
from modeling import DetailCapture, MattingCriterion, MEMatte, ViT

# Constructor arguments the frozen teacher shares with the student: it is the same ViT with
# routing off (and so with rel-pos in its global blocks too, as the official ViT_Teacher).
_SHARED_VIT_ARGS = (
    "in_chans",
    "img_size",
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "drop_path_rate",
    "window_size",
    "mlp_ratio",
    "qkv_bias",
    "norm_layer",
    "window_block_indexes",
    "residual_block_indexes",
    "use_rel_pos",
)

model = L(MEMatte)(
    backbone=L(ViT)(
        in_chans=4,  # RGB + trimap
        img_size=512,
        patch_size=16,
        embed_dim=384,  # ViT-S
        depth=12,
        num_heads=6,
        drop_path_rate=0.0,
        window_size=14,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        window_block_indexes=[],
        residual_block_indexes=[2, 5, 8, 11],
        use_rel_pos=True,
        use_routing=True,
        topk=1.0,
        max_number_token=18500,  # official default cap of tokens per global attention
    ),
    teacher_backbone=L(ViT)(
        **{name: f"${{..backbone.{name}}}" for name in _SHARED_VIT_ARGS}, use_routing=False
    ),
    criterion=L(MattingCriterion)(
        losses=["unknown_l1_loss", "known_l1_loss", "loss_pha_laplacian", "loss_gradient_penalty"]
    ),
    # ImageNet statistics, in 0..1 units
    pixel_mean=[123.675 / 255.0, 116.280 / 255.0, 103.530 / 255.0],
    pixel_std=[58.395 / 255.0, 57.120 / 255.0, 57.375 / 255.0],
    size_divisibility=32,
    decoder=L(DetailCapture)(in_chans="${..backbone.embed_dim}"),
    distill=True,
    distill_loss_ratio=1.0,
    token_loss_ratio=1.0,
    lean_inference=True,  # memory-lean inference path (modeling/lean); False: reference forward
)
