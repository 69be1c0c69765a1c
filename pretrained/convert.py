"""Convert ViTMatte weights between the official layout, safetensors and Hugging Face transformers.

Usage:
    python pretrained/convert.py SRC DST [--trust-checkpoint] [--config-file CFG [key=value ...]]

SRC is one of:

- an official-layout file: ``.pth`` (``{"model": state_dict}`` or a bare state dict) or
  ``.safetensors`` (the same keys);
- a Hugging Face transformers ``VitMatteForImageMatting`` folder written by ``save_pretrained``:
  ``config.json`` with ``model.safetensors`` or ``pytorch_model.bin`` (sharded or not);
- a hub id (``hustvl/vitmatte-small-composition-1k``), downloaded with ``huggingface_hub`` into
  its cache and then read as such a folder.

DST is a ``.pth`` (``{"model": state_dict}``, the official layout), a ``.safetensors`` file (the
same keys; its metadata records the source, the source format and, for Hugging Face sources, the
architecture as config overrides), or a folder: a transformers ``save_pretrained`` folder
(``config.json`` + ``model.safetensors``) whose architecture is that of ``--config-file`` (a
ViTMatte config, e.g. ``configs/ViTMatte_S_Com.py``, with overrides), which the weights must fit.
Files are written atomically.

Hugging Face keys are renamed to the official ones (the inverse of transformers'
``convert_vitmatte_to_hf.py``: :func:`hf_to_official_key`, and :func:`official_to_hf_key` back).
The architecture is read from ``config.json`` and expressed as overrides of
``configs/ViTMatte_S_Com.py`` (:func:`hf_config_overrides`); a field the project's ViT and decoder
cannot express (another activation, dropout, 3 input channels, ...) is refused with its name, as
is a config that transformers' VitMatte cannot express (:func:`hf_config`: routing on, ...).
``config.json`` is checked against the weights' shapes (:func:`check_config_fits_weights`: a
field the tensors contradict is refused by name), and every file a folder names (an index's
``weight_map`` included) must lie inside the folder. The weights of every source must be finite
floating-point tensors (:func:`engine.checkpoint.check_weights`).

``.pth`` and ``pytorch_model.bin`` files are read with ``weights_only=True``; a file that also
pickles other objects is refused unless ``--trust-checkpoint``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import re
import runpy
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import huggingface_hub
import hydra.utils
import safetensors.torch
import torch
from omegaconf import DictConfig, OmegaConf

runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "_bootstrap.py"))

from engine.checkpoint import (
    SAFETENSORS_SUFFIX,
    CheckpointError,
    check_weights,
    clean_state_dict,
    load_checkpoint,
    non_floating_keys,
)
from engine.config import LazyConfig, instantiate
from engine.known_configs import CONFIG_DIR, config_state, shipped_configs
from utils.arguments import add_trust_checkpoint_argument
from utils.file_io import atomic_write

__all__ = [
    "HF_CONFIG_FILE",
    "ConfigMismatchError",
    "LoadedWeights",
    "UnsafeShardPathError",
    "UnsupportedArchitectureError",
    "check_config_fits_weights",
    "convert",
    "hf_config",
    "hf_config_overrides",
    "hf_to_official_key",
    "load_weights",
    "official_to_hf_key",
    "save_hf_folder",
    "save_weights",
]

logger = logging.getLogger("convert")

HF_CONFIG_FILE = "config.json"
# Weight files of a save_pretrained folder, in the order they are looked for; an index file lists
# the shards of a sharded checkpoint.
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
HF_INDEX_SUFFIX = ".index.json"
# huggingface_hub's cache keeps a repository's files in <repo>/blobs, linked from
# <repo>/snapshots/<revision>/ (the folder a download returns).
HUB_SNAPSHOTS_DIR = "snapshots"
HUB_BLOBS_DIR = "blobs"
# Files a hub download fetches: the config and the weights (not the image processor, README, ...).
HF_DOWNLOAD_PATTERNS = [HF_CONFIG_FILE, "model.safetensors*", "pytorch_model.bin*"]
# "owner/name" of a hub repository.
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
PTH_SUFFIX = ".pth"

# Key translation official <-> transformers: whole-prefix renames, then renames of single
# dot-separated segments (``attn`` only occurs in backbone blocks, ``bn`` only in decoder convs).
_PREFIX_RENAMES = (
    ("backbone.pos_embed", "backbone.embeddings.position_embeddings"),
    ("backbone.patch_embed.proj.", "backbone.embeddings.projection."),
    ("backbone.blocks.", "backbone.encoder.layer."),
    ("decoder.fusion_blks.", "decoder.fusion_blocks."),
)
_SEGMENT_RENAMES = (("attn", "attention"), ("bn", "batch_norm"))
# ViTMatte has a backbone and a decoder; MEMatte's teacher and routers have no transformers form.
_CONVERTIBLE_PREFIXES = ("backbone.", "decoder.")

# transformers' VitDetConfig field -> the ViTMatte config key it sets (under ``model.``), and the
# transformers defaults (used when config.json omits a field, as older save_pretrained did).
_VITDET_FIELDS = {
    "hidden_size": ("backbone.embed_dim", 768),
    "num_hidden_layers": ("backbone.depth", 12),
    "num_attention_heads": ("backbone.num_heads", 12),
    "mlp_ratio": ("backbone.mlp_ratio", 4),
    "image_size": ("backbone.img_size", 224),
    "pretrain_image_size": ("backbone.pretrain_img_size", 224),
    "patch_size": ("backbone.patch_size", 16),
    "qkv_bias": ("backbone.qkv_bias", True),
    "drop_path_rate": ("backbone.drop_path_rate", 0.0),
    "layer_norm_eps": ("backbone.norm_layer.eps", 1e-6),
    "window_size": ("backbone.window_size", 0),
    "window_block_indices": ("backbone.window_block_indexes", []),
    "residual_block_indices": ("backbone.residual_block_indexes", []),
    "use_absolute_position_embeddings": ("backbone.use_abs_pos", True),
    "use_relative_position_embeddings": ("backbone.use_rel_pos", False),
}
_VITMATTE_FIELDS = {
    "convstream_hidden_sizes": ("decoder.convstream_out", [48, 96, 192]),
    "fusion_hidden_sizes": ("decoder.fusion_out", [256, 128, 64, 32]),
}
# Fields the project's model has no setting for: the one value it implements, and the default.
_VITDET_FIXED = {
    "model_type": ("vitdet", None),
    "num_channels": (4, 3),  # RGB + trimap
    "hidden_act": ("gelu", "gelu"),
    "dropout_prob": (0.0, 0.0),
}
_VITMATTE_FIXED = {
    "model_type": ("vitmatte", None),
    "batch_norm_eps": (1e-5, 1e-5),
}
_VITMATTE_HIDDEN_SIZE_DEFAULT = 384
# Config values (under ``model.``) that transformers' VitMatte has no setting for: the one it has.
_CONFIG_FIXED = {
    "backbone.use_routing": False,  # no routers, no LTRMs
    "backbone.in_chans": 4,
    "backbone.pretrain_use_cls_token": True,
    "decoder.img_chans": 4,
}
HF_WEIGHTS_FILE = "model.safetensors"
_SQUARE_FIELDS = ("image_size", "pretrain_image_size", "patch_size")
# Official ViTMatte keys whose shapes show the architecture ("{}": a block or layer index).
_PATCH_KEY = "backbone.patch_embed.proj.weight"  # [C, 4, patch, patch]
_POS_KEY = "backbone.pos_embed"  # [1, 1 + (pretrain_image_size / patch) ** 2, C]
_BLOCK_PREFIX = "backbone.blocks.{}."
_FC1_KEY = "backbone.blocks.0.mlp.fc1.weight"  # [mlp_ratio * C, C]
_QKV_BIAS_KEY = "backbone.blocks.0.attn.qkv.bias"
_REL_POS_KEY = "backbone.blocks.{}.attn.rel_pos_h"  # [2 * grid side - 1, C / heads]
_RESIDUAL_PREFIX = "backbone.blocks.{}.residual."
_CONVSTREAM_KEY = "decoder.convstream.convs.{}.conv.weight"  # [width, in, 3, 3]
_FUSION_KEY = "decoder.fusion_blks.{}.conv.conv.weight"  # [width, in, 3, 3]
# The config a transformers architecture is expressed as overrides of.
VITMATTE_CONFIG = CONFIG_DIR / "ViTMatte_S_Com.py"


class UnsupportedArchitectureError(ValueError):
    """A transformers config field that the project's ViTMatte cannot express."""


