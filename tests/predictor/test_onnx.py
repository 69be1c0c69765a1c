"""ONNX export (tools/export_onnx.py) and onnxruntime inference (predictor/onnx_predictor.py)
against the PyTorch model and the official outputs, also in a process where PyTorch cannot be
imported."""

from __future__ import annotations

import copy
import json
from collections import Counter
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
from modeling.decoder.detail_capture import force_known
from modeling.lean import decoder as lean_decoder
from modeling.lean.input import NormalizedInput
from modeling.lean.mode import to_lean, to_reference
from modeling.patches import padded_size
from predictor import onnx_graph
from predictor.matting import MattingPredictor, RoutingMaps
from predictor.onnx_graph import OPSET, build_deployment, export_input_size, write_deployment
from predictor.onnx_predictor import (
    MANIFEST_FILE,
    OnnxMattingPredictor,
    _OrtStages,
    normalized_crop,
)
from predictor.weights import build_inference_model, load_inference_weights
from tests.helpers import (
    ASSETS_DIR,
    CONFIG_S,
    DEMO_CHECKPOINT,
    REPO_ROOT,
    TINY_CONFIG,
    TINY_DIM,
    build_tiny_mematte,
    make_batch,
    randomize_,
    run_without_torch,
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
# need no window padding (448, 256), several decoder tiles, fewer tokens than chunks (32 x 48:
# 6 tokens, so that some of the 16 token chunks are empty).
TINY_SIZES = [(32, 48), (64, 64), (224, 224), (256, 448), (100, 150), (600, 530)]
# Odd sizes (padding), one of several strips and windows per row; each size costs ~12 s.
GOLDEN_SIZES = [(512, 700), (333, 517), (1024, 640)]
CAPS = (600, 18500)


def torch_forward(model, image: torch.Tensor, trimap: torch.Tensor, cap: int | None) -> dict:
    """The PyTorch model's clamped output (the predictor's), float inputs in [0, 1]."""
    model.backbone.max_number_token = cap
    with torch.inference_mode():
        return model({"image": image, "trimap": trimap}, clamp_known=True)


def onnx_forward(predictor: OnnxMattingPredictor, image: torch.Tensor, trimap: torch.Tensor):
    """The onnxruntime predictor on the same float inputs."""
    return predictor.predict_levels(image.numpy(), trimap.numpy())


def official_png(alpha: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    """The official script's 8-bit output: known regions forced, ``floor(alpha * 255)``."""
    alpha = alpha.copy()
    alpha[trimap == 0], alpha[trimap == 1] = 0.0, 1.0
    return np.floor(alpha.clip(0, 1) * np.float32(255)).astype(np.uint8)


def assert_same_png(alpha: np.ndarray, expected_alpha: np.ndarray, trimap: np.ndarray) -> None:
    """At most ``PNG_LEVELS`` grey levels apart on at most ``PNG_SHARE`` of the pixels."""
    levels = np.abs(official_png(alpha, trimap).astype(int) - official_png(expected_alpha, trimap))
    assert levels.max() <= PNG_LEVELS and (levels > 0).mean() <= PNG_SHARE


def assert_same_as_torch(predictor, model, image, trimap, cap) -> None:
    """Identical routing decisions and alpha within ``ALPHA_ATOL``."""
    predictor.max_number_token = cap
    ours = onnx_forward(predictor, image, trimap)
    reference = torch_forward(model, image, trimap, cap)
    for ours_keep, keep in zip(ours.keep, reference["keep"], strict=True):
        assert np.array_equal(ours_keep[0], keep[0, ..., 0].numpy()), (image.shape, cap)
    np.testing.assert_allclose(ours.alpha, reference["phas"][:, 0].numpy(), atol=ALPHA_ATOL, rtol=0)


def tiny_deployment(model, folder: Path) -> Path:
    manifest, graphs = build_deployment(model)
    write_deployment(folder, manifest, graphs)
    return folder


# Fast: the traced re-statements of the model's shape rules, against the originals.


def test_normalized_crops_are_the_lean_path_input():
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 70, 90), generator=gen, dtype=torch.uint8)
    trimap = torch.randint(0, 256, (70, 90), generator=gen, dtype=torch.uint8)
    model = build_tiny_mematte()
    source = NormalizedInput(
        image[None], trimap[None, None], model.pixel_mean, model.pixel_std, (96, 96)
    )
    mean, std = (v.numpy() for v in (model.pixel_mean, model.pixel_std))
    for rows, cols in [((0, 96), (0, 96)), ((10, 50), (60, 96)), ((64, 116), (80, 116))]:
        ours = normalized_crop(image.numpy(), trimap.numpy(), mean, std, rows, cols)
        assert np.array_equal(ours, source.crop(*rows, *cols).numpy())


