"""Optimizer parameter groups: layer-wise lr decay for the ViT backbone, no weight decay on norms.

The official MEMatte optimizer (from ViTMatte's ``configs/common/optimizer.py``) is AdamW, lr 5e-4,
betas (0.9, 0.999), weight decay 0.1, except 0 on the norm layers of detectron2's norm list and
on ``pos_embed``, with backbone lrs scaled by ``0.65 ** (13 - layer_id)``.
``configs/common/optimizer.py`` builds it from the functions here (``optimizer.params.model`` is
set to the model before instantiating). Every parameter gets the official lr and weight decay,
and the groups come out in detectron2's order and sizes, so an official training checkpoint's
optimizer state loads.

References: ViTDet / ViTMatte ``get_vit_lr_decay_rate``; detectron2
``detectron2/solver/build.py`` ``get_default_optimizer_params`` (interface only).
"""

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from timm.layers import LayerNorm2d
from torch import nn

from modeling.meta_arch.mematte import BACKBONE_PREFIX, TEACHER_PREFIX

__all__ = [
    "freeze_teacher",
    "get_default_optimizer_params",
    "get_vit_lr_decay_rate",
]

# No weight decay on the positional embedding (matched by the parameter's own name).
DEFAULT_OVERRIDES: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {"pos_embed": {"weight_decay": 0.0}}
)
# detectron2's norm list (``get_default_optimizer_params``): their parameters get weight_decay_norm.
NORM_MODULE_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
# The ResBottleneck blocks' channels-first LayerNorm is timm's LayerNorm2d here, an nn.LayerNorm
# subclass, but detectron2's own LayerNorm class in the official model, which is not in the list
# above: the official optimizer decays it (weight decay 0.1), and so does this one.
DECAYED_NORM_TYPES = (LayerNorm2d,)

_BLOCKS = ".blocks."
# A block's ResBottleneck (``backbone.blocks.{i}.residual.*``) is not decayed with its block.
_RESIDUAL = ".residual."
_EMBEDDINGS = (".pos_embed", ".patch_embed")


def get_vit_lr_decay_rate(name: str, lr_decay_rate: float = 1.0, num_layers: int = 12) -> float:
    """Layer-wise lr decay factor of one parameter.

    ``layer_id`` is 0 for ``backbone.pos_embed`` / ``backbone.patch_embed.*``, ``i + 1`` for
    ``backbone.blocks.{i}.*`` (not ``...residual.*``), and ``num_layers + 1`` for everything else:
    the decoder, the ResBottleneck blocks and MEMatte's routers (``backbone.routers.{j}.*``),
    which are outside the blocks in the official code.

    Args:
        name: parameter name, e.g. ``backbone.blocks.3.attn.qkv.weight``.
        lr_decay_rate: decay per layer (0.65 for MEMatte).
        num_layers: number of ViT blocks.

    Returns:
        ``lr_decay_rate ** (num_layers + 1 - layer_id)``.
    """
    layer_id = num_layers + 1
    if name.startswith(BACKBONE_PREFIX):
        if any(embedding in name for embedding in _EMBEDDINGS):
            layer_id = 0
        elif _BLOCKS in name and _RESIDUAL not in name:
            block_index = name.split(_BLOCKS, 1)[1].split(".", 1)[0]
            layer_id = int(block_index) + 1
    return lr_decay_rate ** (num_layers + 1 - layer_id)


def _is_norm(module: nn.Module) -> bool:
    """A norm layer whose parameters get ``weight_decay_norm`` (detectron2's rule)."""
    return isinstance(module, NORM_MODULE_TYPES) and not isinstance(module, DECAYED_NORM_TYPES)


def _merge_param_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge single-parameter groups with identical hyperparameters (detectron2's
    ``reduce_param_groups``): a group per distinct sequence of ``(name, value)`` pairs, in their
    insertion order, groups ordered by their first parameter, parameters in visiting order."""
    merged: dict[tuple[tuple[str, Any], ...], dict[str, Any]] = {}
    for group in groups:
        hyperparams = tuple((key, value) for key, value in group.items() if key != "params")
        if hyperparams not in merged:
            merged[hyperparams] = {**dict(hyperparams), "params": []}
        merged[hyperparams]["params"].extend(group["params"])
    return list(merged.values())


def get_default_optimizer_params(
    model: nn.Module,
    base_lr: float | None = None,
    weight_decay: float | None = None,
    weight_decay_norm: float | None = 0.0,
    overrides: Mapping[str, Mapping[str, float]] = DEFAULT_OVERRIDES,
    lr_factor_func: Callable[[str], float] | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups of the trainable parameters, with per-parameter hyperparameters.

    Parameters are visited module by module (``model.named_modules()`` order, each module's own
    parameters in registration order), as detectron2 does; those with ``requires_grad=False`` (the
    frozen teacher) and repeated (shared) parameters are skipped. Biases keep the regular weight
    decay. Groups with equal hyperparameters are merged (see :func:`_merge_param_groups`).

    Args:
        model: the (unwrapped) model.
        base_lr: lr of every group; required with ``lr_factor_func``. None leaves the lr to the
            optimizer's default.
        weight_decay: weight decay of every group; None leaves it to the optimizer's default.
        weight_decay_norm: weight decay of the parameters of ``NORM_MODULE_TYPES`` modules other
            than ``DECAYED_NORM_TYPES``; None treats them like the others.
        overrides: hyperparameters by the parameter's own name (``pos_embed``, ``bias``, ...),
            applied last; ``{}`` for none.
        lr_factor_func: full parameter name -> lr factor, e.g. a partial of
            :func:`get_vit_lr_decay_rate`.

    Returns:
        A list of ``{"params": [...], hyperparameter: value, ...}`` for a torch optimizer.

    Raises:
        ValueError: ``lr_factor_func`` without ``base_lr``.
    """
    if lr_factor_func is not None and base_lr is None:
        raise ValueError("lr_factor_func needs base_lr (in a LazyConfig: base_lr='${..lr}')")
    defaults: dict[str, float] = {}
    if base_lr is not None:
        defaults["lr"] = base_lr
    if weight_decay is not None:
        defaults["weight_decay"] = weight_decay

    groups = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            hyperparams = dict(defaults)
            if weight_decay_norm is not None and _is_norm(module):
                hyperparams["weight_decay"] = weight_decay_norm
            if lr_factor_func is not None:
                full_name = f"{module_name}.{param_name}" if module_name else param_name
                hyperparams["lr"] *= lr_factor_func(full_name)
            hyperparams.update(overrides.get(param_name, {}))
            groups.append({"params": [param], **hyperparams})
    return _merge_param_groups(groups)


def freeze_teacher(model: nn.Module) -> int:
    """Set ``requires_grad=False`` on every parameter of the distillation teacher
    (``teacher_backbone.*``).

    Call it before building the optimizer and the DDP wrapper.

    Args:
        model: the unwrapped model.

    Returns:
        The number of parameter tensors frozen.
    """
    frozen = 0
    for name, param in model.named_parameters():
        if name.startswith(TEACHER_PREFIX):
            param.requires_grad_(False)
            frozen += 1
    return frozen