class ConfigMismatchError(CheckpointError):
    """A transformers ``config.json`` that describes other shapes than the weights beside it."""


class UnsafeShardPathError(CheckpointError):
    """A weight file named by a folder (``weight_map`` of an index) that lies outside it."""


@dataclass
class LoadedWeights:
    """Weights in the official layout, with where they came from.

    Attributes:
        checkpoint: ``{"model": state_dict, ...}`` (a ``.pth`` source keeps its other entries).
        source: the file, folder or hub id read.
        source_format: ``pth``, ``safetensors`` or ``huggingface``.
        overrides: for a Hugging Face source, the ``configs/ViTMatte_S_Com.py`` overrides that
            build its architecture; empty otherwise.
    """

    checkpoint: dict[str, Any]
    source: str
    source_format: str
    overrides: list[str] = field(default_factory=list)


def _rename(key: str, forward: bool) -> str:
    """Apply the renames official -> transformers (``forward``) or back."""
    for official, hf in _PREFIX_RENAMES:
        old, new = (official, hf) if forward else (hf, official)
        if key.startswith(old):
            key = new + key[len(old) :]
            break
    pairs = _SEGMENT_RENAMES if forward else [(hf, official) for official, hf in _SEGMENT_RENAMES]
    segments = dict(pairs)
    return ".".join(segments.get(segment, segment) for segment in key.split("."))


