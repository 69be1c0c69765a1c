"""predictor.segmenter on tiny random SAM, SAM-HQ and SAM 2 checkpoints (saved with
save_pretrained, no network): the mask is transformers' own processor + model result under the
documented rule, the image is embedded once and at the segmenter's input size, bad checkpoints
are refused with messages that say what to do; the predictors' box= / points= calls give the
alpha of the trimap made from that mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from data.trimap import trimap_from_mask
from predictor.matting import MattingPredictor
from predictor.onnx_predictor import OnnxMattingPredictor
from predictor.prompts import PromptError, Prompts
from predictor.segmenter import (
    EMBEDDING_CACHE_SIZE,
    Segmenter,
    load_segmenter,
    segmenter_rgb,
    uses_multimask,
)
from tests.helpers import (
    DEMO_CHECKPOINT,
    DEMO_DIR,
    SEGMENTER_FAMILIES,
    SEGMENTER_SIZE,
    TINY_CONFIG,
    reference_sam_mask,
)
from tools import export_onnx

IMAGE = DEMO_DIR / "merged" / "test_001.png"  # 282 x 285 (W x H)
# The issue's tolerance: share of mask pixels that may differ from transformers' result.
MAX_DIFFERING_SHARE = 0.001
PROMPT_CASES = {
    "box": Prompts(box=(40, 60, 200, 250)),
    "one point": Prompts(points=((120, 150),)),
    "another point": Prompts(points=((60.5, 60.5),)),
    "several points": Prompts(points=((120, 150), (200, 100))),
    "a background point": Prompts(points=((120, 150), (20, 20, 0))),
    "box and point": Prompts(box=(40, 60, 200, 250), points=((120, 150),)),
}


pytestmark = pytest.mark.usefixtures("hub_offline")  # no test here reaches for the network


@pytest.fixture(scope="module")
def folders(tiny_segmenters) -> dict[str, Path]:
    return tiny_segmenters


@pytest.fixture(scope="module")
def segmenters(folders) -> dict[str, Segmenter]:
    return {family: load_segmenter(folder, device="cpu") for family, folder in folders.items()}


def rgb_image() -> np.ndarray:
    return np.array(Image.open(IMAGE).convert("RGB"))


@pytest.mark.parametrize("case", list(PROMPT_CASES))
@pytest.mark.parametrize("family", SEGMENTER_FAMILIES)
def test_the_mask_is_transformers_own_under_the_rule(folders, segmenters, family, case):
    prompts = PROMPT_CASES[case]
    result = segmenters[family].predict(IMAGE, prompts)
    points = tuple((p.x, p.y, p.label) for p in prompts.points)
    expected = reference_sam_mask(folders[family], IMAGE, prompts.box, points)
    assert result.mask.dtype == bool and result.mask.shape == expected.shape == (285, 282)
    assert 0 < expected.mean() < 1  # a mask with both sides: the comparison means something
    assert (result.mask != expected).mean() <= MAX_DIFFERING_SHARE
    assert result.candidates == (3 if case in ("one point", "another point") else 1)


def test_the_rule_picks_the_candidate_of_the_highest_predicted_iou(segmenters, monkeypatch):
    """One point: the kept mask is the candidate with the best predicted IoU, whichever it is."""
    segmenter = segmenters["sam"]
    prompts = PROMPT_CASES["one point"]
    forward = segmenter.model.forward
    masks = {}
    for best in range(3):

        def rigged(*args, best=best, **kwargs):
            outputs = forward(*args, **kwargs)
            outputs.iou_scores = torch.tensor([[[0.1, 0.2, 0.3]]]).roll(best - 2, dims=-1)
            return outputs

        monkeypatch.setattr(segmenter.model, "forward", rigged)
        result = segmenter.predict(IMAGE, prompts)
        assert result.score == pytest.approx(0.3)
        masks[best] = result.mask
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])
    assert uses_multimask(prompts) and not uses_multimask(PROMPT_CASES["several points"])
    assert not uses_multimask(PROMPT_CASES["box"])


@pytest.mark.slow
@pytest.mark.parametrize("family", SEGMENTER_FAMILIES)
def test_an_image_is_embedded_once_at_the_segmenters_input_size(folders, family, monkeypatch):
    segmenter = load_segmenter(folders[family], device="cpu")
    seen = []
    embed = segmenter.model.get_image_embeddings

    def counted(pixel_values, *args, **kwargs):
        seen.append(tuple(pixel_values.shape))
        return embed(pixel_values, *args, **kwargs)

    monkeypatch.setattr(segmenter.model, "get_image_embeddings", counted)
    large = np.asarray(Image.open(IMAGE).convert("RGB").resize((900, 600)))
    first = segmenter.predict(large, PROMPT_CASES["box"])
    again = segmenter.predict(large.copy(), PROMPT_CASES["several points"])  # same content
    assert seen == [(1, 3, SEGMENTER_SIZE, SEGMENTER_SIZE)]  # the model's size, not 900 x 600
    assert first.mask.shape == again.mask.shape == (600, 900)
    other = large.copy()
    other[0, 0] += 1  # one pixel differs: another image
    segmenter.predict(other, PROMPT_CASES["box"])
    assert len(seen) == 2
    for side in range(EMBEDDING_CACHE_SIZE):  # older images leave the cache
        segmenter.predict(np.full((40, 50 + side, 3), side, np.uint8), Prompts(box=(1, 1, 9, 9)))
    segmenter.predict(large, PROMPT_CASES["box"])
    assert len(seen) == 2 + EMBEDDING_CACHE_SIZE + 1


def test_image_forms_give_the_same_mask(segmenters):
    segmenter = segmenters["sam"]
    rgb = rgb_image()
    expected = segmenter.predict(rgb, PROMPT_CASES["box"]).mask
    as_float = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    as_16_bit = rgb.astype(np.uint16) * 257
    for image in (IMAGE, str(IMAGE), Image.open(IMAGE), as_float, as_16_bit):
        assert np.array_equal(segmenter_rgb(image), rgb)
        assert np.array_equal(segmenter.predict(image, PROMPT_CASES["box"]).mask, expected)


def test_prompts_outside_the_image_are_refused(segmenters):
    with pytest.raises(PromptError, match=r"point 300,10 is outside the image: .* 282x285"):
        segmenters["sam"].predict(IMAGE, Prompts(points=((300, 10),)))
    with pytest.raises(PromptError, match=r"box 0,0,283,100 reaches outside the image"):
        segmenters["sam2"].predict(IMAGE, Prompts(box=(0, 0, 283, 100)))


def test_a_folder_that_is_not_a_sam_checkpoint_is_refused_naming_it(tmp_path):
    vitmatte = tmp_path / "vitmatte"
    transformers.VitMatteConfig(
        backbone_config={"model_type": "vitdet", "hidden_size": 32, "num_hidden_layers": 1}
    ).save_pretrained(vitmatte)
    with pytest.raises(ValueError, match=rf"{vitmatte}: its config is a 'vitmatte' model, not a"):
        load_segmenter(vitmatte)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=rf"{empty}: not a transformers checkpoint folder"):
        load_segmenter(empty)


@pytest.mark.slow
@pytest.mark.parametrize("family", SEGMENTER_FAMILIES)
def test_a_folder_without_its_processor_gets_the_familys_at_the_models_size(
    folders, segmenters, family, tmp_path, caplog
):
    model_only = tmp_path / "model_only"
    model_class = type(segmenters[family].model)
    model_class.from_pretrained(folders[family]).save_pretrained(model_only)
    segmenter = load_segmenter(model_only, device="cpu")
    assert "has no processor config" in caplog.text and f"{SEGMENTER_SIZE} px" in caplog.text
    for prompts in PROMPT_CASES.values():
        expected = segmenters[family].predict(IMAGE, prompts).mask
        assert np.array_equal(segmenter.predict(IMAGE, prompts).mask, expected)
    (model_only / "processor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=rf"{model_only}: cannot load its {family} model and"):
        load_segmenter(model_only)


def test_an_unreachable_hub_id_says_how_to_pass_a_local_folder():
    with pytest.raises(ValueError) as refused:
        load_segmenter("mematte-tests/no-such-sam")
    message = str(refused.value)
    assert "segmenter mematte-tests/no-such-sam: not a local folder" in message
    assert "hf download mematte-tests/no-such-sam --local-dir no-such-sam" in message
    assert "--segmenter no-such-sam" in message


# --- the predictors' box= and points= ---------------------------------------------------------


@pytest.fixture(scope="module")
def predictor(segmenters) -> MattingPredictor:
    return MattingPredictor.from_config(
        TINY_CONFIG, DEMO_CHECKPOINT, device="cpu", segmenter=segmenters["sam2"]
    )


@pytest.mark.slow
def test_a_prompt_call_is_the_call_with_the_trimap_of_the_segmenters_mask(predictor, segmenters):
    box, points = (40, 60, 200, 250), [(120, 150), (20, 20, 0)]
    for width in (5, 0.05, "auto", None):
        alpha, guidance = predictor(
            IMAGE, box=box, points=points, unknown_width=width, return_guidance=True
        )
        mask = segmenters["sam2"].predict(IMAGE, Prompts.create(box, points)).mask
        assert np.array_equal(guidance.mask, mask)
        trimap = trimap_from_mask(mask, "auto" if width is None else width)
        assert np.array_equal(guidance.trimap, trimap)
        np.testing.assert_array_equal(alpha, predictor(IMAGE, trimap))
    alpha, routing, guidance = predictor(
        IMAGE, points=[(120, 150)], return_routing=True, return_guidance=True
    )
    assert routing.keep and guidance.trimap.shape == alpha.shape
    _, given = predictor(IMAGE, trimap, return_guidance=True)
    assert given.mask is None and np.array_equal(given.trimap, trimap)


def test_a_segmenter_is_loaded_from_its_folder(folders):
    predictor = MattingPredictor.from_config(
        TINY_CONFIG, DEMO_CHECKPOINT, device="cpu", segmenter=folders["sam_hq"]
    )
    assert isinstance(predictor.segmenter, Segmenter) and predictor.segmenter.family == "sam_hq"
    assert predictor.segmenter.device == predictor.device


def test_prompt_calls_refuse_what_they_cannot_use(predictor):
    trimap = DEMO_DIR / "trimaps" / "test_001.png"
    with pytest.raises(ValueError, match="give a trimap, a mask, or box= / points="):
        predictor(IMAGE, trimap, box=(1, 2, 30, 40))
    with pytest.raises(PromptError, match="is empty"):
        predictor(IMAGE, box=(30, 2, 30, 40))
    with pytest.raises(PromptError, match="unknown label 2"):
        predictor(IMAGE, points=[(3, 4, 2)])
    with pytest.raises(PromptError, match="outside the image"):
        predictor(IMAGE, points=[(3, 400)])
    plain = MattingPredictor.from_config(TINY_CONFIG, DEMO_CHECKPOINT, device="cpu")
    with pytest.raises(ValueError, match="box= and points= need a segmenter"):
        plain(IMAGE, box=(1, 2, 30, 40))


@pytest.mark.slow
def test_the_onnx_predictor_takes_the_same_prompts(segmenters, tmp_path):
    graph = tmp_path / "tiny.onnx"
    argv = ["--config-file", str(TINY_CONFIG), "--checkpoint", str(DEMO_CHECKPOINT)]
    assert export_onnx.main([*argv, "--output", str(graph)]) == 0
    onnx = OnnxMattingPredictor(graph, device="cpu", segmenter=segmenters["sam"])
    box = (40, 60, 200, 250)
    alpha, guidance = onnx(IMAGE, box=box, unknown_width=6, return_guidance=True)
    assert np.array_equal(guidance.mask, segmenters["sam"].predict(IMAGE, Prompts(box=box)).mask)
    assert np.array_equal(guidance.trimap, trimap_from_mask(guidance.mask, 6))
    np.testing.assert_array_equal(alpha, onnx(IMAGE, guidance.trimap))
