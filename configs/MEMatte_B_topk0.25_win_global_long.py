"""MEMatte-B (ViT-B, 768-d, 12 heads): window attention in 8 blocks, routed global 2/5/8/11."""

from .common.model import model

WINDOW_BLOCKS = [0, 1, 3, 4, 6, 7, 9, 10]  # blocks 2, 5, 8, 11 stay global (and routed)

model.backbone.embed_dim = 768
model.backbone.num_heads = 12
model.decoder.in_chans = 768
model.teacher_backbone.embed_dim = 768
model.teacher_backbone.num_heads = 12

model.backbone.use_rel_pos = True
model.backbone.topk = 0.25
model.backbone.window_block_indexes = WINDOW_BLOCKS
model.distill = True
model.teacher_backbone.window_block_indexes = WINDOW_BLOCKS
