"""Plain ViT backbone (ViTDet style) with MEMatte's adaptive token routing.

References: ViTDet (Li et al. 2022), ViTMatte (Yao et al. 2024), MEMatte (Lin et al. 2025).

The student (``use_routing=True``) scores its tokens with a :class:`Router` before every global
block except block 0; routed tokens get global attention, the rest the :class:`LTRM`. The
distillation teacher is the same class with ``use_routing=False``: plain ViTMatte blocks with
relative position embeddings in every block.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d, Mlp
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import Attention, window_partition, window_unpartition
from .ltrm import LTRM
from .router import GLOBAL_ROUTE, Router

__all__ = [
    "DEFAULT_MAX_NUMBER_TOKEN",
    "BackboneOutput",
    "Block",
    "PatchEmbed",
    "ResBottleneckBlock",
    "ViT",
    "get_abs_pos",
    "route_tokens",
]

logger = logging.getLogger(__name__)

# The official default cap on tokens in one global attention (ViT and inference.py).
DEFAULT_MAX_NUMBER_TOKEN = 18500


class BackboneOutput(NamedTuple):
    """What the backbone returns, in training and inference alike.

    Attributes:
        features: last block output ``[B, C, h, w]``.
        router_scores: one ``[B, h, w, 2]`` log-probability map per routed block.
        keep: one ``[B, h, w, 1]`` 0/1 decision map per routed block (1 = global attention).
    """

    features: Tensor
    router_scores: list[Tensor]
    keep: list[Tensor]


def get_abs_pos(abs_pos: Tensor, has_cls_token: bool, hw: tuple[int, int]) -> Tensor:
    """Resize the pretrain absolute position embedding to the token grid (bicubic).

    Args:
        abs_pos: ``[1, num_positions, C]`` (with a leading cls position if ``has_cls_token``).
        has_cls_token: drop the first position.
        hw: target grid ``(h, w)``.

    Returns:
        ``[1, h, w, C]``.
    """
    h, w = hw
    if has_cls_token:
        abs_pos = abs_pos[:, 1:]
    size = int(math.sqrt(abs_pos.shape[1]))
    if size * size != abs_pos.shape[1]:
        raise ValueError(f"pos_embed has {abs_pos.shape[1]} positions: not a square grid")
    grid = abs_pos.reshape(1, size, size, -1)
    if (size, size) == (h, w):
        return grid
    # [1, s, s, C] -> [1, C, s, s] for interpolation -> [1, h, w, C]
    resized = F.interpolate(
        grid.permute(0, 3, 1, 2), size=(h, w), mode="bicubic", align_corners=False
    )
    return resized.permute(0, 2, 3, 1)


@functools.cache
def _log_cap_once(max_number_token: int) -> None:
    logger.debug(
        "token cap active: at most %d tokens per image in global attention", max_number_token
    )


def route_tokens(scores: Tensor, training: bool, max_number_token: int | None) -> Tensor:
    """Turn router log-probabilities into hard routing decisions.

    Training draws straight-through gumbel-softmax samples (one call per routed block, as the
    official code, so seeded runs consume the generator identically). Inference takes the argmax
    and then keeps, per image, at most ``max_number_token`` tokens with the largest
    ``s0 - s1`` margin.

    Args:
        scores: ``[B, N, 2]`` log-probabilities.
        training: sample (True) or argmax (False).
        max_number_token: inference cap per image; None for no cap.

    Returns:
        decisions ``[B, N, 1]`` with 1 = global attention.
    """
    if training:
        return F.gumbel_softmax(scores, hard=True)[..., GLOBAL_ROUTE : GLOBAL_ROUTE + 1]
    keep = (scores[..., 0] > scores[..., 1]).to(scores.dtype)  # [B, N]
    if max_number_token is not None:
        margin = scores[..., 0] - scores[..., 1]
        for b in torch.nonzero(keep.sum(dim=1) > max_number_token).flatten().tolist():
            _log_cap_once(max_number_token)
            order = torch.sort(margin[b : b + 1], descending=True).indices[0]
            keep[b] = 0
            keep[b, order[:max_number_token]] = 1
    return keep.unsqueeze(-1)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: ``[B, C_in, H, W]`` -> ``[B, H/p, W/p, C]``."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # B C H W -> B H W C


class ResBottleneckBlock(nn.Module):
    """1x1 -> 3x3 -> 1x1 conv bottleneck with channels-first LayerNorm, added to its input.

    Operates on ``[B, C, H, W]``; the last norm is zero-initialised so the block starts as the
    identity.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bottleneck_channels: int,
        act_layer: Callable[[], nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, bottleneck_channels, 1, bias=False)
        self.norm1 = LayerNorm2d(bottleneck_channels)
        self.act1 = act_layer()
        self.conv2 = nn.Conv2d(bottleneck_channels, bottleneck_channels, 3, padding=1, bias=False)
        self.norm2 = LayerNorm2d(bottleneck_channels)
        self.act2 = act_layer()
        self.conv3 = nn.Conv2d(bottleneck_channels, out_channels, 1, bias=False)
        self.norm3 = LayerNorm2d(out_channels)
        self.init_weights()
        # The block runs on a permuted view of [B, H, W, C] tokens, i.e. channels-last, and the
        # convs' weight gradients come back in the layout of the activations: keep the weights
        # channels-last too, so that every gradient has its parameter's strides (DDP's buckets
        # are laid out as the parameters; another layout makes it warn on every rank).
        self.to(memory_format=torch.channels_last)

    def init_weights(self) -> None:
        """MSRA fill for the convs, unit norms, and a zero last norm."""
        for conv in (self.conv1, self.conv2, self.conv3):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        for norm in (self.norm1, self.norm2):
            nn.init.ones_(norm.weight)
            nn.init.zeros_(norm.bias)
        nn.init.zeros_(self.norm3.weight)
        nn.init.zeros_(self.norm3.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.act2(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        return x + out


class Block(nn.Module):
    """Transformer block: window or global attention, MLP, optional conv residual block.

    A routed global block (``use_efficient_block``) has two paths chosen by a policy
    ``[B, N, 1]``: :meth:`forward_masked` (training, dense and differentiable) and
    :meth:`forward_sparse` (inference: global attention only among the routed tokens of each
    image, the LTRM for every other token).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        use_residual_block: bool = False,
        input_size: tuple[int, int] | None = None,
        use_efficient_block: bool = False,
    ) -> None:
        """
        Args:
            dim: channels C.
            num_heads: attention heads.
            mlp_ratio: MLP hidden size / C.
            qkv_bias: bias on q, k, v.
            drop_path: stochastic depth rate.
            norm_layer: token norm constructor.
            act_layer: activation constructor.
            use_rel_pos: decomposed relative position embeddings.
            rel_pos_zero_init: zero-initialise the rel-pos tables.
            window_size: window side in tokens; 0 = global attention.
            use_residual_block: add a :class:`ResBottleneckBlock` after the MLP.
            input_size: token grid of the pretrain size (sizes global rel-pos tables).
            use_efficient_block: routed block with an :class:`LTRM`.
        """
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            rel_pos_zero_init=rel_pos_zero_init,
            input_size=input_size if window_size == 0 else (window_size, window_size),
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer)
        self.window_size = window_size
        self.use_efficient_block = use_efficient_block
        if use_efficient_block:
            self.efficient_block = LTRM(dim)
        self.use_residual_block = use_residual_block
        if use_residual_block:
            self.residual = ResBottleneckBlock(dim, dim, dim // 2, act_layer=act_layer)

    def forward(self, x: Tensor, policy: Tensor | None = None) -> Tensor:
        """
        Args:
            x: tokens ``[B, H, W, C]``.
            policy: ``[B, N, 1]`` routing decisions, required by routed blocks.

        Returns:
            ``[B, H, W, C]``.
        """
        x = x + self.attention_branch(x, policy)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        if self.use_residual_block:
            # channels-last -> channels-first for the conv block, and back
            x = self.residual(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x

    def attention_branch(self, x: Tensor, policy: Tensor | None) -> Tensor:
        """What the block adds to ``x`` before its MLP: (window or global) attention, or for a
        routed block the mix of global attention and the LTRM given by the policy."""
        if not self.use_efficient_block:
            return self.drop_path(self.attend(self.norm1(x)))
        if policy is None:
            raise ValueError("a routed block needs a routing policy")
        return self.forward_masked(x, policy) if self.training else self.forward_sparse(x, policy)

    def attend(self, x: Tensor) -> Tensor:
        """Window or global attention of normalised tokens ``[B, H, W, C]``.

        Windows are cut after the norm, so window padding is zeros as in ViTDet.
        """
        if self.window_size == 0:
            return self.attn(x)
        H, W = x.shape[1], x.shape[2]
        windows, pad_hw = window_partition(x, self.window_size)
        return window_unpartition(self.attn(windows), self.window_size, pad_hw, (H, W))

    def forward_masked(self, x: Tensor, policy: Tensor) -> Tensor:
        """Training branch: attention over all tokens with a policy-masked softmax, mixed with the
        LTRM by the policy.

        Args:
            x: ``[B, H, W, C]``.
            policy: ``[B, N, 1]`` hard 0/1 decisions (straight-through gradients).
        """
        B, H, W, C = x.shape
        slow = self.drop_path(self.attn(self.norm1(x), policy.reshape(B, H * W, 1)))
        fast = self.efficient_block(x)
        mix = policy.reshape(B, H, W, 1)
        return slow * mix + fast * (1 - mix)

    def forward_sparse(self, x: Tensor, keep: Tensor) -> Tensor:
        """Inference branch: routed tokens attend only among the routed tokens of their own
        image; every other token gets the LTRM.

        Args:
            x: ``[B, H, W, C]``.
            keep: ``[B, N, 1]`` 0/1 decisions.
        """
        B, H, W, C = x.shape
        tokens = x.reshape(B, H * W, C)
        update = self.efficient_block(x).reshape(B, H * W, C)
        selected = keep.reshape(B, H * W) > 0
        for b in range(B):
            index = torch.nonzero(selected[b]).flatten()
            if index.numel() == 0:
                continue
            routed = tokens[b, index].unsqueeze(0)  # [1, n_b, C]
            update[b, index] = self.drop_path(self.attn(self.norm1(routed)))[0].to(update.dtype)
        return update.reshape(B, H, W, C)


class ViT(nn.Module):
    """ViTDet-style plain ViT with optional MEMatte routing.

    With ``use_routing`` every global block except block 0 is routed and carries an LTRM, and
    relative position embeddings are used only in window blocks (the official student). Without
    routing every block has rel-pos (the official ``ViT_Teacher``, i.e. the ViTMatte backbone).
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        use_abs_pos: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        window_block_indexes: Sequence[int] = (),
        residual_block_indexes: Sequence[int] = (),
        pretrain_img_size: int = 224,
        pretrain_use_cls_token: bool = True,
        use_routing: bool = True,
        topk: float = 1.0,
        max_number_token: int | None = DEFAULT_MAX_NUMBER_TOKEN,
        use_act_checkpoint: bool = False,
    ) -> None:
        """
        Args:
            img_size: training image size (sizes the global rel-pos tables).
            patch_size: patch side in pixels.
            in_chans: input channels (4 = RGB + trimap).
            embed_dim: channels C.
            depth: number of blocks.
            num_heads: attention heads.
            mlp_ratio: MLP hidden size / C.
            qkv_bias: bias on q, k, v.
            drop_path_rate: stochastic depth, linearly increasing over blocks.
            norm_layer: token norm constructor.
            act_layer: activation constructor.
            use_abs_pos: absolute position embedding from the pretrain grid.
            use_rel_pos: decomposed relative position embeddings.
            rel_pos_zero_init: zero-initialise the rel-pos tables.
            window_size: window side in tokens for the window blocks.
            window_block_indexes: blocks with window attention; the others are global.
            residual_block_indexes: blocks followed by a conv residual block.
            pretrain_img_size: image size of the pretrained abs pos-embed grid.
            pretrain_use_cls_token: the pos-embed has a leading cls position.
            use_routing: MEMatte student (True) or plain ViTMatte teacher (False).
            topk: target routed-token ratio of the BATR loss (read by the meta-arch).
            max_number_token: inference cap on routed tokens per image and block (None: no cap).
            use_act_checkpoint: with autograd on, recompute each block's activations in the
                backward pass instead of keeping them (``torch.utils.checkpoint``, RNG state
                replayed, so drop path gives the same result).
        """
        super().__init__()
        self.pretrain_use_cls_token = pretrain_use_cls_token
        self.window_block_indexes = tuple(window_block_indexes)
        self.use_routing = use_routing
        self.topk = topk
        self.max_number_token = max_number_token
        self.use_act_checkpoint = use_act_checkpoint
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        if use_abs_pos:
            num_patches = (pretrain_img_size // patch_size) ** 2
            num_positions = num_patches + 1 if pretrain_use_cls_token else num_patches
            self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, embed_dim))
        else:
            self.pos_embed = None

        # stochastic depth grows linearly from 0 to drop_path_rate over the blocks
        drop_path_rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        grid = (img_size // patch_size, img_size // patch_size)
        self.blocks = nn.ModuleList()
        for i in range(depth):
            is_window = i in self.window_block_indexes
            routed = use_routing and not is_window and i != 0
            self.blocks.append(
                Block(
                    dim=embed_dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop_path=drop_path_rates[i],
                    norm_layer=norm_layer,
                    act_layer=act_layer,
                    # The student keeps rel-pos only inside windows; the teacher everywhere.
                    use_rel_pos=use_rel_pos and (is_window or not use_routing),
                    rel_pos_zero_init=rel_pos_zero_init,
                    window_size=window_size if is_window else 0,
                    use_residual_block=i in residual_block_indexes,
                    input_size=grid,
                    use_efficient_block=routed,
                )
            )
        # One router per global block, as the official checkpoints (block 0 is never routed, so
        # a configuration where block 0 is global has one router more than it uses).
        num_routers = depth - len(self.window_block_indexes) if use_routing else 0
        self.routers = nn.ModuleList(Router(embed_dim) for _ in range(num_routers))
        self._init_weights()

    def _init_weights(self) -> None:
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # LayerNorm2d is an nn.LayerNorm: restore the residual blocks' zero last norm.
        for m in self.modules():
            if isinstance(m, ResBottleneckBlock):
                m.init_weights()

    @property
    def routed_block_indexes(self) -> list[int]:
        """Indexes of the blocks that take a routing policy."""
        return [i for i, blk in enumerate(self.blocks) if blk.use_efficient_block]

    def embed(self, x: Tensor) -> Tensor:
        """Patch embedding plus the resized absolute position embedding.

        Args:
            x: normalised image + trimap ``[B, in_chans, H, W]``, H and W multiples of the patch.

        Returns:
            tokens ``[B, H / patch, W / patch, C]``.
        """
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + get_abs_pos(self.pos_embed, self.pretrain_use_cls_token, x.shape[1:3])
        return x

    def route(self, router: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        """Router scores ``[B, N, 2]`` and decisions ``[B, N, 1]`` of tokens ``[B, H, W, C]``.

        Routing is discrete and its margins can be tiny: the router scores in float32 even under
        autocast, or bf16 rounding turns many decisions into ties.
        """
        B, H, W, C = x.shape
        with torch.autocast(x.device.type, enabled=False):
            score = router(x.reshape(B, H * W, C).float())
        return score, route_tokens(score, self.training, self.max_number_token)

    def forward(self, x: Tensor) -> BackboneOutput:
        """
        Args:
            x: normalised image + trimap ``[B, in_chans, H, W]``, H and W multiples of the patch.

        Returns:
            :class:`BackboneOutput` with features ``[B, C, H / patch, W / patch]``.
        """
        x = self.embed(x)
        B, H, W, _ = x.shape
        scores, keeps = [], []
        routers = iter(self.routers)
        for blk in self.blocks:
            if not blk.use_efficient_block:
                x = self.run_block(blk, x)
                continue
            score, keep = self.route(next(routers), x)
            x = self.run_block(blk, x, keep)
            scores.append(score.reshape(B, H, W, 2))
            keeps.append(keep.reshape(B, H, W, 1))
        return BackboneOutput(x.permute(0, 3, 1, 2), scores, keeps)

    def run_block(self, blk: Block, x: Tensor, policy: Tensor | None = None) -> Tensor:
        """``blk(x, policy)``, activation-checkpointed when ``use_act_checkpoint`` in training."""
        if self.use_act_checkpoint and self.training:
            return checkpoint(blk, x, policy, use_reentrant=False)
        return blk(x, policy)
