"""Base MEMatte model (ViT-S width); variant files set the window layout and routing target.

Mirrors the official ``configs/common/model.py``: the student backbone, the frozen ViTMatte
teacher used for feature distillation, the detail-capture decoder and the matting losses.
"""

from functools import partial

from torch import nn

from engine.config import LazyCall as L
from modeling import DetailCapture, MattingCriterion, MEMatte, ViT

embed_dim, num_heads = 384, 6  # ViT-S

# The student and the teacher are the same ViT; only routing (and with it rel-pos in the global
# blocks) differs. Variant files set each one's window layout.
_vit_kwargs = dict(
    in_chans=4,  # RGB + trimap
    img_size=512,
    patch_size=16,
    embed_dim=embed_dim,
    depth=12,
    num_heads=num_heads,
    drop_path_rate=0,
    window_size=14,
    mlp_ratio=4,
    qkv_bias=True,
    norm_layer=partial(nn.LayerNorm, eps=1e-6),
    window_block_indexes=[],
    residual_block_indexes=[2, 5, 8, 11],
    use_rel_pos=True,
    out_feature="last_feat",
)

model = L(MEMatte)(
    teacher_backbone=L(ViT)(**_vit_kwargs, use_routing=False),
    backbone=L(ViT)(
        **_vit_kwargs,
        use_routing=True,
        topk=1.0,
        max_number_token=18500,  # official default cap of tokens per global attention
    ),
    criterion=L(MattingCriterion)(
        losses=["unknown_l1_loss", "known_l1_loss", "loss_pha_laplacian", "loss_gradient_penalty"]
    ),
    # ImageNet statistics, in 0..1 units
    pixel_mean=[123.675 / 255.0, 116.280 / 255.0, 103.530 / 255.0],
    pixel_std=[58.395 / 255.0, 57.120 / 255.0, 57.375 / 255.0],
    size_divisibility=32,
    decoder=L(DetailCapture)(in_chans=embed_dim),
    distill=True,
    distill_loss_ratio=1.0,
    token_loss_ratio=1.0,
)
