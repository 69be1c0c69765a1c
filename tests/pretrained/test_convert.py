"""pretrained/convert.py: transformers VitMatte -> official layout (equal to transformers), the
safetensors round trip, architecture refusals, hub ids, and preprocess.py on a transformers
folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

from engine.checkpoint import CheckpointError
from engine.config import LazyConfig, instantiate
from pretrained import convert as convert_module
from pretrained import preprocess
from pretrained.convert import (
    UnsupportedArchitectureError,
    convert,
    hf_config_overrides,
    hf_to_official_key,
    load_weights,
    official_to_hf_key,
)
from tests.helpers import (
    CONFIG_S,
    REPO_ROOT,
    build_tiny_mematte,
    official_vitmatte_shapes,
    randomize_,
    read_manifest,
)

transformers = pytest.importorskip("transformers")

VITMATTE_S = REPO_ROOT / "configs" / "ViTMatte_S_Com.py"
HF_TOLERANCE = 1e-4
# The hub's vitmatte-small-composition-1k architecture (transformers' convert_vitmatte_to_hf.py).
HF_SMALL = dict(
    num_channels=4,
    image_size=512,
    pretrain_image_size=224,
    patch_size=16,
    hidden_size=384,
    num_attention_heads=6,
    use_absolute_position_embeddings=True,
    use_relative_position_embeddings=True,
    window_size=14,
    window_block_indices=[0, 1, 3, 4, 6, 7, 9, 10],
    residual_block_indices=[2, 5, 8, 11],
    out_features=["stage12"],
)
# A tiny architecture of the same kind: 64-d, 4 blocks, windows in blocks 0 and 2.
HF_TINY = dict(
    HF_SMALL,
    image_size=64,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=2,
    window_size=4,
    window_block_indices=[0, 2],
    residual_block_indices=[1, 3],
    out_features=["stage4"],
)
TINY_DECODER = dict(convstream_hidden_sizes=[8, 16, 32], fusion_hidden_sizes=[32, 16, 16, 8])
# transformers' default decoder widths, as lists (transformers 5 fails on its own tuple defaults).
SMALL_DECODER = dict(convstream_hidden_sizes=[48, 96, 192], fusion_hidden_sizes=[256, 128, 64, 32])


def hf_config(backbone: dict, decoder: dict):
    return transformers.VitMatteConfig(
        backbone_config=transformers.VitDetConfig(**backbone),
        hidden_size=backbone["hidden_size"],
        **decoder,
    )


def hf_model(backbone: dict, decoder: dict, seed: int = 0) -> torch.nn.Module:
    """A VitMatteForImageMatting with every parameter and BatchNorm statistic random."""
    model = randomize_(transformers.VitMatteForImageMatting(hf_config(backbone, decoder)), seed)
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=gen))
            module.running_var.copy_(1 + 0.5 * torch.rand(module.num_features, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def tiny_hf_folder(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("hf") / "vitmatte-tiny"
    model = hf_model(HF_TINY, TINY_DECODER)
    model.save_pretrained(folder)
    return folder, model


def vitmatte_from(state: dict, overrides: list[str]) -> torch.nn.Module:
    """configs/ViTMatte_S_Com.py with ``overrides``, loaded strictly (no missing or unexpected)."""
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(VITMATTE_S)), overrides)
    model = instantiate(cfg.model).eval()
    model.load_state_dict(state, strict=True)
    return model


def test_key_translation_maps_the_official_vitmatte_keys_onto_transformers(golden_dir):
    official = official_vitmatte_shapes(golden_dir / "keys_S.txt")
    with torch.device("meta"):  # names and shapes only
        hf = transformers.VitMatteForImageMatting(hf_config(HF_SMALL, SMALL_DECODER)).state_dict()
    translated = {official_to_hf_key(k): shape for k, shape in official.items()}
    assert translated == {k: list(v.shape) for k, v in hf.items()}
    assert all(hf_to_official_key(official_to_hf_key(k)) == k for k in official)
    assert official_to_hf_key("backbone.blocks.3.attn.rel_pos_h") == (
        "backbone.encoder.layer.3.attention.rel_pos_h"
    )
    assert hf_to_official_key("decoder.fusion_blocks.0.conv.batch_norm.running_var") == (
        "decoder.fusion_blks.0.conv.bn.running_var"
    )


def test_transformers_weights_predict_the_same_alpha_after_conversion(tiny_hf_folder, tmp_path):
    folder, hf = tiny_hf_folder
    weights = convert(folder, tmp_path / "vitmatte.pth")
    assert weights.source_format == "huggingface"
    state = torch.load(tmp_path / "vitmatte.pth", weights_only=True)["model"]
    model = vitmatte_from(state, weights.overrides)
    gen = torch.Generator().manual_seed(1)
    for height, width in ((64, 64), (96, 160), (80, 48)):
        images = torch.randn(1, 4, height, width, generator=gen)  # a normalised input
        with torch.no_grad():
            expected = hf(pixel_values=images).alphas
            features = model.backbone(images).features
            ours = model.decoder(features, images)["phas"]
        assert (ours - expected).abs().max().item() <= HF_TOLERANCE


def test_safetensors_round_trip_is_bit_exact_and_records_the_source(tmp_path):
    model = build_tiny_mematte(with_teacher=True)
    state = model.state_dict()
    state["teacher_backbone.pos_embed"] = state["backbone.pos_embed"]  # shared, as preprocess.py
    original = tmp_path / "mematte.pth"
    torch.save({"model": state, "iteration": 3}, original)
    convert(original, tmp_path / "mematte.safetensors")
    convert(tmp_path / "mematte.safetensors", tmp_path / "back.pth")
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert set(back) == {"model"} and back["model"].keys() == state.keys()
    for key, value in state.items():
        assert back["model"][key].dtype == value.dtype, key
        assert torch.equal(back["model"][key], value), key
    with safetensors.safe_open(tmp_path / "mematte.safetensors", "pt") as file:
        metadata = file.metadata()
    assert metadata["source"] == str(original) and metadata["source_format"] == "pth"


def test_hf_architecture_becomes_config_overrides(tiny_hf_folder, tmp_path):
    folder, _ = tiny_hf_folder
    weights = convert(folder, tmp_path / "tiny.safetensors")
    assert "model.backbone.embed_dim=64" in weights.overrides
    assert "model.backbone.window_block_indexes=[0, 2]" in weights.overrides
    assert "model.decoder.fusion_out=[32, 16, 16, 8]" in weights.overrides
    with safetensors.safe_open(tmp_path / "tiny.safetensors", "pt") as file:
        metadata = file.metadata()
    assert metadata["source_format"] == "huggingface"
    assert metadata["architecture"] == " ".join(weights.overrides)


def _published(hidden_size: int, backbone: dict) -> dict:
    """A config.json as published on the hub (hustvl/vitmatte-*): only non-default fields."""
    return {
        "architectures": ["VitMatteForImageMatting"],
        "backbone_config": {
            **backbone,
            "image_size": 512,
            "model_type": "vitdet",
            "num_channels": 4,
            "out_features": ["stage12"],
            "out_indices": [12],
            "residual_block_indices": [2, 5, 8, 11],
            "use_relative_position_embeddings": True,
            "window_block_indices": [0, 1, 3, 4, 6, 7, 9, 10],
            "window_size": 14,
        },
        "convstream_hidden_sizes": [48, 96, 192],
        "fusion_hidden_sizes": [256, 128, 64, 32],
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "model_type": "vitmatte",
        "torch_dtype": "float32",
    }


@pytest.mark.parametrize(
    ("published", "config"),
    [
        (_published(384, {"hidden_size": 384, "num_attention_heads": 6}), VITMATTE_S),
        (_published(768, {}), REPO_ROOT / "configs" / "ViTMatte_B_Com.py"),  # ViT-B: defaults
    ],
    ids=["small", "base"],
)
def test_published_hub_configs_are_the_vitmatte_configs(published, config):
    converted = LazyConfig.apply_overrides(
        LazyConfig.load(str(VITMATTE_S)), hf_config_overrides(published)
    )
    with torch.device("meta"):
        ours, expected = (
            instantiate(converted.model),
            instantiate(LazyConfig.load(str(config)).model),
        )
    assert str(ours) == str(expected)
    shapes = [{k: v.shape for k, v in m.state_dict().items()} for m in (ours, expected)]
    assert shapes[0] == shapes[1]


def _plain(value):
    return list(value) if isinstance(value, list | tuple) else value


def test_omitted_fields_take_the_transformers_defaults():
    vitdet, vitmatte = transformers.VitDetConfig(), transformers.VitMatteConfig()
    for name, (_, default) in convert_module._VITDET_FIELDS.items():
        assert _plain(getattr(vitdet, name)) == default, name
    for name, (_, default) in convert_module._VITMATTE_FIELDS.items():
        assert _plain(getattr(vitmatte, name)) == default, name
    for name, (_, default) in convert_module._VITDET_FIXED.items():
        assert default is None or getattr(vitdet, name) == default, name
    assert vitmatte.batch_norm_eps == 1e-5 and vitmatte.hidden_size == 384


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"hidden_act": "relu"}, "backbone_config.hidden_act"),
        ({"num_channels": 3}, "backbone_config.num_channels"),
        ({"dropout_prob": 0.1}, "backbone_config.dropout_prob"),
        ({"out_features": ["stage2"]}, "backbone_config.out_features"),
        ({"image_size": [512, 768]}, "backbone_config.image_size"),
    ],
)
def test_architectures_that_do_not_map_are_refused_naming_the_field(change, field):
    config = {"model_type": "vitmatte", "hidden_size": 384}
    config["backbone_config"] = {"model_type": "vitdet", **HF_SMALL, **change}
    with pytest.raises(UnsupportedArchitectureError, match=rf"{field}="):
        hf_config_overrides(config)
    config["backbone_config"] = {"model_type": "vitdet", **HF_SMALL}
    with pytest.raises(UnsupportedArchitectureError, match=r"field hidden_size=768"):
        hf_config_overrides({**config, "hidden_size": 768})
    with pytest.raises(UnsupportedArchitectureError, match=r"field model_type='vitdet'"):
        hf_config_overrides({**config, "model_type": "vitdet"})


def test_unreadable_sources_are_clear_errors(tiny_hf_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth: no such"):
        load_weights(tmp_path / "missing.pth")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "vitmatte"}))
    with pytest.raises(UnsupportedArchitectureError, match="config.json.*backbone_config"):
        load_weights(empty)
    folder, _ = tiny_hf_folder
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no weights of a save_pretrained folder"):
        load_weights(no_weights)
    with pytest.raises(ValueError, match="must end in .pth or .safetensors"):
        convert(folder, tmp_path / "out.ckpt")
    assert convert_module.main([str(tmp_path / "missing.pth"), str(tmp_path / "x.pth")]) == 1


def test_hub_ids_are_downloaded_with_huggingface_hub(tiny_hf_folder, monkeypatch, tmp_path):
    folder, _ = tiny_hf_folder
    calls = []

    def snapshot_download(repo_id, allow_patterns):
        calls.append((repo_id, allow_patterns))
        return str(folder)

    monkeypatch.setattr(convert_module.huggingface_hub, "snapshot_download", snapshot_download)
    weights = load_weights("hustvl/vitmatte-tiny")
    assert calls == [("hustvl/vitmatte-tiny", convert_module.HF_DOWNLOAD_PATTERNS)]
    assert weights.source == "hustvl/vitmatte-tiny" and weights.overrides

    def offline(repo_id, allow_patterns):
        raise OSError("no network")

    monkeypatch.setattr(convert_module.huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="hustvl/vitmatte-tiny: .*hub failed"):
        load_weights("hustvl/vitmatte-tiny")


def test_sharded_and_pytorch_bin_folders_read_alike(tiny_hf_folder, tmp_path):
    folder, hf = tiny_hf_folder
    expected = load_weights(folder).checkpoint["model"]
    sharded, bin_folder = tmp_path / "sharded", tmp_path / "bin"
    hf.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    bin_folder.mkdir()  # the pre-safetensors layout: a bare state dict in pytorch_model.bin
    (bin_folder / "config.json").write_text((folder / "config.json").read_text())
    torch.save(hf.state_dict(), bin_folder / "pytorch_model.bin")
    for other in (sharded, bin_folder):
        state = load_weights(other).checkpoint["model"]
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], v) for k, v in expected.items())


@pytest.mark.slow
def test_preprocess_of_a_transformers_folder_gives_the_mematte_s_keys(golden_dir, tmp_path):
    folder = tmp_path / "vitmatte-small"
    hf_model(HF_SMALL, SMALL_DECODER).save_pretrained(folder)
    output = tmp_path / "with_teacher.pth"
    assert preprocess.main(["--input", str(folder), "--output", str(output)]) == 0
    written = torch.load(output, weights_only=True)["model"]
    official = read_manifest(golden_dir / "keys_S.txt")
    # MEMatte-S with teacher, less what ViTMatte lacks (routers, LTRMs), plus the rel-pos tables
    # of the global blocks, which ViTMatte has and the MEMatte student does not.
    expected = {
        k: v for k, v in official.items() if ".routers." not in k and ".efficient_block." not in k
    }
    for key, shape in official.items():
        block = key.split(".")[2] if key.startswith("teacher_backbone.blocks.") else None
        if block in {"2", "5", "8", "11"} and ".attn.rel_pos_" in key:
            expected[key.removeprefix("teacher_")] = shape
    assert {k: list(v.shape) for k, v in written.items()} == expected
    cfg = LazyConfig.load(str(CONFIG_S))
    with torch.device("meta"):
        model = instantiate(cfg.model)
    result = model.load_state_dict(written, strict=False, assign=True)
    assert all(".routers." in k or ".efficient_block." in k for k in result.missing_keys)
    assert sorted(result.unexpected_keys) == sorted(set(expected) - set(official))
    with pytest.raises(CheckpointError, match="already"):
        preprocess.convert(output, tmp_path / "again.pth")


@pytest.mark.slow
def test_official_weights_convert_back_to_a_transformers_folder(tiny_hf_folder, tmp_path):
    folder, hf = tiny_hf_folder
    official = tmp_path / "vitmatte.pth"
    weights = convert(folder, official)
    argv = [str(official), str(tmp_path / "back"), "--config-file", str(VITMATTE_S)]
    assert convert_module.main([*argv, *weights.overrides]) == 0
    reloaded, info = transformers.VitMatteForImageMatting.from_pretrained(
        tmp_path / "back", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for key, value in hf.state_dict().items():  # bit-exact round trip
        assert torch.equal(reloaded.state_dict()[key], value), key
    images = torch.randn(1, 4, 96, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(images).alphas, hf(images).alphas)
    # The architecture must be one transformers can build, and the weights must fit it.
    mematte = str(REPO_ROOT / "configs" / "MEMatte_S_topk0.25_win_global_long.py")
    with pytest.raises(UnsupportedArchitectureError, match="model.backbone.use_routing=True"):
        convert(official, tmp_path / "no", config_file=mematte)
    with pytest.raises(CheckpointError, match="do not fit"):
        convert(official, tmp_path / "no", config_file=str(VITMATTE_S))
    with pytest.raises(ValueError, match="needs --config-file"):
        convert(official, tmp_path / "no")


# --- config.json against the weights, shard paths, bad tensors ----------------------------------


def _folder_with(source: Path, destination: Path, **changes) -> Path:
    """A copy of the save_pretrained folder ``source`` whose config.json has ``changes``: keys
    ``backbone__<field>`` go into backbone_config, the others to the top level."""
    shutil.copytree(source, destination)
    config = json.loads((source / "config.json").read_text())
    for name, value in changes.items():
        if name.startswith("backbone__"):
            config["backbone_config"][name.removeprefix("backbone__")] = value
        else:
            config[name] = value
    (destination / "config.json").write_text(json.dumps(config))
    return destination


@pytest.mark.parametrize(
    ("changes", "field", "shown"),
    [
        # the attack: a 384-wide config for 64-wide weights (both widths claimed)
        (
            {"hidden_size": 384, "backbone__hidden_size": 384},
            "backbone_config.hidden_size=384",
            "hidden_size=64",
        ),
        (
            {"backbone__num_hidden_layers": 6, "backbone__out_features": ["stage6"]},
            "backbone_config.num_hidden_layers=6",
            "num_hidden_layers=4",
        ),
        ({"backbone__num_attention_heads": 4}, "num_attention_heads=4", "num_attention_heads=2"),
        ({"backbone__patch_size": 8}, "backbone_config.patch_size=8", "patch_size=16"),
        ({"backbone__mlp_ratio": 2}, "backbone_config.mlp_ratio=2", "mlp_ratio=4.0"),
        ({"backbone__window_size": 8}, "backbone_config.window_size=8", "window_size=4"),
        ({"backbone__image_size": 128}, "backbone_config.image_size=128", "image_size=64"),
        ({"backbone__pretrain_image_size": 448}, "pretrain_image_size=448", "=224"),
        ({"backbone__qkv_bias": False}, "backbone_config.qkv_bias=False", "qkv_bias=True"),
        (
            {"backbone__use_relative_position_embeddings": False},
            "use_relative_position_embeddings=False",
            "use_relative_position_embeddings=True",
        ),
        ({"backbone__residual_block_indices": [0]}, "residual_block_indices=[0]", "[1, 3]"),
        (
            {"convstream_hidden_sizes": [8, 16, 64]},
            "field convstream_hidden_sizes=[8, 16, 64]",
            "convstream_hidden_sizes=[8, 16, 32]",
        ),
        (
            {"fusion_hidden_sizes": [32, 16, 16, 4]},
            "field fusion_hidden_sizes=[32, 16, 16, 4]",
            "fusion_hidden_sizes=[32, 16, 16, 8]",
        ),
    ],
)
def test_a_config_json_that_contradicts_the_weights_is_refused_naming_the_field(
    tiny_hf_folder, tmp_path, caplog, changes, field, shown
):
    folder = _folder_with(tiny_hf_folder[0], tmp_path / "lying", **changes)
    with pytest.raises(convert_module.ConfigMismatchError) as info:
        load_weights(folder)
    message = str(info.value)
    assert str(folder / "config.json") in message and field in message, message
    assert f"the weights have {shown}" in message or shown in message, message
    output = tmp_path / "converted.pth"
    assert convert_module.main([str(folder), str(output)]) == 1  # nothing recorded
    assert not output.exists()


def _sharded(hf: torch.nn.Module, folder: Path) -> tuple[Path, dict]:
    hf.save_pretrained(folder, max_shard_size="100KB")
    index = folder / "model.safetensors.index.json"
    return index, json.loads(index.read_text())


@pytest.mark.parametrize(
    "shard", ["../outside.safetensors", "ABSOLUTE", "sub/../../outside.safetensors", "LINK"]
)
def test_shard_paths_must_stay_inside_the_checkpoint_folder(tiny_hf_folder, tmp_path, shard):
    folder = tmp_path / "sharded"
    index, content = _sharded(tiny_hf_folder[1], folder)
    first = sorted(set(content["weight_map"].values()))[0]
    outside = tmp_path / "outside.safetensors"  # a valid shard, which must not be read
    shutil.copy(folder / first, outside)
    if shard == "LINK":  # the name is inside, the file it links to is not
        (folder / first).unlink()
        (folder / first).symlink_to(outside)
        shard = first
    else:
        shard = str(outside) if shard == "ABSOLUTE" else shard
        weight_map = content["weight_map"]
        content["weight_map"] = {k: shard if v == first else v for k, v in weight_map.items()}
        index.write_text(json.dumps(content))
    with pytest.raises(convert_module.UnsafeShardPathError) as info:
        load_weights(folder)
    message = str(info.value)
    assert str(index) in message and repr(shard) in message and "outside" in message


def test_a_hub_cache_snapshot_may_link_into_its_blobs(tiny_hf_folder, tmp_path):
    """huggingface_hub's cache: snapshots/<revision>/<file> -> ../../blobs/<hash>."""
    repo = tmp_path / "models--hustvl--vitmatte-tiny"
    snapshot, blobs = repo / "snapshots" / "0123abc", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    source = tmp_path / "sharded"
    _sharded(tiny_hf_folder[1], source)
    for number, path in enumerate(sorted(source.iterdir())):
        shutil.copy(path, blobs / f"blob{number}")
        (snapshot / path.name).symlink_to(Path("..", "..", "blobs", f"blob{number}"))
    expected = load_weights(tiny_hf_folder[0]).checkpoint["model"]
    state = load_weights(snapshot).checkpoint["model"]
    assert all(torch.equal(state[k], v) for k, v in expected.items())


@pytest.mark.parametrize("kind", ["nan", "int64"])
def test_bad_tensors_in_a_transformers_folder_are_refused(tiny_hf_folder, tmp_path, kind):
    folder, hf = tiny_hf_folder
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    key = "decoder.convstream.convs.1.conv.weight"
    if kind == "nan":
        state[key].view(-1)[0] = float("nan")
    else:
        state[key] = state[key].long()
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(folder / "config.json", bad / "config.json")
    safetensors.torch.save_file(state, bad / "model.safetensors")
    problem = "holds 1 NaN" if kind == "nan" else "is int64, not floating point"
    with pytest.raises(CheckpointError, match=rf"{bad}: {key} {problem}"):
        load_weights(bad)
