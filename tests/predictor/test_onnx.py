"""ONNX export (tools/export_onnx.py) and onnxruntime inference (predictor/onnx_predictor.py)
against the PyTorch model and the official outputs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import inference
from data.image_io import BadSampleError
from engine.config import LazyConfig, instantiate
from modeling.backbone.vit import route_tokens
from modeling.lean.mode import to_lean
from modeling.meta_arch.mematte import _context_span, padded_size
from predictor import onnx_graph
from predictor.matting import RoutingMaps
from predictor.onnx_graph import OPSET, build_graph, export_input_size
from predictor.onnx_predictor import OnnxMattingPredictor
from predictor.weights import build_inference_model, load_inference_weights
from tests.helpers import (
    ASSETS_DIR,
    CONFIG_S,
    DEMO_CHECKPOINT,
    REPO_ROOT,
    TINY_CONFIG,
    build_tiny_mematte,
    make_batch,
    randomize_,
    tiny_vit,
)
from tools import export_onnx

DEMO_DATA = REPO_ROOT / "demo"
OFFICIAL_PNG_DIR = ASSETS_DIR / "official_png"
ALPHA_ATOL = 1e-4
PHAS_ATOL = 5e-5  # the golden README's suggested tolerance against the official phas
# Official-PNG agreement: at most this many grey levels apart, on at most this share of pixels.
PNG_LEVELS, PNG_SHARE = 1, 0.005
GOLDEN_OVERRIDES = [
    "model.backbone.embed_dim=96",
    "model.backbone.num_heads=2",
    "model.decoder.in_chans=96",
]
# Sizes not seen at export (that is 472 x 504 for every model here): off and on the 32 px grid,
# one side divisible only, a grid equal to the position-embedding grid (224 = 14 x 16), grids that
# need no window padding (448, 256), several decoder tiles.
TINY_SIZES = [(64, 64), (224, 224), (256, 448), (100, 150), (600, 530)]
GOLDEN_SIZES = [(512, 700), (333, 517), (448, 448), (544, 900), (1024, 640)]
CAPS = (600, 18500)


def torch_forward(model, image: torch.Tensor, trimap: torch.Tensor, cap: int | None) -> dict:
    model.backbone.max_number_token = cap
    with torch.inference_mode():
        return model({"image": image, "trimap": trimap})


def official_png(alpha: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    """The official script's 8-bit output: known regions forced, ``floor(alpha * 255)``."""
    alpha = alpha.copy()
    alpha[trimap == 0], alpha[trimap == 1] = 0.0, 1.0
    return np.floor(alpha.clip(0, 1) * np.float32(255)).astype(np.uint8)


def assert_same_png(alpha: np.ndarray, expected_alpha: np.ndarray, trimap: np.ndarray) -> None:
    """At most ``PNG_LEVELS`` grey levels apart on at most ``PNG_SHARE`` of the pixels."""
    levels = np.abs(official_png(alpha, trimap).astype(int) - official_png(expected_alpha, trimap))
    assert levels.max() <= PNG_LEVELS and (levels > 0).mean() <= PNG_SHARE


def run_session(session, image: torch.Tensor, trimap: torch.Tensor, cap: int) -> dict:
    feeds = {"image": image.numpy(), "trimap": trimap.numpy(), "max_number_token": np.array(cap)}
    names = [output.name for output in session.get_outputs()]
    inputs = {value.name for value in session.get_inputs()}
    outputs = session.run(names, {k: v for k, v in feeds.items() if k in inputs})
    return dict(zip(names, outputs, strict=True))


def assert_same_as_torch(session, model, image, trimap, cap) -> None:
    """Identical routing decisions and alpha within ``ALPHA_ATOL``."""
    ours = run_session(session, image, trimap, cap)
    reference = torch_forward(model, image, trimap, cap)
    blocks = model.backbone.routed_block_indexes
    for i, keep in zip(blocks, reference["keep"], strict=True):
        assert np.array_equal(ours[f"keep_block{i}"], keep.numpy()), (image.shape, cap, i)
    np.testing.assert_allclose(ours["phas"], reference["phas"].numpy(), atol=ALPHA_ATOL, rtol=0)


