"""Routing pictures: layout of the panels and where the tint and the heat map land."""

import numpy as np
import pytest

from utils.visualizer import (
    GAP,
    LEGEND_LINE_HEIGHT,
    LEGEND_MARGIN,
    PANEL_MAX_SIDE,
    TITLE_HEIGHT,
    routing_figure,
)

PATCH = 16


def _inputs():
    image = np.full((64, 96, 3), 0.5, np.float32)  # 4 x 6 tokens
    keep = np.zeros((4, 6), np.float32)
    keep[0, 0] = 1  # top-left token goes to global attention
    probability = np.zeros((4, 6), np.float32)
    probability[3, 5] = 1.0  # bottom-right token: p(global) = 1
    return image, keep, probability


def test_one_row_per_map_kind_one_column_per_block_and_a_legend():
    image, keep, probability = _inputs()
    width = PANEL_MAX_SIDE  # the longer side (96 px) is scaled to the panel size
    height = round(64 * PANEL_MAX_SIDE / 96)
    decisions = routing_figure(image, [keep, keep], [2, 5])
    legend = 2 * LEGEND_LINE_HEIGHT + LEGEND_MARGIN  # two lines: global and LTRM tokens
    assert decisions.shape == (TITLE_HEIGHT + height + legend, 2 * width + GAP, 3)
    both = routing_figure(image, [keep, keep], [2, 5], probabilities=[probability] * 2)
    legend += LEGEND_LINE_HEIGHT  # the colour bar of the probabilities
    assert both.shape == (2 * (TITLE_HEIGHT + height) + GAP + legend, 2 * width + GAP, 3)
    swatch = both[-legend + LEGEND_MARGIN + 2, LEGEND_MARGIN + 2].astype(int)  # first swatch, BGR
    assert swatch[2] > swatch[0] + 50  # the orange of global tokens


def test_8_bit_images_draw_like_float_images():
    image, keep, probability = _inputs()
    as_uint8 = np.round(image * 255).astype(np.uint8)
    figure = routing_figure(image, [keep], [2], probabilities=[probability])
    np.testing.assert_allclose(
        routing_figure(as_uint8, [keep], [2], probabilities=[probability]), figure, atol=1
    )


def test_global_tokens_are_tinted_and_probabilities_coloured_blue_to_red():
    image, keep, probability = _inputs()
    figure = routing_figure(image, [keep], [2], probabilities=[probability]).astype(int)  # BGR
    token = PANEL_MAX_SIDE // 6  # one token in panel pixels
    height = round(64 * PANEL_MAX_SIDE / 96)  # panel height
    top = figure[TITLE_HEIGHT : TITLE_HEIGHT + height]
    routed, refined = top[token // 2, token // 2], top[token // 2, 3 * token]
    assert routed[2] > routed[0] + 50  # orange: red over blue
    assert refined.max() < 128  # LTRM tokens dimmed below the grey input
    bottom = figure[2 * TITLE_HEIGHT + height + GAP : 2 * (TITLE_HEIGHT + height) + GAP]
    sure, unsure = bottom[-token // 2, -token // 2], bottom[token // 2, token // 2]
    assert sure[2] > sure[0] + 50  # p = 1: red
    assert unsure[0] > unsure[2] + 50  # p = 0: blue


@pytest.mark.parametrize(
    "hw", [(64, 96), (13 * 16, 16), (40 * 16, 16), (4000, 3), (16, 40 * 16), (3, 4000), (1, 1)]
)
def test_pictures_fit_any_aspect_ratio(hw):
    """Tall, narrow images (below the width of the legend or of a caption) and wide, flat ones
    give whole pictures: every panel, caption and legend line fits."""
    grid = (-(-hw[0] // PATCH), -(-hw[1] // PATCH))  # tokens, padded up
    rng = np.random.default_rng(0)
    image = rng.random((*hw, 3)).astype(np.float32)
    keep = (rng.random(grid) > 0.5).astype(np.float32)
    probability = rng.random(grid).astype(np.float32)
    figure = routing_figure(image, [keep, keep], [1, 3], probabilities=[probability] * 2)
    assert figure.ndim == 3 and figure.shape[2] == 3 and figure.dtype == np.uint8
    legend = 3 * LEGEND_LINE_HEIGHT + LEGEND_MARGIN
    assert figure.shape[0] >= 2 * TITLE_HEIGHT + GAP + legend
    # Every caption and legend line ends inside the picture, before a white margin (text that
    # did not fit would run into the last columns).
    for picture in (figure, routing_figure(image, [keep], [1], probabilities=[probability])):
        assert (picture[-legend:, -LEGEND_MARGIN:] == 255).all()
        assert (picture[:TITLE_HEIGHT, -LEGEND_MARGIN:] == 255).all()