def test_decoder_stage_graphs_compute_the_lean_stages(tmp_path):
    """Each stage graph against the PyTorch lean decoder's per-box computation, on crops with
    padding on some sides and starts inside the upsampled map."""
    import onnxruntime as ort

    model = build_tiny_mematte(seed=3).eval()
    graphs = onnx_graph._decoder_graphs(to_reference(copy.deepcopy(model)))
    sessions = {name: ort.InferenceSession(g.SerializeToString()) for name, g in graphs.items()}
    ours, theirs = _OrtStages(sessions), lean_decoder._TorchStages(model.decoder)
    gen = torch.Generator().manual_seed(1)
    channels = model.decoder.convstream.conv_chans
    fusion_in = [model.decoder.fusion_blks[i].conv.conv.in_channels for i in range(4)]
    pads = (1, 0, 0, 1)
    with torch.no_grad():
        for k in (1, 2, 3):
            x = torch.randn(1, channels[k - 1], 9, 12, generator=gen)
            expected = theirs.stride_down(k, x, pads)
            np.testing.assert_allclose(ours.stride_down(k, x.numpy(), pads), expected, atol=1e-5)
        coarse_chans = [TINY_DIM, *(b.conv.conv.out_channels for b in model.decoder.fusion_blks)]
        for i in range(4):
            detail = torch.randn(1, fusion_in[i] - coarse_chans[i], 7, 10, generator=gen)
            coarse = torch.randn(1, coarse_chans[i], 6, 7, generator=gen)
            expected = theirs.fuse(i, detail, coarse, (2, 3), pads)
            got = ours.fuse(i, detail.numpy(), coarse.numpy(), (2, 3), pads)
            np.testing.assert_allclose(got, expected, atol=1e-5)
        x = torch.randn(1, model.decoder.matting_head.matting_convs[0].in_channels, 8, 5)
        np.testing.assert_allclose(ours.head(x.numpy(), pads), theirs.head(x, pads), atol=1e-6)