def official_to_hf_key(key: str) -> str:
    """A ViTMatte state-dict key in transformers' ``VitMatteForImageMatting`` naming.

    ``backbone.blocks.3.attn.qkv.weight`` -> ``backbone.encoder.layer.3.attention.qkv.weight``.
    """
    return _rename(key, forward=True)


def hf_to_official_key(key: str) -> str:
    """Inverse of :func:`official_to_hf_key`."""
    return _rename(key, forward=False)


def _refuse(field_name: str, value: Any, reason: str) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(f"config.json field {field_name}={value!r}: {reason}")


def _check_fixed(config: Mapping[str, Any], fixed: dict, prefix: str) -> None:
    for name, (required, default) in fixed.items():
        value = config.get(name, default)
        if value != required:
            raise _refuse(prefix + name, value, f"only {required!r} maps to this project's model")


def _square(name: str, value: Any) -> int:
    """An int size; a ``[h, w]`` pair only when square."""
    if isinstance(value, list | tuple):
        if len(value) != 2 or value[0] != value[1]:
            raise _refuse(f"backbone_config.{name}", value, "only square sizes map")
        return int(value[0])
    return int(value)


def _hf_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture fields of a transformers ``VitMatteConfig`` (a ``config.json`` as a
    dict), checked: the ``backbone_config`` fields of :data:`_VITDET_FIELDS` and the decoder
    fields of :data:`_VITMATTE_FIELDS`, missing ones at transformers' defaults.

    Raises:
        UnsupportedArchitectureError: see :func:`hf_config_overrides`.
    """
    _check_fixed(config, _VITMATTE_FIXED, "")
    backbone = config.get("backbone_config")
    if not isinstance(backbone, Mapping):
        raise _refuse("backbone_config", backbone, "a VitDet backbone config is required")
    _check_fixed(backbone, _VITDET_FIXED, "backbone_config.")
    values = {name: backbone.get(name, default) for name, (_, default) in _VITDET_FIELDS.items()}
    for name in _SQUARE_FIELDS:
        values[name] = _square(name, values[name])
    depth = values["num_hidden_layers"]
    last_stage = f"stage{depth}"
    out_features = backbone.get("out_features") or [last_stage]
    if list(out_features) != [last_stage]:
        raise _refuse(
            "backbone_config.out_features", out_features, f"the decoder takes {last_stage!r} only"
        )
    decoder_width = config.get("hidden_size", _VITMATTE_HIDDEN_SIZE_DEFAULT)
    if decoder_width != values["hidden_size"]:
        raise _refuse(
            "hidden_size",
            decoder_width,
            f"the decoder takes the backbone's width ({values['hidden_size']})",
        )
    for name, (_, default) in _VITMATTE_FIELDS.items():
        values[name] = list(config.get(name, default))
    return values


def hf_config_overrides(config: Mapping[str, Any]) -> list[str]:
    """The ``configs/ViTMatte_S_Com.py`` overrides that build the architecture of a transformers
    ``VitMatteConfig`` (a ``config.json`` as a dict).

    Args:
        config: the parsed ``config.json``; missing fields take transformers' defaults.

    Returns:
        ``key=value`` overrides, e.g. ``model.backbone.embed_dim=384``, one per mapped field.

    Raises:
        UnsupportedArchitectureError: a field without a counterpart here, or with a value this
            project's model does not implement; the message names the field.
    """
    values = _hf_fields(config)
    fields = {**_VITDET_FIELDS, **_VITMATTE_FIELDS}
    return [f"model.{fields[name][0]}={value!r}" for name, value in values.items()]


def _shape(state: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    return tuple(state[key].shape)


def _indexed(state: Mapping[str, torch.Tensor], template: str) -> list[int]:
    """The indexes ``i`` (sorted) for which some key starts with ``template.format(i)``."""
    pattern = re.compile(r"(\d+)".join(re.escape(part) for part in template.split("{}")))
    return sorted({int(match.group(1)) for key in state if (match := pattern.match(key))})


def _weight_fields(state: Mapping[str, torch.Tensor]) -> list[tuple[str, Any, str]]:
    """The ``config.json`` fields that the shapes of ViTMatte weights (official keys) determine:
    ``(field, value, the tensors that show it)``, the backbone's width first.

    Fields without the tensors that show them (no ``backbone.pos_embed``: no pretraining size)
    are left out; the window layout is checked by :func:`_window_mismatch`.
    """
    if _PATCH_KEY not in state or len(_shape(state, _PATCH_KEY)) != 4:
        return []
    width, _, patch, _ = _shape(state, _PATCH_KEY)
    patch_shows = f"{_PATCH_KEY} {list(_shape(state, _PATCH_KEY))}"
    blocks = _indexed(state, _BLOCK_PREFIX)
    fields = [("hidden_size", width, patch_shows), ("patch_size", patch, patch_shows)]
    if blocks:
        shows = f"{_BLOCK_PREFIX.format(blocks[0])}* .. {_BLOCK_PREFIX.format(blocks[-1])}*"
        fields.append(("num_hidden_layers", blocks[-1] + 1, shows))
    if _FC1_KEY in state:
        hidden = _shape(state, _FC1_KEY)[0]
        fields.append(("mlp_ratio", hidden / width, f"{_FC1_KEY} {list(_shape(state, _FC1_KEY))}"))
    for name, key in (
        ("qkv_bias", _QKV_BIAS_KEY),
        ("use_absolute_position_embeddings", _POS_KEY),
        ("use_relative_position_embeddings", _REL_POS_KEY.format(0)),
    ):
        fields.append((name, key in state, f"{key} {'present' if key in state else 'absent'}"))
    if _POS_KEY in state:  # [1, 1 + (pretrain_image_size / patch) ** 2, C], class token first
        side = math.isqrt(_shape(state, _POS_KEY)[1] - 1)
        shows = f"{_POS_KEY} {list(_shape(state, _POS_KEY))}"
        fields.append(("pretrain_image_size", side * patch, shows))
    rel_pos = _REL_POS_KEY.format(0)
    if rel_pos in state:  # [2 * size - 1, C / heads]
        head_dim = _shape(state, rel_pos)[1]
        shows = f"{rel_pos} {list(_shape(state, rel_pos))}"
        fields.append(("num_attention_heads", width // head_dim if head_dim else 0, shows))
    residual = _indexed(state, _RESIDUAL_PREFIX)
    fields.append(("residual_block_indices", residual, f"{_RESIDUAL_PREFIX.format('<i>')}*"))
    for name, template in (
        ("convstream_hidden_sizes", _CONVSTREAM_KEY),
        ("fusion_hidden_sizes", _FUSION_KEY),
    ):
        widths = [_shape(state, template.format(i))[0] for i in _indexed(state, template)]
        fields.append((name, widths, template.format("<i>")))
    return fields


def _window_mismatch(
    fields: Mapping[str, Any], state: Mapping[str, torch.Tensor]
) -> tuple[str, Any, str] | None:
    """The window-layout field (``window_size``, ``image_size`` or ``window_block_indices``)
    that the rel-pos tables contradict, as ``(field, value shown or None, tensors)``; None if
    they agree (or there are none)."""
    patch = fields["patch_size"]
    sizes = {}  # block -> token grid side of its rel-pos table [2 * side - 1, head_dim]
    for block in range(fields["num_hidden_layers"]):
        key = _REL_POS_KEY.format(block)
        if key in state:
            sizes[block] = (_shape(state, key)[0] + 1) // 2
    # A window size of 0 makes every block global (transformers' VitDet and this ViT alike).
    windows = set(fields["window_block_indices"]) if fields["window_size"] else set()
    expected = {
        b: fields["window_size"] if b in windows else fields["image_size"] // patch for b in sizes
    }
    if sizes == expected:
        return None
    shows = f"{_REL_POS_KEY.format('<i>')}: grids {[sizes[b] for b in sorted(sizes)]} per block"
    in_windows = {sizes[b] for b in sizes if b in windows}
    in_global = {sizes[b] for b in sizes if b not in windows}
    if len(in_windows) <= 1 and len(in_global) <= 1:  # the layout holds; a size differs
        if in_global and in_global != {fields["image_size"] // patch}:
            return "image_size", in_global.pop() * patch, shows
        return "window_size", in_windows.pop(), shows
    return "window_block_indices", None, shows


def _claimed(field_name: str, value: Any) -> str:
    where = "" if field_name in _VITMATTE_FIELDS else "backbone_config."
    return f"config.json field {where}{field_name}={value!r}"


def check_config_fits_weights(
    config: Mapping[str, Any], state: Mapping[str, torch.Tensor], config_path: Path | str
) -> None:
    """Refuse a ``config.json`` that describes other shapes than its weights have.

    Args:
        config: the parsed ``config.json``.
        state: the folder's weights, official keys.
        config_path: the file, for the message.

    Raises:
        ConfigMismatchError: naming the first field (width first, then depth, patch, MLP ratio,
            heads, ...) whose value the tensors contradict, the value they show and the tensors.
        UnsupportedArchitectureError: see :func:`hf_config_overrides`.
    """
    fields = _hf_fields(config)
    for name, shown, tensors in _weight_fields(state):
        if fields[name] != shown:
            raise ConfigMismatchError(
                f"{config_path}: {_claimed(name, fields[name])}, but the weights have "
                f"{name}={shown!r} ({tensors}): config.json does not describe these weights"
            )
    mismatch = _window_mismatch(fields, state)
    if mismatch is not None:
        name, shown, tensors = mismatch
        have = f"{name}={shown!r}" if shown is not None else f"another {name}"
        raise ConfigMismatchError(
            f"{config_path}: {_claimed(name, fields[name])}, but the weights have {have} "
            f"({tensors}): config.json does not describe these weights"
        )


def _config_value(model: DictConfig, key: str) -> Any:
    """``model.<key>`` of a config, resolved; the constructor's default where the config does
    not set it (``backbone.pretrain_img_size`` -> ``ViT``'s 224)."""
    node_key, _, name = key.rpartition(".")
    node = OmegaConf.select(model, node_key)
    if name in node:
        value = OmegaConf.select(node, name)
        return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    target = hydra.utils.get_object(node["_target_"])
    return inspect.signature(target).parameters[name].default


def hf_config(model: DictConfig) -> dict[str, Any]:
    """transformers' ``config.json`` for the ``model`` node of a ViTMatte config: the inverse of
    :func:`hf_config_overrides`.

    Raises:
        UnsupportedArchitectureError: a config value transformers' VitMatte cannot express
            (routing on, other input channels, ...); the message names the config key.
    """
    for key, required in _CONFIG_FIXED.items():
        value = _config_value(model, key)
        if value != required:
            raise UnsupportedArchitectureError(
                f"model.{key}={value!r}: transformers' VitMatte only has {required!r}"
            )
    backbone = {name: _config_value(model, key) for name, (key, _) in _VITDET_FIELDS.items()}
    backbone["window_block_indices"] = list(backbone["window_block_indices"])
    backbone["residual_block_indices"] = list(backbone["residual_block_indices"])
    depth = backbone["num_hidden_layers"]
    backbone.update(
        {name: required for name, (required, _) in _VITDET_FIXED.items()},
        out_features=[f"stage{depth}"],
        out_indices=[depth],
    )
    config = {name: required for name, (required, _) in _VITMATTE_FIXED.items()}
    config.update(
        {name: list(_config_value(model, key)) for name, (key, _) in _VITMATTE_FIELDS.items()},
        architectures=["VitMatteForImageMatting"],
        hidden_size=backbone["hidden_size"],
        backbone_config=backbone,
    )
    return config


def _inside(folder: Path, name: Any, named_by: Path) -> Path:
    """``folder / name`` for a file name that ``named_by`` gives, if it stays inside ``folder``:
    a relative path without ``..`` that resolves (symbolic links followed) inside ``folder``, or,
    for a huggingface_hub download, inside the repository's ``blobs`` folder of its cache, where
    the files of a ``snapshots/<revision>`` folder link to.

    Raises:
        UnsafeShardPathError: naming ``named_by``, the name and where it leads.
    """
    if not isinstance(name, str) or not name:
        raise UnsafeShardPathError(f"{named_by}: {name!r} is not a file name")
    path = Path(name)
    if path.is_absolute() or ".." in path.parts:
        raise UnsafeShardPathError(
            f"{named_by} names {name!r}, outside the checkpoint folder {folder}: weight files "
            "must be inside it (a relative path without '..')"
        )
    resolved = (folder / path).resolve()
    roots = [folder.resolve()]
    if folder.resolve().parent.name == HUB_SNAPSHOTS_DIR:
        roots.append(folder.resolve().parents[1] / HUB_BLOBS_DIR)
    if not any(resolved.is_relative_to(root) for root in roots):
        raise UnsafeShardPathError(
            f"{named_by} names {name!r}, a symbolic link to {resolved}, outside the checkpoint "
            f"folder {folder}: weight files must be inside it"
        )
    return folder / path


def _shard_names(index: Path) -> list[str]:
    """The weight files a ``*.index.json`` maps the tensors to (each once, sorted)."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = set(weight_map.values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index}: not a readable index with a weight_map ({exc!r})") from exc
    return sorted(names, key=str)


def _read_hf_state_dict(folder: Path, *, trusted: bool) -> dict[str, torch.Tensor]:
    """The tensors of a save_pretrained folder's weight file (or shards), transformers keys.

    Raises:
        UnsafeShardPathError: a weight file (an index's ``weight_map`` entry) outside ``folder``.
    """
    for name in HF_WEIGHT_FILES:
        if not (folder / name).is_file():
            continue
        path = _inside(folder, name, folder)
        if name.endswith(HF_INDEX_SUFFIX):
            paths = [_inside(folder, shard, path) for shard in _shard_names(path)]
        else:
            paths = [path]
        state: dict[str, torch.Tensor] = {}
        for shard in paths:
            state.update(load_checkpoint(shard, trusted=trusted)["model"])
        return state
    raise FileNotFoundError(
        f"{folder}: no weights of a save_pretrained folder ({', '.join(HF_WEIGHT_FILES)})"
    )


def _architecture_state(overrides: Sequence[str]) -> dict[str, torch.Tensor]:
    """The state dict (meta tensors) of :data:`VITMATTE_CONFIG` with ``overrides``."""
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(VITMATTE_CONFIG)), list(overrides))
    with torch.device("meta"):
        return instantiate(cfg.model).state_dict()


def _load_hf_folder(folder: Path, *, trusted: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official-layout state dict and architecture overrides of a save_pretrained folder, the
    config checked against the weights and the weights' values checked.

    Raises:
        ConfigMismatchError: ``config.json`` describes other shapes than the weights have.
        UnsafeShardPathError: a weight file outside the folder.
        InvalidWeightsError: a tensor that is NaN, Inf, or not floating point where the
            model's is.
    """
    config_path = _inside(folder, HF_CONFIG_FILE, folder)
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_path}: not a readable config.json ({exc})") from exc
    try:
        overrides = hf_config_overrides(config)
    except UnsupportedArchitectureError as exc:
        raise UnsupportedArchitectureError(f"{config_path}: {exc}") from exc
    hf_state = _read_hf_state_dict(folder, trusted=trusted)
    state = {hf_to_official_key(key): value for key, value in hf_state.items()}
    foreign = [k for k in state if not k.startswith(_CONVERTIBLE_PREFIXES)]
    if foreign:
        raise CheckpointError(
            f"{folder}: weights outside the ViTMatte backbone and decoder: {', '.join(foreign[:8])}"
        )
    check_config_fits_weights(config, state, config_path)
    architecture = _architecture_state(overrides)
    _check_fits(state, architecture, f"the architecture of {config_path}")
    check_weights(state, folder, integer_keys=non_floating_keys(architecture))
    return state, overrides


def _download(hub_id: str) -> Path:
    """A hub repository's config and weights, downloaded (or found in the cache)."""
    try:
        return Path(
            huggingface_hub.snapshot_download(repo_id=hub_id, allow_patterns=HF_DOWNLOAD_PATTERNS)
        )
    except Exception as exc:  # network, authentication and missing-repository errors alike
        raise FileNotFoundError(
            f"{hub_id}: not a local file or folder, and downloading it from the Hugging Face "
            f"hub failed ({exc})"
        ) from exc


def load_weights(source: str | Path, *, trusted: bool = False) -> LoadedWeights:
    """Read ViTMatte (or MEMatte) weights in any supported form, in the official layout.

    Args:
        source: a ``.pth`` or ``.safetensors`` file, a save_pretrained folder, or a hub id.
        trusted: also read ``.pth`` / ``.bin`` files that pickle objects other than tensors.

    Raises:
        FileNotFoundError: no such file or folder, and not a downloadable hub id.
        CheckpointError: an unreadable file or a folder without transformers weights.
        UnsupportedArchitectureError: a transformers architecture this project cannot build.
    """
    path = Path(source)
    if path.is_file():
        kind = "safetensors" if path.suffix == SAFETENSORS_SUFFIX else "pth"
        checkpoint = load_checkpoint(path, trusted=trusted)
        check_weights(clean_state_dict(checkpoint["model"]), path, integer_keys=_shipped_integers())
        return LoadedWeights(checkpoint, str(source), kind)
    if not path.is_dir():
        if not _HUB_ID.match(str(source)) or path.suffix in (PTH_SUFFIX, SAFETENSORS_SUFFIX):
            raise FileNotFoundError(f"{source}: no such checkpoint file or folder")
        path = _download(str(source))
    state, overrides = _load_hf_folder(path, trusted=trusted)
    return LoadedWeights({"model": state}, str(source), "huggingface", overrides)


def _shipped_integers() -> frozenset[str]:
    """The keys where a shipped config's model holds an integer tensor (BatchNorm's
    ``num_batches_tracked``): a file's config is not known, so any of them may."""
    return frozenset().union(*(non_floating_keys(config_state(c)) for c in shipped_configs()))


def _independent_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, cloned where they share storage (safetensors stores each once)."""
    seen, out = set(), {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            kind = type(value).__name__
            raise CheckpointError(f"state-dict entry {key} is a {kind}, not a tensor")
        value = value.contiguous()
        storage = value.untyped_storage().data_ptr()
        out[key] = value.clone() if storage in seen else value
        seen.add(storage)
    return out


def save_weights(weights: LoadedWeights, destination: str | Path) -> None:
    """Write the model state dict as ``.pth`` (``{"model": ...}``) or ``.safetensors``.

    Raises:
        ValueError: another destination suffix.
    """
    destination = Path(destination)
    state = weights.checkpoint["model"]
    dropped = sorted(k for k in weights.checkpoint if k != "model")
    if dropped:
        logger.info("not converted (not model weights): %s", ", ".join(dropped))
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.suffix == PTH_SUFFIX:
        atomic_write(destination, lambda file: torch.save({"model": dict(state)}, file))
    elif destination.suffix == SAFETENSORS_SUFFIX:
        metadata = {
            "format": "pt",
            "source": weights.source,
            "source_format": weights.source_format,
            "converted_by": "pretrained/convert.py",
        }
        if weights.overrides:
            metadata["architecture"] = " ".join(weights.overrides)
        data = safetensors.torch.save(_independent_tensors(state), metadata=metadata)
        atomic_write(destination, lambda file: file.write(data))
    else:
        raise ValueError(
            f"{destination}: the destination must end in {PTH_SUFFIX} or {SAFETENSORS_SUFFIX}"
        )


def _check_fits(
    state: Mapping[str, torch.Tensor], architecture: Mapping[str, torch.Tensor], what: str
) -> None:
    """Raise ``CheckpointError`` unless ``state`` holds exactly the weights of ``architecture``
    (a state dict, meta tensors will do), shapes included."""
    problems = sorted(architecture.keys() ^ state.keys())
    problems += [
        k for k in architecture.keys() & state.keys() if architecture[k].shape != state[k].shape
    ]
    if problems:
        raise CheckpointError(
            f"the weights do not fit {what} ({len(problems)} keys missing, unexpected or "
            f"of another shape): {', '.join(problems[:8])}"
        )


def save_hf_folder(
    weights: LoadedWeights, folder: str | Path, config_file: str, overrides: Sequence[str] = ()
) -> None:
    """Write a transformers ``save_pretrained`` folder: ``config.json`` of ``config_file``'s
    architecture (:func:`hf_config`) and ``model.safetensors`` with transformers' key names.

    Raises:
        UnsupportedArchitectureError: a config transformers' VitMatte cannot express.
        CheckpointError: weights that do not fit the config.
    """
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(config_file)), list(overrides))
    config = hf_config(cfg.model)
    state = weights.checkpoint["model"]
    with torch.device("meta"):
        _check_fits(state, instantiate(cfg.model).state_dict(), config_file)
    hf_state = {official_to_hf_key(key): value for key, value in state.items()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = safetensors.torch.save(_independent_tensors(hf_state), metadata={"format": "pt"})
    atomic_write(folder / HF_WEIGHTS_FILE, lambda file: file.write(data))
    text = json.dumps(config, indent=2) + "\n"
    atomic_write(folder / HF_CONFIG_FILE, lambda file: file.write(text.encode()))


def convert(
    source: str | Path,
    destination: str | Path,
    *,
    trusted: bool = False,
    config_file: str | None = None,
    overrides: Sequence[str] = (),
) -> LoadedWeights:
    """:func:`load_weights` from ``source``; :func:`save_weights` to a ``.pth`` or
    ``.safetensors`` ``destination``, :func:`save_hf_folder` to a folder (a path without a
    suffix, or an existing folder), which needs ``config_file``."""
    weights = load_weights(source, trusted=trusted)
    destination = Path(destination)
    if destination.suffix in (PTH_SUFFIX, SAFETENSORS_SUFFIX):
        save_weights(weights, destination)
    elif destination.suffix and not destination.is_dir():
        raise ValueError(
            f"{destination}: the destination must end in {PTH_SUFFIX} or {SAFETENSORS_SUFFIX}, "
            "or be a folder (no suffix) for a transformers save_pretrained folder"
        )
    elif config_file is None:
        raise ValueError(
            f"{destination}: a transformers folder needs --config-file (its architecture); "
            f"other destinations end in {PTH_SUFFIX} or {SAFETENSORS_SUFFIX}"
        )
    else:
        save_hf_folder(weights, destination, config_file, overrides)
    return weights


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", help=".pth, .safetensors, save_pretrained folder or hub id")
    parser.add_argument(
        "destination", type=Path, help=".pth, .safetensors or a transformers folder"
    )
    parser.add_argument(
        "--config-file", help="the ViTMatte config of a transformers folder destination"
    )
    add_trust_checkpoint_argument(parser)
    parser.add_argument("opts", nargs="*", help="config overrides key=value (--config-file)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Convert; return the exit status (1: an unreadable or unsupported source)."""
    args = build_parser().parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        weights = convert(
            args.source,
            args.destination,
            trusted=args.trust_checkpoint,
            config_file=args.config_file,
            overrides=args.opts,
        )
    except (FileNotFoundError, ValueError) as exc:
        logger.error("error: %s", exc)
        return 1
    logger.info(
        "wrote %s (%d tensors from %s, %s)",
        args.destination,
        len(weights.checkpoint["model"]),
        weights.source,
        weights.source_format,
    )
    if weights.overrides:
        listed = "\n  ".join(weights.overrides)
        logger.info("architecture, as configs/ViTMatte_S_Com.py overrides:\n  %s", listed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