# Fast: the traced re-statements of the model's shape rules, against the originals.


@pytest.mark.parametrize("hw", [(512, 512), (512, 700), (333, 517), (4872, 6017), (64, 96)])
def test_traced_padding_rule_is_the_official_one(hw):
    height, width = (torch.tensor(v) for v in hw)
    traced = onnx_graph._padded_hw(height, width, 32)
    assert tuple(int(v) for v in traced) == padded_size(hw, 32)


def test_traced_tile_spans_are_the_official_ones():
    for size in (512, 1024, 1536):
        for start in range(0, size, 512):
            traced = onnx_graph._context_span(torch.tensor(start), torch.tensor(size))
            assert tuple(int(v) for v in traced) == _context_span(start, 512, size)


@pytest.mark.parametrize("cap", [0, 1, 5, 40, 10_000])
def test_topk_routing_equals_argmax_and_cap(cap):
    gen = torch.Generator().manual_seed(cap)
    scores = torch.log_softmax(torch.randn(1, 64, 2, generator=gen), dim=-1)
    index, valid, keep = onnx_graph._topk_routing(scores, torch.tensor(cap))
    assert torch.equal(keep, route_tokens(scores, training=False, max_number_token=cap))
    assert index.shape[1] == max(1, int(valid.sum()))  # never empty
    assert torch.equal(keep[0, index[0, valid[0, :, 0] > 0], 0], torch.ones(int(valid.sum())))


def test_export_input_takes_the_general_shape_branches():
    model = build_tiny_mematte()
    height, width = export_input_size(model)
    grid = padded_size((height, width), 32)[0] // 16
    assert (height, width) != padded_size((height, width), 32)  # padded
    assert grid % model.backbone.blocks[0].window_size != 0 and grid != 14  # windows padded


# Export + onnxruntime (slow: each export traces the model).


@pytest.fixture(scope="module")
def tiny_session():
    import onnxruntime as ort

    model = build_tiny_mematte().eval()
    graph = build_graph(model)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return graph, session, model


@pytest.mark.slow
def test_graph_is_valid_with_dynamic_sizes_and_a_cap_input(tiny_session):
    graph, session, model = tiny_session
    onnx.checker.check_model(graph, full_check=True)
    assert graph.opset_import[0].version >= 17 == OPSET
    inputs = {value.name: value for value in session.get_inputs()}
    assert inputs["image"].shape == [1, 3, "height", "width"]
    assert (
        inputs["max_number_token"].type == "tensor(int64)"
        and inputs["max_number_token"].shape == []
    )
    names = [output.name for output in session.get_outputs()]
    assert names == [
        "phas",
        "keep_block1",
        "keep_block3",
        "router_scores_block1",
        "router_scores_block3",
    ]
    assert [node.op_type for node in graph.graph.node].count("Loop") == 1  # the patch decoder