@pytest.mark.parametrize("hw", [(14, 14), (128, 128), (77, 130), (300, 20)])
def test_position_embedding_as_products_equals_the_bicubic_resize(hw):
    from modeling.backbone.vit import get_abs_pos

    abs_pos = torch.randn(1, 1 + 14 * 14, 24, generator=torch.Generator().manual_seed(0))
    expected = get_abs_pos(abs_pos, True, hw)
    torch.testing.assert_close(onnx_graph._abs_pos(abs_pos, True, hw), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("rel_pos", [True, False])
@pytest.mark.parametrize(("size", "windows"), [(14, 3), (4, 1), (7, 5), (7, 0)])
def test_window_attention_with_rel_pos_folded_into_the_product_equals_the_reference(
    size, windows, rel_pos
):
    from modeling.backbone.attention import Attention

    torch.manual_seed(size)
    attn = Attention(48, 3, use_rel_pos=rel_pos, rel_pos_zero_init=False, input_size=(size, size))
    x = torch.randn(windows, size, size, 48)
    with torch.no_grad():
        got = onnx_graph._attention_in_windows(attn, x, size)
        # the reference cannot reshape an empty input (a chunk of windows of a small map)
        expected = attn.eval()(x) if windows else x
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


class _TwoChunkings(torch.nn.Module):
    """``2 x`` over one chunk plus ``x + 1`` over three chunks of the token rows."""

    def forward(self, x):
        twice = onnx_graph._in_slices(lambda rows: rows * 2, [x], dim=1, chunks=1)
        return twice + onnx_graph._in_slices(lambda rows: rows + 1, [x], dim=1, chunks=3)


def test_chunks_are_cut_at_the_run_size_with_empty_pieces_where_it_is_small():
    import onnxruntime as ort

    graph = onnx_graph._trace(
        _TwoChunkings(), (torch.randn(1, 5, 3),), ["x"], ["y"], {"x": {1: "rows"}}
    )
    assert Counter(node.op_type for node in graph.graph.node)["Split"] == 2  # no Slice per piece
    session = ort.InferenceSession(graph.SerializeToString())
    for rows in (1, 2, 7):  # 1 and 2 rows: some of the three pieces are empty
        x = np.random.default_rng(rows).standard_normal((1, rows, 3)).astype(np.float32)
        np.testing.assert_allclose(session.run(None, {"x": x})[0], 3 * x + 1, atol=1e-6)


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
def tiny_onnx(tmp_path_factory):
    model = build_tiny_mematte().eval()
    folder = tiny_deployment(model, tmp_path_factory.mktemp("tiny") / "tiny_onnx")
    return folder, OnnxMattingPredictor(folder, device="cpu"), model


@pytest.mark.slow
def test_deployment_graphs_are_valid_with_dynamic_sizes_and_a_cap_input(tiny_onnx):
    import onnxruntime as ort

    folder, predictor, _ = tiny_onnx
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["routed_blocks"] == [1, 3] and manifest["opset"] == OPSET == 17
    for name in [manifest["embed"], manifest["blocks"], *manifest["decoder"].values()]:
        onnx.checker.check_model(onnx.load(str(folder / name)), full_check=True)
    # the routed tokens attend in onnxruntime's fused attention, one node per routed block
    fused = [
        node
        for node in onnx.load(str(folder / manifest["blocks"])).graph.node
        if (node.domain, node.op_type) == ("com.microsoft", "MultiHeadAttention")
    ]
    assert len(fused) == len(manifest["routed_blocks"])
    # routed rows gathered and scattered whole: no per-element int64 index of the routed tokens
    ops = Counter(node.op_type for node in onnx.load(str(folder / manifest["blocks"])).graph.node)
    assert ops["ScatterND"] == len(manifest["routed_blocks"]) and not ops["GatherElements"]
    blocks = ort.InferenceSession(str(folder / manifest["blocks"]))
    inputs = {value.name: value for value in blocks.get_inputs()}
    assert inputs["tokens"].shape == [1, "grid_h", "grid_w", TINY_DIM]
    assert inputs["max_number_token"].type == "tensor(int64)"
    assert inputs["max_number_token"].shape == []
    names = [output.name for output in blocks.get_outputs()]
    assert names == [
        "features",
        "keep_block1",
        "keep_block3",
        "router_scores_block1",
        "router_scores_block3",
    ]
    assert sorted(manifest["decoder"]) == sorted(
        [*(f"convstream{k}" for k in (1, 2, 3)), *(f"fusion{i}" for i in range(4)), "head"]
    )


@pytest.mark.slow
@pytest.mark.parametrize("hw", TINY_SIZES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_tiny_model_matches_torch_at_sizes_not_seen_at_export(tiny_onnx, hw):
    _, predictor, model = tiny_onnx
    batch = make_batch(1, *hw, seed=hw[0])
    trimap = (batch["trimap"] * 255).round() / 255  # an 8-bit trimap file, as read
    tokens = (padded_size(hw, 32)[0] // 16) * (padded_size(hw, 32)[1] // 16)
    for cap in (0, 5, tokens // 4, tokens):  # two caps and the ends: none, every routed token
        assert_same_as_torch(predictor, model, batch["image"], trimap, cap)


@pytest.mark.slow
def test_vitmatte_exports_with_relative_position_in_global_blocks(tmp_path):
    model = build_tiny_mematte().eval()
    # Rel-pos tables of a 32 x 32 grid (512 px), as ViTMatte-S: a grid the export could take.
    model.backbone = randomize_(tiny_vit(use_routing=False, img_size=512)).eval()
    to_lean(model)
    predictor = OnnxMattingPredictor(tiny_deployment(model, tmp_path / "vitmatte"), device="cpu")
    assert {value.name for value in predictor.blocks.get_inputs()} == {"tokens"}
    for hw in ((64, 64), (512, 512), (600, 530), (1024, 768)):  # 512: the tables' own grid
        batch = make_batch(1, *hw, seed=1)
        trimap = (batch["trimap"] * 255).round() / 255
        ours = onnx_forward(predictor, batch["image"], trimap)
        reference = torch_forward(model, batch["image"], trimap, None)
        np.testing.assert_allclose(ours.alpha, reference["phas"][:, 0].numpy(), atol=ALPHA_ATOL)


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "tiny_onnx"
    argv = ["--config-file", str(TINY_CONFIG), "--checkpoint", str(DEMO_CHECKPOINT)]
    assert export_onnx.main([*argv, "--output", str(path)]) == 0
    return path


@pytest.mark.slow
def test_only_the_blocks_session_spins_between_runs(demo_onnx):
    """The stage sessions run in turn, many times per image: idle threads spinning in their
    pools would take the cores from the one at work."""
    predictor = OnnxMattingPredictor(demo_onnx, device="cpu")
    spinning = "session.intra_op.allow_spinning"

    def spins(session) -> bool:
        return session.get_session_options().get_session_config_entry(spinning) == "1"

    assert spins(predictor.blocks)
    assert not any(spins(s) for s in (predictor.embed, *predictor.stages.sessions.values()))


@pytest.mark.slow
def test_large_token_maps_give_the_blocks_arena_back_after_the_run(demo_onnx, monkeypatch):
    """From ``SHRINK_ARENA_FROM_BYTES`` of tokens up, the blocks run returns its arena's free
    memory before the decoder runs; smaller maps keep it (no re-faulting per call)."""
    from predictor import onnx_predictor

    predictor = OnnxMattingPredictor(demo_onnx, device="cpu")
    blocks, shrinks = predictor.blocks, []

    class Recorder:
        def run(self, names, feeds, options):
            try:
                shrinks.append(options.get_run_config_entry("memory.enable_memory_arena_shrinkage"))
            except RuntimeError:  # not set
                shrinks.append(None)
            return blocks.run(names, feeds, options)

    monkeypatch.setattr(predictor, "blocks", Recorder())
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8)
    trimap = np.full((64, 96), 128, np.uint8)
    kept = predictor(image, trimap)
    monkeypatch.setattr(onnx_predictor, "SHRINK_ARENA_FROM_BYTES", 0)
    np.testing.assert_array_equal(predictor(image, trimap), kept)
    assert shrinks == [None, "cpu:0"]


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
        assert OnnxMattingPredictor(demo_onnx, device="auto").device == "cpu"
    with pytest.raises(FileNotFoundError, match="missing_onnx"):
        OnnxMattingPredictor(demo_onnx.parent / "missing_onnx")


@pytest.mark.slow
def test_export_of_a_missing_checkpoint_fails_cleanly(tmp_path, caplog):
    argv = ["--config-file", str(TINY_CONFIG), "--checkpoint", str(tmp_path / "none.pth")]
    assert export_onnx.main([*argv, "--output", str(tmp_path / "x_onnx")]) == 2
    assert "none.pth" in caplog.text and not (tmp_path / "x_onnx").exists()


@pytest.fixture(scope="module")
def golden_onnx(tmp_path_factory):
    from tests.helpers import GOLDEN_DIR

    if not GOLDEN_DIR.is_dir():
        pytest.skip("../shared/golden is not available")
    golden = torch.load(GOLDEN_DIR / "golden_eval.pt", weights_only=False)
    folder = tmp_path_factory.mktemp("golden_onnx")
    checkpoint = folder / "golden.pth"
    torch.save({"model": golden["state_dict"]}, checkpoint)
    path = folder / "golden_onnx"
    onnx_graph.export_onnx(CONFIG_S, checkpoint, path, GOLDEN_OVERRIDES)
    cfg = LazyConfig.apply_overrides(
        LazyConfig.load(str(CONFIG_S)), [*GOLDEN_OVERRIDES, "model.teacher_backbone=None"]
    )
    model = instantiate(cfg.model)
    model.load_state_dict(golden["state_dict"])
    return path, model.eval(), golden


@pytest.mark.slow
def test_golden_model_reproduces_the_official_outputs(golden_onnx):
    path, _, golden = golden_onnx
    predictor = OnnxMattingPredictor(path, device="cpu")
    for case in golden["cases"]:  # fed exactly as the official forward was
        image = case["input_image_u8"].float() / 255
        trimap = torch.tensor([0.0, 0.5, 1.0])[case["input_trimap_code"].long()]
        predictor.max_number_token = case["max_number_token"]
        ours = onnx_forward(predictor, image, trimap)
        for keep, official in zip(ours.keep, case["out_hard_keep_decision"], strict=True):
            assert np.array_equal(keep, official[..., 0].numpy())
        official = force_known(case["phas"], trimap)[:, 0].numpy()
        np.testing.assert_allclose(ours.alpha, official, atol=PHAS_ATOL, rtol=0)
        assert_same_png(ours.alpha[0], official[0], trimap[0, 0].numpy())


@pytest.mark.slow
@pytest.mark.parametrize("hw", GOLDEN_SIZES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_golden_model_matches_torch_at_two_caps(golden_onnx, hw):
    path, model, _ = golden_onnx
    predictor = OnnxMattingPredictor(path, device="cpu")
    batch = make_batch(1, *hw, seed=hw[1])
    trimap = (batch["trimap"] * 255).round() / 255  # an 8-bit trimap file, as read
    for cap in CAPS:
        assert_same_as_torch(predictor, model, batch["image"], trimap, cap)
        ours = onnx_forward(predictor, batch["image"], trimap).alpha[0]
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


_NO_TORCH_PREDICTOR = """
import sys
import numpy as np
from predictor.onnx_predictor import OnnxMattingPredictor
predictor = OnnxMattingPredictor(sys.argv[1], device="cpu", max_number_token=40)
np.save(sys.argv[4], predictor(sys.argv[2], sys.argv[3]))
assert not any(name == "torch" or name.startswith("torch.") for name in sys.modules)
"""


@pytest.mark.slow
def test_onnx_predictor_and_inference_run_where_torch_cannot_be_imported(demo_onnx, tmp_path):
    blocked = run_without_torch(["-c", "import torch"], tmp_path)
    assert blocked.returncode != 0 and "cannot be imported" in blocked.stderr
    image, trimap = DEMO_DATA / "merged" / "test_001.png", DEMO_DATA / "trimaps" / "test_001.png"
    call = ["-c", _NO_TORCH_PREDICTOR, str(demo_onnx), str(image), str(trimap)]
    done = run_without_torch([*call, str(tmp_path / "alpha.npy")], tmp_path)
    assert done.returncode == 0, done.stderr
    alpha = np.load(tmp_path / "alpha.npy")
    in_process = OnnxMattingPredictor(demo_onnx, device="cpu", max_number_token=40)
    np.testing.assert_array_equal(alpha, in_process(image, trimap))  # the same predictor
    pytorch = MattingPredictor.from_config(
        TINY_CONFIG, DEMO_CHECKPOINT, device="cpu", max_number_token=40
    )
    levels = cv2.imread(str(trimap), cv2.IMREAD_UNCHANGED) / np.float32(255)
    assert_same_png(alpha, pytorch(image, trimap), levels)
    # inference.py --onnx over the demo folder, with loader processes, writes the PNGs of the
    # PyTorch run
    argv = ["inference.py", "--onnx", str(demo_onnx), "--data-dir", str(DEMO_DATA)]
    argv += ["--max-number-token", "40", "--workers", "2", "--output-dir", str(tmp_path / "onnx")]
    run = run_without_torch(argv, tmp_path)
    assert run.returncode == 0, run.stderr
    torch_run = ["--config-file", str(TINY_CONFIG), "--checkpoint", str(DEMO_CHECKPOINT)]
    common = ["--data-dir", str(DEMO_DATA), "--max-number-token", "40", "--workers", "0"]
    assert inference.main([*torch_run, *common, "--output-dir", str(tmp_path / "torch")]) == 0
    names = sorted(p.name for p in (tmp_path / "torch").glob("*.png"))
    assert names == sorted(p.name for p in (tmp_path / "onnx").glob("*.png")) and names
    for name in names:
        ours = cv2.imread(str(tmp_path / "onnx" / name), cv2.IMREAD_UNCHANGED).astype(int)
        reference = cv2.imread(str(tmp_path / "torch" / name), cv2.IMREAD_UNCHANGED)
        difference = np.abs(ours - reference)
        assert difference.max() <= PNG_LEVELS and (difference > 0).mean() <= PNG_SHARE, name


# What the documented deployment (onnxruntime, OpenCV, numpy, Pillow, tqdm) does not install.
NOT_IN_THE_DEPLOYMENT = ("torch", "torchvision", "av", "transformers", "timm", "fvcore", "onnx")


@pytest.mark.slow
def test_a_minimal_deployment_runs_and_refuses_what_needs_pytorch_before_any_output(
    demo_onnx, tmp_path
):
    image, trimap = DEMO_DATA / "merged" / "test_001.png", DEMO_DATA / "trimaps" / "test_001.png"
    argv = ["inference.py", "--onnx", str(demo_onnx), "--image", str(image), "--trimap"]
    argv += [str(trimap), "--max-number-token", "40"]
    out = tmp_path / "out"
    plain = run_without_torch(
        [*argv, "--output-dir", str(out)], tmp_path, 600, NOT_IN_THE_DEPLOYMENT
    )
    assert plain.returncode == 0, plain.stderr
    assert (out / "test_001.png").is_file()
    for extra in (["--save-rgba"], ["--composite", "#00ff00"], ["--num-gpus", "2"]):
        refused = tmp_path / "refused"
        run = run_without_torch(
            [*argv, *extra, "--output-dir", str(refused)], tmp_path, 600, NOT_IN_THE_DEPLOYMENT
        )
        assert run.returncode == 2, (extra, run.stderr)
        assert f"{extra[0]}: PyTorch is not installed" in run.stderr
        assert not refused.exists()


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


def test_inference_onnx_missing_deployment_is_a_setup_error(tmp_path, caplog):
    argv = ["--onnx", str(tmp_path / "missing_onnx"), "--data-dir", str(DEMO_DATA)]
    assert inference.main([*argv, "--output-dir", str(tmp_path / "out")]) == 2
    assert "missing_onnx: no ONNX deployment" in caplog.text
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


@pytest.mark.slow
def test_inference_onnx_mattes_a_video_as_its_frames_also_without_torch(demo_onnx, tmp_path):
    """``--video`` with ``--onnx`` (temporal blending off): each frame's alpha PNG is the
    onnxruntime predictor's for that frame and its trimap, also in a process where ``import
    torch`` fails (the video pipeline on the predictors' numpy results)."""
    from data.clips import list_frames
    from data.image_io import read_map_levels
    from data.synthetic_clips import ClipMotion, write_clip
    from predictor.outputs import alpha_to_uint8

    root = tmp_path / "clips"
    write_clip(root, "c0", 0, (72, 96), 3, ClipMotion())
    frames, trimaps = (list_frames(root / kind / "c0") for kind in ("com", "trimap"))
    argv = ["--onnx", str(demo_onnx), "--device", "cpu", "--video", str(root / "com" / "c0")]
    argv += ["--trimap-dir", str(root / "trimap" / "c0"), "--output-dir"]
    assert inference.main([*argv, str(tmp_path / "out")]) == 0
    predictor = OnnxMattingPredictor(demo_onnx, device="cpu")
    written = list_frames(tmp_path / "out" / "c0" / "pha")
    assert [p.stem for p in written] == [p.stem for p in frames]
    for frame, trimap, png in zip(frames, trimaps, written, strict=True):
        assert np.array_equal(read_map_levels(png), alpha_to_uint8(predictor(frame, trimap)))
    without = tmp_path / "without_torch"
    without.mkdir()
    done = run_without_torch(["inference.py", *argv, str(without / "out")], without)
    assert done.returncode == 0, done.stderr
    for png in written:
        assert (without / "out" / "c0" / "pha" / png.name).read_bytes() == png.read_bytes()
