"""Tests for engine/config.py: LazyCall, instantiate, LazyConfig load/overrides/save."""

import json
import textwrap
import types
from functools import partial
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, ListConfig

from engine.config import ConfigOverrideError, LazyCall, LazyConfig, instantiate
from tests.helpers import TINY_CONFIG

L = LazyCall
LN_EPS = 1e-6


def _write(path: Path, source: str) -> Path:
    """Write a dedented config file, creating its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


@pytest.fixture
def config_tree(tmp_path: Path) -> Path:
    """A configs/ folder (not a package) whose files import each other relatively.

    configs/common/model.py      model = L(SimpleNamespace)(backbone=..., decoder=...)
    configs/common/train.py      train = dict(...)          (plain dict)
    configs/base.py              from .common.model import model; from .common.train import train
    configs/variants/topk.py     from ..base import model, train; then edits them
    configs/variants/pkg.py      from ..common import model   (a folder import)
    """
    root = tmp_path / "configs"
    _write(
        root / "common" / "model.py",
        """
        from functools import partial
        from types import SimpleNamespace

        import torch.nn as nn

        from engine.config import LazyCall as L

        EMBED_DIM = 8  # a constant: not a config key

        model = L(SimpleNamespace)(
            backbone=L(SimpleNamespace)(
                embed_dim=EMBED_DIM,
                topk=0.25,
                window_block_indexes=(0, 2),
                norm_layer=partial(nn.LayerNorm, eps=1e-6),
                act_layer=nn.GELU,
            ),
            decoder=L(nn.Linear)(in_features=EMBED_DIM, out_features=1),
            pixel_mean=[123.675, 116.28, 103.53],
        )
        """,
    )
    _write(
        root / "common" / "train.py",
        """
        train = dict(max_iter=100, output_dir="output", amp=False, lr=5e-4)
        """,
    )
    _write(
        root / "base.py",
        """
        from .common.model import model
        from .common.train import train
        """,
    )
    _write(
        root / "variants" / "topk.py",
        """
        import torch.nn as nn

        from ..base import model, train

        model.backbone.topk = 0.5
        model.backbone.act_layer = nn.ReLU
        train.max_iter = 7


        def _helper():
            return None
        """,
    )
    _write(
        root / "variants" / "pkg.py",
        """
        from ..common import model as model_file

        model = model_file.model
        """,
    )
    return root


def test_lazycall_target_is_dotted_string() -> None:
    cfg = L(torch.nn.LayerNorm)(normalized_shape=4)
    assert isinstance(cfg, DictConfig)
    assert cfg._target_ == "torch.nn.LayerNorm"
    assert L(partial)()._target_ == "functools.partial"
    assert L(json.dumps)(obj=1)._target_ == "json.dumps"
    assert L("torch.nn.Identity")()._target_ == "torch.nn.Identity"


def test_lazycall_rejects_bad_targets() -> None:
    with pytest.raises(TypeError, match="callable"):
        L(3)
    with pytest.raises(ValueError, match="not importable"):
        L(lambda: None)


def test_instantiate_recursive_plain_containers() -> None:
    cfg = L(types.SimpleNamespace)(
        head=L(torch.nn.Linear)(in_features=3, out_features=2),
        window_block_indexes=(0, 1, 3),
        pixel_mean=[123.675, 116.28, 103.53],
        extra={"depth": 2, "heads": [L(torch.nn.Identity)()]},
    )
    assert isinstance(cfg.window_block_indexes, ListConfig)
    obj = instantiate(cfg)
    assert isinstance(obj, types.SimpleNamespace)
    assert isinstance(obj.head, torch.nn.Linear)
    assert obj.head.weight.shape == (2, 3)
    assert type(obj.window_block_indexes) is list
    assert obj.window_block_indexes == [0, 1, 3]
    assert type(obj.pixel_mean) is list
    assert all(type(v) is float for v in obj.pixel_mean)
    assert type(obj.extra) is dict
    assert isinstance(obj.extra["heads"][0], torch.nn.Identity)


def test_instantiate_partial_kwarg() -> None:
    cfg = L(types.SimpleNamespace)(
        norm_layer=partial(torch.nn.LayerNorm, eps=LN_EPS),
        linear=partial(torch.nn.Linear, 4, bias=False),
    )
    assert cfg.norm_layer._target_ == "torch.nn.LayerNorm"
    assert cfg.norm_layer._partial_ is True
    obj = instantiate(cfg)
    norm = obj.norm_layer(6)
    assert isinstance(norm, torch.nn.LayerNorm)
    assert norm.eps == LN_EPS
    assert norm.normalized_shape == (6,)
    linear = obj.linear(2)
    assert linear.in_features == 4 and linear.out_features == 2 and linear.bias is None


def test_instantiate_class_valued_kwarg() -> None:
    cfg = L(types.SimpleNamespace)(act_layer=torch.nn.GELU, fn=json.dumps)
    assert cfg.act_layer.path == "torch.nn.GELU"
    obj = instantiate(cfg)
    assert obj.act_layer is torch.nn.GELU
    assert obj.fn is json.dumps


def test_instantiate_plain_dict_and_non_configs() -> None:
    obj = instantiate({"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 5})
    assert isinstance(obj, torch.nn.Linear) and obj.out_features == 5
    built = instantiate([L(torch.nn.Identity)(), 3])
    assert isinstance(built[0], torch.nn.Identity) and built[1] == 3
    module = torch.nn.ReLU()
    assert instantiate(module) is module
    assert instantiate(3) == 3
    assert instantiate(None) is None


def test_load_relative_imports(config_tree: Path) -> None:
    cfg = LazyConfig.load(config_tree / "variants" / "topk.py")
    assert set(cfg) == {"model", "train"}  # modules, functions, constants, privates skipped
    assert cfg.model.backbone.topk == 0.5
    assert cfg.train.max_iter == 7  # the plain dict became a config the variant could edit
    model = instantiate(cfg.model)
    assert model.backbone.act_layer is torch.nn.ReLU
    assert model.backbone.norm_layer(8).eps == LN_EPS
    assert model.backbone.window_block_indexes == [0, 2]
    assert isinstance(model.decoder, torch.nn.Linear)

    pkg = LazyConfig.load(config_tree / "variants" / "pkg.py")
    assert pkg.model.backbone.topk == 0.25


def test_load_keys(config_tree: Path) -> None:
    path = config_tree / "base.py"
    assert LazyConfig.load(path, keys="train").max_iter == 100
    model, train = LazyConfig.load(path, keys=("model", "train"))
    assert model.backbone.embed_dim == 8 and train.lr == 5e-4
    with pytest.raises(KeyError, match="optimizer"):
        LazyConfig.load(path, keys="optimizer")


def test_loads_are_independent(config_tree: Path) -> None:
    variant = LazyConfig.load(config_tree / "variants" / "topk.py")
    first = LazyConfig.load(config_tree / "base.py")
    second = LazyConfig.load(config_tree / "base.py")
    assert variant.model.backbone.topk == 0.5
    assert first.model.backbone.topk == 0.25
    assert instantiate(first.model).backbone.act_layer is torch.nn.GELU
    first.model.backbone.topk = 0.75
    first.train.max_iter = 1
    assert second.model.backbone.topk == 0.25
    assert second.train.max_iter == 100


def test_apply_overrides(config_tree: Path) -> None:
    cfg = LazyConfig.load(config_tree / "base.py")
    out = LazyConfig.apply_overrides(
        cfg,
        [
            "train.max_iter=10",
            "train.lr=1e-4",
            "model.backbone.topk=0.5",
            "model.backbone.window_block_indexes=[0,1]",
            "train.output_dir=out/x",
            "train.amp=True",
            "model.backbone.name='vit small'",  # a new argument of a target taking **kwargs
        ],
    )
    assert out is cfg
    assert cfg.train.max_iter == 10 and type(cfg.train.max_iter) is int
    assert cfg.train.lr == 1e-4
    assert cfg.model.backbone.topk == 0.5
    assert instantiate(cfg.model).backbone.window_block_indexes == [0, 1]
    assert cfg.train.output_dir == "out/x"
    assert cfg.train.amp is True
    assert cfg.model.backbone.name == "vit small"


def test_apply_overrides_keeps_the_legitimate_cases(config_tree: Path) -> None:
    cfg = LazyConfig.load(config_tree / "base.py")
    cfg.train.batch_size = "???"
    cfg.train.evaluator = None
    LazyConfig.apply_overrides(
        cfg,
        [
            "train.lr=1",  # an int where a float is expected
            "train.batch_size=4",  # a value a recipe must set
            "train.evaluator={'_target_': 'torch.nn.Identity'}",  # a node replacing None
            "train.output_dir=2024",  # a number typed for a string stays the text
            "model.decoder.out_features=${train.batch_size}",  # an interpolation
            "model.decoder.bias=False",  # a new argument that the target accepts
            "model.backbone.window_block_indexes=(3,)",  # a tuple for a list
            "model.backbone=None",  # None replaces anything
        ],
    )
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float
    assert cfg.train.batch_size == 4
    assert isinstance(instantiate(cfg.train.evaluator), torch.nn.Identity)
    assert cfg.train.output_dir == "2024"
    assert cfg.model.decoder.out_features == 4
    assert cfg.model.backbone is None
    assert instantiate(cfg.model.decoder).bias is None


def test_a_dict_merges_into_a_node_unless_it_names_another_target(config_tree: Path) -> None:
    cfg = LazyConfig.load(config_tree / "base.py")
    LazyConfig.apply_overrides(cfg, ["model.decoder={'out_features': 3}"])
    assert cfg.model.decoder.in_features == 8 and cfg.model.decoder.out_features == 3
    LazyConfig.apply_overrides(cfg, ["model.decoder={'_target_': 'torch.nn.Identity'}"])
    assert set(cfg.model.decoder) == {"_target_"}


def test_the_official_logging_key_is_an_alias() -> None:
    cfg = LazyConfig.load(TINY_CONFIG)
    LazyConfig.apply_overrides(cfg, ["train.log_loss_period=7"])
    assert cfg.train.log_period == 7 and "log_loss_period" not in cfg.train


@pytest.mark.parametrize(
    ("override", "match"),
    [
        (
            "model.backbone.topkk=0.5",
            r"modeling.ViT takes no argument 'topkk' \(did you mean topk\?\)",
        ),
        ("dataloader.train.batch_sise=2", r"did you mean batch_size\?"),
        ("model.backbone.topk='0.5'", r"model.backbone.topk takes a float \(now 0.25\)"),
    ],
)
def test_the_real_configs_reject_typos_and_wrong_types(override: str, match: str) -> None:
    cfg = LazyConfig.load(TINY_CONFIG)
    with pytest.raises(ConfigOverrideError, match=match):
        LazyConfig.apply_overrides(cfg, [override])
    # The official keys that our configs do not list but the model takes are accepted.
    LazyConfig.apply_overrides(cfg, ["model.backbone.use_act_checkpoint=True"])


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("modle.backbone.topk=0.5", r"modle is not in the config \(did you mean model\?\)"),
        ("train.max_iters=5", r"train.max_iters is not in the config \(did you mean max_iter\?\)"),
        (
            "model.decoder.out_feature=2",
            r"torch.nn.Linear takes no argument 'out_feature'.*"
            r"did you mean out_features",
        ),
        ("train.max_iter=abc", r"train.max_iter takes an int \(now 100\), not the str 'abc'"),
        ("train.max_iter=1.5", r"train.max_iter takes an int"),
        ("model.backbone.topk='0.5'", r"model.backbone.topk takes a float.*not the str '0.5'"),
        ("train.amp=1", r"train.amp takes a bool"),
        ("model.pixel_mean=0.5", r"model.pixel_mean takes a list"),
        ("model.backbone=3", r"model.backbone takes a config node"),
        ("train.max_iter.value=3", r"train.max_iter is a int, not a config node"),
        ("train.max_iter", r"not of the form key=value"),
    ],
)
def test_apply_overrides_errors(config_tree: Path, override: str, match: str) -> None:
    cfg = LazyConfig.load(config_tree / "base.py")
    with pytest.raises(ConfigOverrideError, match=match):
        LazyConfig.apply_overrides(cfg, [override])
    assert cfg == LazyConfig.load(config_tree / "base.py")  # nothing applied


def test_save_load_round_trip(config_tree: Path, tmp_path: Path) -> None:
    cfg = LazyConfig.load(config_tree / "variants" / "topk.py")
    cfg.model.backbone.proj = partial(torch.nn.Linear, 8)  # set after loading, still saveable
    path = tmp_path / "out" / "config.yaml"
    LazyConfig.save(cfg, path)
    text = path.read_text()
    assert "_target_: torch.nn.LayerNorm" in text
    assert "path: torch.nn.ReLU" in text
    assert "_target_: torch.nn.Linear" in text
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temporary file left

    reloaded = LazyConfig.load(path)
    torch.manual_seed(0)
    original = instantiate(cfg)
    torch.manual_seed(0)
    restored = instantiate(reloaded)
    assert original["train"] == restored["train"]
    a, b = original["model"], restored["model"]
    assert a.backbone.act_layer is b.backbone.act_layer is torch.nn.ReLU
    assert repr(a.backbone.norm_layer(8)) == repr(b.backbone.norm_layer(8))
    assert repr(a.backbone.proj(3)) == repr(b.backbone.proj(3))
    assert a.backbone.window_block_indexes == b.backbone.window_block_indexes
    assert a.pixel_mean == b.pixel_mean
    assert torch.equal(a.decoder.weight, b.decoder.weight)


def test_save_rejects_objects_without_yaml_form(tmp_path: Path) -> None:
    cfg = L(types.SimpleNamespace)(scale=2)
    cfg.fn = lambda x: x
    with pytest.raises(ValueError, match=r"fn \(function\)"):
        LazyConfig.save(cfg, tmp_path / "config.yaml")
    assert not any(tmp_path.iterdir())


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.py"
    with pytest.raises(FileNotFoundError, match="nope.py"):
        LazyConfig.load(missing)
    bad_import = _write(tmp_path / "bad.py", "from .common.missing import model\n")
    with pytest.raises(ImportError, match=r"bad\.py.*common/missing\.py"):
        LazyConfig.load(bad_import)
    text_file = _write(tmp_path / "cfg.txt", "model = 1\n")
    with pytest.raises(ValueError, match="cfg.txt"):
        LazyConfig.load(text_file)
