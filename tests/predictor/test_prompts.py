"""predictor.prompts: the prompt data and its checks, the command line's --box / --point, the
prompts file, and the images a prompt run matches them to."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from predictor.prompts import (
    BACKGROUND,
    FOREGROUND,
    Point,
    PromptError,
    Prompts,
    add_prompt_arguments,
    parse_box,
    parse_point,
    prompt_targets,
    read_prompts_file,
)


def test_prompts_hold_a_box_and_labelled_points():
    prompts = Prompts.create(box=[1, 2, 30, 40.5], points=[(5, 6), (7, 8, 0), np.array([9, 10])])
    assert prompts.box == (1.0, 2.0, 30.0, 40.5)
    assert prompts.points == (Point(5, 6, FOREGROUND), Point(7, 8, BACKGROUND), Point(9, 10, 1))
    assert prompts.multiple and not Prompts(points=((1, 2),)).multiple
    assert prompts.describe() == (
        "box 1,2,30,40.5; point 5,6 (foreground); point 7,8 (background); point 9,10 (foreground)"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"box": (10, 5, 10, 20)}, r"box 10,5,10,20 is empty: X0 < X1 and Y0 < Y1"),
        ({"box": (10, 25, 20, 20)}, "is empty"),
        ({"box": (1, 2, 3)}, "give X0,Y0,X1,Y1"),
        ({"box": "1,2,3,4"}, "give X0,Y0,X1,Y1"),
        ({"points": [(1, 2, 3)]}, r"point 1,2,3: unknown label 3 \(1 = foreground, 0 = back"),
        ({"points": [(1, 2, True)]}, "unknown label True"),
        ({"points": [(1, 2, 1, 0)]}, "give X,Y or X,Y,LABEL"),
        ({"points": [(1, float("nan"))]}, "not a finite number"),
        ({"points": [("1", 2)]}, "not a finite number"),
        ({"points": [(1, 2, 0)]}, "a box or at least one foreground point"),
        ({}, "a box or at least one foreground point"),
    ],
)
def test_bad_prompts_are_refused_saying_why(kwargs, message):
    with pytest.raises(PromptError, match=message):
        Prompts.create(**kwargs)


def test_prompts_must_lie_in_the_image():
    hw = (100, 200)  # H, W
    Prompts(box=(0, 0, 200, 100), points=((0, 0), (199.5, 99.5))).check_inside(hw)
    for prompts, message in (
        (Prompts(points=((200, 10),)), r"point 200,10 is outside the image: a.png is 200x100"),
        (Prompts(points=((-1, 10),)), "outside the image"),
        (Prompts(box=(0, 0, 201, 100)), r"box 0,0,201,100 reaches outside the image"),
        (Prompts(box=(-5, 0, 20, 10)), "reaches outside the image"),
    ):
        with pytest.raises(PromptError, match=message):
            prompts.check_inside(hw, "a.png")


def test_command_line_prompts():
    assert parse_box("1,2,30,40") == (1, 2, 30, 40)
    assert parse_point("5,6") == Point(5, 6, 1)
    assert parse_point("5.5,6,0") == Point(5.5, 6, 0)
    for parse, text, message in (
        (parse_box, "1,2,3", "give X0,Y0,X1,Y1"),
        (parse_box, "30,2,10,40", "is empty"),
        (parse_box, "a,b,c,d", "comma-separated numbers"),
        (parse_point, "5", "give X,Y or X,Y,LABEL"),
        (parse_point, "5,6,2", "unknown label 2"),
        (parse_point, "5,6,0.5", "unknown label 0.5"),
    ):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse(text)


def test_add_prompt_arguments_declares_the_options():
    parser = argparse.ArgumentParser()
    add_prompt_arguments(parser)
    args = parser.parse_args(["--segmenter", "dir", "--box", "1,2,3,4", "--point", "2,3"])
    assert (args.segmenter, args.box, args.point) == ("dir", (1, 2, 3, 4), [Point(2, 3, 1)])
    args = parser.parse_args(["--point", "2,3", "--point", "4,5,0", "--prompts", "p.json"])
    assert args.point == [Point(2, 3), Point(4, 5, 0)] and args.prompts == Path("p.json")


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_a_prompts_file_gives_the_good_entries_and_why_the_others_are_bad(tmp_path):
    path = write_json(
        tmp_path / "prompts.json",
        {
            "a.png": {"box": [1, 2, 30, 40]},
            "b": {"points": [[5, 6], [7, 8, 0]], "box": [0, 0, 9, 9]},
            "c.png": {"points": [[5, 6, 4]]},
            "d.png": {"box": [5, 5, 5, 9]},
            "e.png": {"bbox": [1, 2, 3, 4]},
            "f.png": [1, 2, 3, 4],
        },
    )
    good, bad = read_prompts_file(path)
    assert good == {
        "a.png": Prompts(box=(1, 2, 30, 40)),
        "b": Prompts(box=(0, 0, 9, 9), points=(Point(5, 6), Point(7, 8, 0))),
    }
    assert "unknown label 4" in bad["c.png"] and "is empty" in bad["d.png"]
    assert "unknown key 'bbox'" in bad["e.png"] and "give an object" in bad["f.png"]
    (tmp_path / "broken.json").write_text("{not json")
    for name, message in (("broken.json", "not a JSON prompts file"), ("none.json", "cannot read")):
        with pytest.raises(PromptError, match=rf"{name}: {message}"):
            read_prompts_file(tmp_path / name)
    with pytest.raises(PromptError, match="give an object mapping image names to prompts"):
        read_prompts_file(write_json(tmp_path / "list.json", [1]))


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for name, size in (("a.png", (40, 30)), ("b.jpg", (60, 50)), ("c.png", (20, 20))):
        Image.new("RGB", size).save(folder / name)
    return folder


def args_of(**values) -> argparse.Namespace:
    defaults = {"image": None, "data_dir": None, "prompts": None, "box": None, "point": None}
    return argparse.Namespace(**{**defaults, **values})


def test_one_image_takes_the_command_lines_prompts(images):
    image = str(images / "a.png")
    targets, failed = prompt_targets(args_of(image=[image], box=(1, 2, 30, 30)))
    assert [(t.image, t.prompts) for t in targets] == [(Path(image), Prompts(box=(1, 2, 30, 30)))]
    assert failed == []
    with pytest.raises(PromptError, match=r"box 1,2,40,31 reaches outside .* a.png is 40x30"):
        prompt_targets(args_of(image=[image], box=(1, 2, 40, 31)))


def test_listed_images_take_their_file_entries_by_name_or_stem_and_refuse_the_rest(
    images, tmp_path
):
    listed = [str(images / "a.png"), str(images / "b.jpg")]
    path = write_json(
        tmp_path / "p.json", {"a.png": {"box": [1, 1, 9, 9]}, "b": {"points": [[3, 4]]}}
    )
    targets, failed = prompt_targets(args_of(image=listed, prompts=path))
    assert {t.image.name: t.prompts for t in targets} == {
        "a.png": Prompts(box=(1, 1, 9, 9)),
        "b.jpg": Prompts(points=((3, 4),)),
    }
    for entries, message in (
        ({"a.png": {"box": [1, 1, 9, 9]}, "x.png": {"box": [1, 1, 9, 9]}}, "not among --image: x"),
        ({"a.png": {"box": [1, 1, 9, 9]}}, r"has no prompts for .*b.jpg"),
        ({"a.png": {"box": [1, 1, 9, 9]}, "b": {"points": [[3, 4, 7]]}}, "b: .*unknown label 7"),
        ({"a.png": {"box": [1, 1, 41, 9]}, "b": {"points": [[3, 4]]}}, "reaches outside"),
        (
            {
                "a.png": {"box": [1, 1, 9, 9]},
                "a": {"box": [1, 1, 9, 9]},
                "b": {"box": [1, 1, 9, 9]},
            },
            "same name 'a'",
        ),
    ):
        with pytest.raises(PromptError, match=message):
            prompt_targets(args_of(image=listed, prompts=write_json(tmp_path / "q.json", entries)))


def test_a_folder_run_reports_the_bad_entries_and_keeps_the_good_ones(images, tmp_path):
    path = write_json(
        tmp_path / "p.json",
        {
            "a.png": {"box": [1, 1, 9, 9]},
            "b": {"points": [[3, 4]]},
            "missing.png": {"box": [1, 1, 9, 9]},
            "c.png": {"points": [[30, 4]]},
            "a": {"box": [2, 2, 9, 9]},
            "bad.png": {"points": [[3, 4, 5]]},
        },
    )
    targets, failed = prompt_targets(args_of(data_dir=str(images), prompts=path))
    assert sorted(t.image.name for t in targets) == ["a.png", "b.jpg"]
    reasons = {Path(f["path"]).name: f["reason"] for f in failed}
    assert set(reasons) == {"missing.png", "c.png", "a.png", "bad.png"}
    assert reasons["missing.png"].startswith("no such image")
    assert "point 30,4 is outside the image: c.png is 20x20" in reasons["c.png"]
    assert "same name 'a'" in reasons["a.png"] and "unknown label 5" in reasons["bad.png"]
    with pytest.raises(FileNotFoundError, match="no such folder"):
        prompt_targets(args_of(data_dir=str(tmp_path / "none"), prompts=path))
