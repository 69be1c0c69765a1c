"""AdamW with layer-wise lr decay over the ViT blocks and no weight decay on norms / pos_embed.

"Norms" are detectron2's norm list, as in the official run: the ResBottleneck blocks'
channels-first LayerNorms keep the weight decay (``engine/optim.py``).

``main.py`` sets ``optimizer.params.model = model`` (teacher already frozen, hence excluded)
before instantiating; ``base_lr`` follows ``optimizer.lr`` and the number of decayed layers the
backbone's depth. Backbone lrs are scaled by ``lr_decay_rate ** (num_layers + 1 - layer_id)``:
0.65 ** 13 for the patch embedding, down to 1 for the decoder and routers (``engine/optim.py``).

References: ViTMatte / ViTDet ``configs/common/optimizer.py`` (values), detectron2
``configs/common/optim.py``.
"""

from functools import partial

import torch

from engine.config import LazyCall as L
from engine.optim import get_default_optimizer_params, get_vit_lr_decay_rate

optimizer = L(torch.optim.AdamW)(
    params=L(get_default_optimizer_params)(
        base_lr="${..lr}",
        weight_decay_norm=0.0,
        overrides={"pos_embed": {"weight_decay": 0.0}},
        lr_factor_func=partial(
            get_vit_lr_decay_rate, num_layers="${model.backbone.depth}", lr_decay_rate=0.65
        ),
    ),
    lr=5e-4,
    betas=(0.9, 0.999),
    weight_decay=0.1,
)
