"""Loader: nestings and the mask/text policy, rasteriser, image loading."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sa2va_ray.data.annotations import (
    AnnotationFileError,
    ImageTooLargeError,
    load_annotation_list,
    load_image,
    parse_record,
    rasterize_polygons,
    scale_polygons,
)

P1 = [0, 0, 4, 0, 4, 4]
P2 = [10, 10, 14, 10, 14, 14]
P3 = [20, 0, 24, 0, 24, 4]


def _rec(mask, text):
    return {"image": "a.png", "mask": mask, "text": text}


@pytest.mark.parametrize(
    ("mask", "texts", "expected"),
    [
        (P1, ["a"], [[P1]]),  # depth 1: one polygon
        ([P1, P2], ["a"], [[P1, P2]]),  # depth 2, one text: union
        ([P1, P2], ["a", "b"], [[P1], [P2]]),  # depth 2, polygon i -> text i
        ([[P1], [P2, P3]], ["a", "b"], [[P1], [P2, P3]]),  # depth 3, mask i -> text i
        ([[P1], [P2, P3]], ["a"], [[P1, P2, P3]]),  # depth 3, one text: union of all masks
        ([[P1, P2]], ["a"], [[P1, P2]]),  # depth 3 with one mask (the synthetic format)
    ],
)
def test_nesting_policy(mask, texts, expected):
    sample, problems = parse_record(3, _rec(mask, texts))
    assert problems == []
    assert sample.masks == expected
    assert sample.texts == texts
    assert sample.index == 3 and sample.sample_id(0) == "3:0"


@pytest.mark.parametrize(
    ("mask", "texts"),
    [
        (P1, ["a", "b"]),  # one polygon, two texts
        ([P1, P2, P3], ["a", "b"]),  # 3 polygons, 2 texts
        ([[P1], [P2], [P3]], ["a", "b"]),  # 3 masks, 2 texts
    ],
)
def test_count_mismatch(mask, texts):
    sample, problems = parse_record(0, _rec(mask, texts))
    assert sample is None
    assert [p.problem for p in problems] == ["count_mismatch"]
    assert "text" in problems[0].message


def test_parse_problems_are_all_listed():
    rec = {"image": "x.jpg", "mask": [[0, 0, 1, float("nan"), 2, 2, 3], [0, 0, 1]], "text": ["a", "b"]}
    sample, problems = parse_record(5, rec)
    codes = sorted(p.problem for p in problems)
    assert sample is None
    assert codes == ["bad_coordinates", "bad_polygon", "bad_polygon"]
    assert all(p.index == 5 and p.image == "x.jpg" for p in problems)


@pytest.mark.parametrize(
    ("record", "code"),
    [
        ("not a dict", "invalid_record"),
        ({"mask": P1, "text": ["a"]}, "invalid_record"),
        ({"image": "a.png", "text": ["a"]}, "invalid_record"),
        ({"image": 3, "mask": P1, "text": ["a"]}, "invalid_record"),
        ({"image": "a.png", "mask": P1, "text": "a"}, "invalid_record"),
        ({"image": "a.png", "mask": [P1, [[1, 2]]], "text": ["a"]}, "invalid_record"),
        ({"image": "a.png", "mask": P1}, "empty_text"),
        ({"image": "a.png", "mask": P1, "text": []}, "empty_text"),
        ({"image": "a.png", "mask": P1, "text": ["  "]}, "empty_text"),
        ({"image": "a.png", "mask": [0, 0, "1", 0, 1, 1], "text": ["a"]}, "bad_coordinates"),
        ({"image": "a.png", "mask": [0, 0, None, 0, 1, 1], "text": ["a"]}, "bad_coordinates"),
        ({"image": "a.png", "mask": [0, 0, float("inf"), 0, 1, 1], "text": ["a"]}, "bad_coordinates"),
        ({"image": "a.png", "mask": [0, 0, 1, 0, 1], "text": ["a"]}, "bad_polygon"),
        ({"image": "a.png", "mask": [0, 0, 1, 0], "text": ["a"]}, "bad_polygon"),
        ({"image": "a.png", "mask": [], "text": ["a"]}, "empty_mask"),
        ({"image": "a.png", "mask": [[P1], []], "text": ["a", "b"]}, "empty_mask"),
    ],
)
def test_parse_problem_codes(record, code):
    sample, problems = parse_record(0, record)
    assert sample is None
    assert code in {p.problem for p in problems}


def test_load_annotation_list_rejects_non_list(tmp_path):
    (tmp_path / "a.json").write_text('{"image": "x"}')
    with pytest.raises(AnnotationFileError, match="list"):
        load_annotation_list(tmp_path / "a.json")
    (tmp_path / "b.json").write_text("[{")
    with pytest.raises(AnnotationFileError):
        load_annotation_list(tmp_path / "b.json")


def test_rasterize_square_and_union():
    m = rasterize_polygons([[2, 2, 12, 2, 12, 12, 2, 12]], 16, 16)
    assert m.dtype == bool and m.shape == (16, 16)
    assert m.sum() == 100 and m[2:12, 2:12].all()  # pixel centres 2.5 .. 11.5
    u = rasterize_polygons([[0, 0, 4, 0, 4, 4, 0, 4], [2, 2, 6, 2, 6, 6, 2, 6]], 8, 8)
    assert u.sum() == 16 + 16 - 4


def test_rasterize_clips_out_of_bounds_points():
    m = rasterize_polygons([[-5, -5, 8, -5, 8, 8, -5, 8]], 4, 6)
    assert m.shape == (4, 6) and m.all()
    far = rasterize_polygons([[-1e9, -1e9, 1e9, -1e9, 1e9, 1e9]], 5, 5)
    assert far.shape == (5, 5) and far.any()


def test_rasterize_matches_reference_point_in_polygon():
    from skimage.draw import polygon2mask

    rng = np.random.default_rng(0)
    for _ in range(50):
        pts = rng.uniform(-5, 45, (int(rng.integers(3, 10)), 2))  # random, often self-intersecting
        ours = rasterize_polygons([pts.ravel().tolist()], 40, 30)
        ref = polygon2mask((40, 30), pts[:, ::-1] - 0.5)  # skimage: pixel centres at integers
        assert (ours == ref).all()


def test_scale_polygons_keeps_area_ratio():
    poly = [[2, 2, 12, 2, 12, 12, 2, 12]]
    m = rasterize_polygons(scale_polygons(poly, 2.0, 3.0), 48, 32)
    assert m.sum() == 20 * 30


def test_load_image_modes(tmp_path):
    gray = tmp_path / "g.png"
    Image.fromarray(np.full((5, 7), 80, np.uint8), mode="L").save(gray)
    rgba = tmp_path / "a.png"
    arr = np.zeros((5, 7, 4), np.uint8)
    arr[..., 0], arr[..., 3] = 200, 128
    Image.fromarray(arr, mode="RGBA").save(rgba)
    for path in (gray, rgba):
        im = load_image(path)
        assert im.mode == "RGB" and im.size == (7, 5)
    assert np.asarray(load_image(gray))[0, 0].tolist() == [80, 80, 80]
    assert abs(int(np.asarray(load_image(rgba))[0, 0, 0]) - 100) <= 1  # composited onto black


def test_load_image_16bit_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "d.png"
    values = np.linspace(1000, 4000, 64, dtype=np.uint16).reshape(8, 8)  # 12-bit data in 16 bits
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_image(path))[..., 0].astype(int)
    assert out.min() == 0 and out.max() == 255  # full range used, nothing clipped to 255
    assert (np.diff(out.ravel()) >= 0).all() and len(np.unique(out)) > 50


def test_load_image_bomb_refused_from_header(tmp_path, files):
    bomb = files.bomb_png(tmp_path / "bomb.png")
    with pytest.raises(ImageTooLargeError, match="pixels"):
        load_image(bomb)
    small = files.rgb(tmp_path / "s.png", (20, 20))
    with pytest.raises(ImageTooLargeError):
        load_image(small, max_pixels=100)
    assert load_image(small, max_pixels=400).size == (20, 20)


def test_load_image_truncated_raises(tmp_path, files):
    with pytest.raises(OSError):
        load_image(files.truncated_jpeg(tmp_path / "t.jpg"))