@pytest.mark.slow
@pytest.mark.parametrize("hw", TINY_SIZES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_tiny_model_matches_torch_at_sizes_not_seen_at_export(tiny_session, hw):
    _, session, model = tiny_session
    batch = make_batch(1, *hw, seed=hw[0])
    tokens = (padded_size(hw, 32)[0] // 16) * (padded_size(hw, 32)[1] // 16)
    for cap in (0, 5, tokens // 4, tokens):  # two caps and the ends: none, every routed token
        assert_same_as_torch(session, model, batch["image"], batch["trimap"], cap)


@pytest.mark.slow
def test_vitmatte_exports_with_relative_position_in_global_blocks():
    import onnxruntime as ort

    model = build_tiny_mematte().eval()
    # Rel-pos tables of a 32 x 32 grid (512 px), as ViTMatte-S: a grid the export could take.
    model.backbone = randomize_(tiny_vit(use_routing=False, img_size=512)).eval()
    to_lean(model)
    session = ort.InferenceSession(build_graph(model).SerializeToString())
    assert {value.name for value in session.get_inputs()} == {"image", "trimap"}
    for hw in ((64, 64), (512, 512), (600, 530), (1024, 768)):  # 512: the tables' own grid
        batch = make_batch(1, *hw, seed=1)
        ours = run_session(session, batch["image"], batch["trimap"], 0)
        reference = torch_forward(model, batch["image"], batch["trimap"], None)
        np.testing.assert_allclose(ours["phas"], reference["phas"].numpy(), atol=ALPHA_ATOL)


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    argv = ["--config-file", str(TINY_CONFIG), "--checkpoint", str(DEMO_CHECKPOINT)]
    assert export_onnx.main([*argv, "--output", str(path)]) == 0
    return path


@pytest.mark.slow
def test_predictor_reproduces_the_pytorch_pngs_of_the_demo_model(demo_onnx):
    model = build_inference_model(TINY_CONFIG)
    load_inference_weights(model, DEMO_CHECKPOINT)
    model.eval()
    predictor = OnnxMattingPredictor(demo_onnx, device="cpu")
    assert predictor.max_number_token == 18500 and predictor.routed_blocks == [1, 3]
    for image_path in sorted((DEMO_DATA / "merged").iterdir()):
        trimap_path = DEMO_DATA / "trimaps" / f"{image_path.stem}.png"
        alpha, routing = predictor(image_path, trimap_path, return_routing=True)
        rgb = cv2.imread(str(image_path))[..., ::-1]  # BGR -> RGB
        trimap = cv2.imread(str(trimap_path), cv2.IMREAD_GRAYSCALE) / np.float32(255)
        image = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None] / 255.0
        reference = torch_forward(model, image, torch.from_numpy(trimap)[None, None], 18500)
        assert_same_png(alpha, reference["phas"][0, 0].numpy(), trimap)
        assert isinstance(routing, RoutingMaps) and list(routing.keep) == [1, 3]
        for keep, reference_keep in zip(routing.keep.values(), reference["keep"], strict=True):
            assert np.array_equal(keep > 0, reference_keep[0, ..., 0].numpy() > 0)
        for block, probability in routing.probability.items():
            assert probability.shape == routing.keep[block].shape
            assert ((probability >= 0) & (probability <= 1)).all()


@pytest.mark.slow
def test_predictor_inputs_read_alike_and_known_regions_are_forced(demo_onnx):
    predictor = OnnxMattingPredictor(demo_onnx, device="cpu", max_number_token=10)
    image_path = sorted((DEMO_DATA / "merged").iterdir())[0]
    trimap_path = DEMO_DATA / "trimaps" / f"{image_path.stem}.png"
    rgb = np.asarray(Image.open(image_path).convert("RGB"))
    trimap = np.asarray(Image.open(trimap_path))
    alpha = predictor(image_path, trimap_path)
    assert alpha.dtype == np.float32 and alpha.shape == trimap.shape
    assert (alpha[trimap == 0] == 0).all() and (alpha[trimap == 255] == 1).all()
    tensor = torch.from_numpy(rgb.copy()).permute(2, 0, 1) / 255.0
    for image, tri in [
        (Image.open(image_path), Image.open(trimap_path)),
        (rgb, trimap),
        (tensor, trimap),
    ]:
        np.testing.assert_array_equal(predictor(image, tri), alpha)
    with pytest.raises(ValueError, match="W x H"):
        predictor(rgb, trimap[:-1])
    with pytest.raises(BadSampleError, match="8-bit"):  # as MattingPredictor
        predictor(rgb, trimap.astype(np.float32))
    with pytest.raises(ValueError, match="'auto'"):
        OnnxMattingPredictor(demo_onnx, max_number_token="auto")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():  # auto falls back to CPU
        assert OnnxMattingPredictor(demo_onnx, device="auto").device == torch.device("cpu")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OnnxMattingPredictor(demo_onnx.parent / "missing.onnx")


@pytest.mark.slow
def test_export_of_a_missing_checkpoint_fails_cleanly(tmp_path, caplog):
    argv = ["--config-file", str(TINY_CONFIG), "--checkpoint", str(tmp_path / "none.pth")]
    assert export_onnx.main([*argv, "--output", str(tmp_path / "x.onnx")]) == 2
    assert "none.pth" in caplog.text and not (tmp_path / "x.onnx").exists()


@pytest.fixture(scope="module")
def golden_onnx(tmp_path_factory):
    from tests.helpers import GOLDEN_DIR

    if not GOLDEN_DIR.is_dir():
        pytest.skip("../shared/golden is not available")
    golden = torch.load(GOLDEN_DIR / "golden_eval.pt", weights_only=False)
    folder = tmp_path_factory.mktemp("golden_onnx")
    checkpoint = folder / "golden.pth"
    torch.save({"model": golden["state_dict"]}, checkpoint)
    path = folder / "golden.onnx"
    onnx_graph.export_onnx(CONFIG_S, checkpoint, path, GOLDEN_OVERRIDES)
    cfg = LazyConfig.apply_overrides(
        LazyConfig.load(str(CONFIG_S)), [*GOLDEN_OVERRIDES, "model.teacher_backbone=None"]
    )
    model = instantiate(cfg.model)
    model.load_state_dict(golden["state_dict"])
    return path, model.eval(), golden


@pytest.mark.slow
def test_golden_model_reproduces_the_official_outputs(golden_onnx):
    import onnxruntime as ort

    path, _, golden = golden_onnx
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for case in golden["cases"]:  # fed exactly as the official forward was
        image = case["input_image_u8"].float() / 255
        trimap = torch.tensor([0.0, 0.5, 1.0])[case["input_trimap_code"].long()]
        ours = run_session(session, image, trimap, case["max_number_token"])
        for i, official in zip((2, 5, 8, 11), case["out_hard_keep_decision"], strict=True):
            assert np.array_equal(ours[f"keep_block{i}"], official.numpy())
        official = case["phas"].numpy()
        np.testing.assert_allclose(ours["phas"], official, atol=PHAS_ATOL, rtol=0)
        assert_same_png(ours["phas"][0, 0], official[0, 0], trimap[0, 0].numpy())


@pytest.mark.slow
@pytest.mark.parametrize("hw", GOLDEN_SIZES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_golden_model_matches_torch_at_two_caps(golden_onnx, hw):
    import onnxruntime as ort

    path, model, _ = golden_onnx
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = make_batch(1, *hw, seed=hw[1])
    trimap = (batch["trimap"] * 255).round() / 255  # an 8-bit trimap file, as read
    for cap in CAPS:
        assert_same_as_torch(session, model, batch["image"], trimap, cap)
        ours = run_session(session, batch["image"], trimap, cap)["phas"][0, 0]
        reference = torch_forward(model, batch["image"], trimap, cap)["phas"][0, 0].numpy()
        assert_same_png(ours, reference, trimap[0, 0].numpy())


# --- inference.py --onnx -----------------------------------------------------------------------


def _golden_files(folder: Path, golden: dict) -> tuple[Path, Path]:
    """The golden eval case as the image and trimap files the official script read."""
    case = golden["cases"][0]
    image = case["input_image_u8"][0].permute(1, 2, 0).numpy()  # [H, W, 3] RGB
    trimap = np.array([0, 128, 255], np.uint8)[case["input_trimap_code"][0, 0].numpy()]
    cv2.imwrite(str(folder / "image.png"), np.ascontiguousarray(image[:, :, ::-1]))
    cv2.imwrite(str(folder / "trimap.png"), trimap)
    return folder / "image.png", folder / "trimap.png"


@pytest.mark.slow
@pytest.mark.parametrize("cap", [600, None], ids=["cap600", "default_cap"])
def test_inference_onnx_writes_the_official_pngs(golden_onnx, tmp_path, cap):
    path, _, golden = golden_onnx
    image, trimap = _golden_files(tmp_path, golden)
    cap_options = [] if cap is None else ["--max-number-token", str(cap)]
    argv = ["--onnx", str(path), "--image", str(image), "--trimap", str(trimap)]
    argv += ["--output-dir", str(tmp_path / "out"), "--workers", "0", *cap_options]
    assert inference.main(argv) == 0
    ours = cv2.imread(str(tmp_path / "out" / "image.png"), cv2.IMREAD_UNCHANGED)
    official_name = f"official_cap{cap or 18500}.png"  # the config's default cap is 18500
    official = cv2.imread(str(OFFICIAL_PNG_DIR / official_name), cv2.IMREAD_UNCHANGED)
    difference = np.abs(ours.astype(int) - official.astype(int))
    assert difference.max() <= PNG_LEVELS and (difference > 0).mean() <= PNG_SHARE


@pytest.mark.slow
def test_inference_onnx_writes_the_torch_pngs_of_a_folder(demo_onnx, tmp_path):
    common = ["--data-dir", str(DEMO_DATA), "--workers", "0", "--max-number-token", "40"]
    torch_run = ["--config-file", str(TINY_CONFIG), "--checkpoint", str(DEMO_CHECKPOINT)]
    assert inference.main([*torch_run, *common, "--output-dir", str(tmp_path / "torch")]) == 0
    onnx_run = ["--onnx", str(demo_onnx), *common, "--output-dir", str(tmp_path / "onnx")]
    assert inference.main([*onnx_run, "--report", str(tmp_path / "report.json")]) == 0
    names = sorted(p.name for p in (tmp_path / "torch").glob("*.png"))
    assert names and names == sorted(p.name for p in (tmp_path / "onnx").glob("*.png"))
    for name in names:
        ours = cv2.imread(str(tmp_path / "onnx" / name), cv2.IMREAD_UNCHANGED).astype(int)
        reference = cv2.imread(str(tmp_path / "torch" / name), cv2.IMREAD_UNCHANGED)
        difference = np.abs(ours - reference)
        assert difference.max() <= PNG_LEVELS and (difference > 0).mean() <= PNG_SHARE, name
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["exit_code"] == 0 and report["done"] == len(names)
    # A second run finds every output present and redoes nothing.
    again = [*onnx_run, "--output-dir", str(tmp_path / "onnx"), "--report", str(tmp_path / "r2")]
    assert inference.main(again) == 0
    assert json.loads((tmp_path / "r2").read_text())["skipped"] == len(names)


@pytest.mark.parametrize(
    "extra",
    [
        ["--precision", "bf16"],
        ["--no-patch-decoder"],
        ["--max-number-token", "auto"],
        ["--config-file", str(TINY_CONFIG)],
        ["model.backbone.max_number_token=5"],
    ],
    ids=["precision", "patch-decoder", "auto-cap", "config", "overrides"],
)
def test_inference_onnx_refuses_what_the_graph_fixes(tmp_path, extra):
    argv = ["--onnx", str(tmp_path / "m.onnx"), "--data-dir", str(DEMO_DATA)]
    with pytest.raises(SystemExit) as raised:
        inference.parse_args([*argv, "--output-dir", str(tmp_path / "out"), *extra])
    assert raised.value.code == 2


def test_inference_onnx_missing_graph_is_a_setup_error(tmp_path, caplog):
    argv = ["--onnx", str(tmp_path / "missing.onnx"), "--data-dir", str(DEMO_DATA)]
    assert inference.main([*argv, "--output-dir", str(tmp_path / "out")]) == 2
    assert "missing.onnx: no such ONNX file" in caplog.text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("cpu", ["CPUExecutionProvider"]),
        ("gpu", "must be"),
        ("cuda:x", "must be"),
        ("cpu:1", "must be"),
    ],
)
def test_devices_name_onnxruntime_providers(device, expected):
    from predictor.onnx_predictor import onnx_providers

    if isinstance(expected, list):
        assert onnx_providers(device) == expected
    else:
        with pytest.raises(ValueError, match=expected):
            onnx_providers(device)


def test_cuda_devices_need_the_cuda_provider(monkeypatch):
    import onnxruntime as ort

    from predictor.onnx_predictor import onnx_providers

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="offers only"):
        onnx_providers("cuda:1")
    assert onnx_providers("auto") == ["CPUExecutionProvider"]
    with_cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: with_cuda)
    assert onnx_providers("cuda:1") == [("CUDAExecutionProvider", {"device_id": 1}), with_cuda[1]]
    assert onnx_providers("auto")[0] == ("CUDAExecutionProvider", {"device_id": 0})
