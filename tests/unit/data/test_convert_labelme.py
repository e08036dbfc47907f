"""LabelMe -> official format: the synthetic set round trip, shapes, label maps, the 800-for-512 rescale, bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sa2va_ray.data.annotations import load_annotation_list, rasterize_polygons
from sa2va_ray.data.convert.__main__ import main
from sa2va_ray.data.convert.common import ConvertError, ConvertOptions
from sa2va_ray.data.convert.pipeline import convert_annotations
from sa2va_ray.data.convert.roundtrip import compare_annotations, labelme_roundtrip, write_labelme_files

SQUARE = [[100, 100], [300, 100], [300, 300], [100, 300]]


def shape(points, label="dongmai", kind="polygon"):
    """A shape exactly as LabelMe 5 writes it."""
    return {"label": label, "points": points, "group_id": None, "description": "", "shape_type": kind, "flags": {},
            "mask": None}


def labelme_doc(image_path, shapes, width, height, image_data=None):
    return {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": image_path, "imageData": image_data,
            "imageHeight": height, "imageWidth": width}


@pytest.fixture
def folder(tmp_path):
    """A LabelMe folder with 512x512 images next to the JSON files, as LabelMe keeps them."""
    d = tmp_path / "labelme"
    d.mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.full((512, 512), 80, np.uint8), mode="L").save(d / f"{name}.jpg")
    return d


def write(folder: Path, name: str, doc) -> Path:
    path = folder / f"{name}.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def test_synthetic_set_round_trip_gives_the_same_masks(synthetic_set, tmp_path):
    images = synthetic_set.parent / "images"
    write_labelme_files(synthetic_set, images, tmp_path / "lm", label_of={"blood vessel": "dongmai"},
                        image_data="not base64 at all: must never be decoded")
    result = convert_annotations("labelme", tmp_path / "lm", tmp_path / "out", images,
                                 ConvertOptions(text_map={"dongmai": "blood vessel"}))
    assert result.clean and result.validation.valid == len(load_annotation_list(synthetic_set))
    ious = compare_annotations(synthetic_set, images, result.annotations, result.images_dir)
    assert len(ious) == 6 and min(ious.values()) >= 0.99
    assert sorted(p.name for p in result.images_dir.iterdir()) == sorted(p.name for p in images.iterdir())


def test_labelme_roundtrip_of_the_demo(synthetic_set, tmp_path):
    rt = labelme_roundtrip(synthetic_set, synthetic_set.parent / "images", tmp_path)
    assert rt.objects == 6 and rt.min_iou >= 0.99 and rt.dropped == 0
    assert "IoU with the originals min 1.0000" in rt.line()


def test_800_recorded_for_512_is_rescaled_with_a_warning(folder, tmp_path):
    big = [[x * 800 / 512, y * 800 / 512] for x, y in SQUARE]
    write(folder, "a", labelme_doc("a.jpg", [shape(big)], 800, 800))
    result = convert_annotations("labelme", folder, tmp_path / "out")
    warning = " ".join(m for _, m in result.report.warnings)
    assert "800x800 recorded for the 512x512 image a.jpg" in warning and "rescaled by 0.64" in warning
    [record] = load_annotation_list(result.annotations)
    np.testing.assert_allclose(record["mask"][0][0], [v for p in SQUARE for v in p])
    assert record["text"] == ["dongmai"]  # no --label-map: the label is the text

    with pytest.raises(ConvertError, match="nothing to write"):
        convert_annotations("labelme", folder, tmp_path / "out2", opts=ConvertOptions(on_size_mismatch="error"))
    rc = main(["--from", "labelme", "--input", str(folder), "--out", str(tmp_path / "out3"),
               "--on-size-mismatch", "error"])
    assert rc == 2


def test_rectangles_circles_and_several_shapes_of_one_text(folder, tmp_path):
    shapes = [shape([[10, 20], [110, 70]], kind="rectangle"), shape([[300, 300], [300, 360]], kind="circle"),
              shape([[400, 10], [500, 10], [450, 90]]), shape([[5, 5], [60, 60]], "dongmai", "line"),
              shape(SQUARE, "zhijia")]
    write(folder, "a", labelme_doc("a.jpg", shapes, 512, 512))
    result = convert_annotations("labelme", folder, tmp_path / "out",
                                 opts=ConvertOptions(text_map={"dongmai": "blood vessel", "zhijia": "catheter"}))
    [record] = load_annotation_list(result.annotations)
    assert record["text"] == ["blood vessel", "catheter"]  # one mask per text: the union of its shapes
    vessel = rasterize_polygons(record["mask"][0], 512, 512)
    assert vessel[20:70, 10:110].all() and not vessel[:20, :300].any() and vessel[70:, :110].sum() == 0
    yy, xx = np.mgrid[0:512, 0:512] + 0.5
    disc = (xx - 300) ** 2 + (yy - 300) ** 2 <= 60**2
    circle = rasterize_polygons([record["mask"][0][1]], 512, 512)
    assert (circle & disc).sum() / (circle | disc).sum() >= 0.99
    assert math.isclose(circle.sum(), math.pi * 60**2, rel_tol=0.01)
    [line] = result.report.drops
    assert line.reason == "unsupported_shape" and "'line'" in line.message and line.source == "a.json"


def test_unmapped_labels_are_one_line_listing_all_with_counts(folder, tmp_path):
    write(folder, "a", labelme_doc("a.jpg", [shape(SQUARE), shape(SQUARE, "zhijia"), shape(SQUARE, "x")], 512, 512))
    write(folder, "b", labelme_doc("b.jpg", [shape(SQUARE, "zhijia")], 512, 512))
    opts = ConvertOptions(text_map={"dongmai": "blood vessel"})
    with pytest.raises(ConvertError) as e:
        convert_annotations("labelme", folder, tmp_path / "out", opts=opts)
    msg = str(e.value)
    assert "\n" not in msg and "'zhijia' (2 object(s) in 2 file(s))" in msg and "'x' (1 object(s) in 1 file(s))" in msg
    assert "--label-map" in msg and "--drop-unmapped" in msg
    opts.drop_unmapped = True
    result = convert_annotations("labelme", folder, tmp_path / "out", opts=opts)
    assert result.report.counts() == {"unmapped_label": 3}
    assert [r["image"] for r in load_annotation_list(result.annotations)] == ["a.jpg"]


def test_bad_input_is_named_counted_and_never_a_crash(folder, tmp_path, capsys):
    write(folder, "a", labelme_doc("a.jpg", [shape(SQUARE), shape([[1, 1], [5, 5]]),
                                             shape([[1, 1], [5, 5], [9, 9]]), {"label": "dongmai"}], 512, 512))
    write(folder, "b", '{"version": "5.5.0", "shapes": [')  # unreadable JSON
    write(folder, "c", labelme_doc("../elsewhere/c_missing.jpg", [shape(SQUARE), shape(SQUARE)], 512, 512))
    write(folder, "d", {"something": "else"})
    out = tmp_path / "out"
    rc = main(["--from", "labelme", "--input", str(folder), "--out", str(out), "--strict",
               "--label-map", "dongmai=blood vessel"])
    printed = capsys.readouterr()
    assert rc == 2 and "Traceback" not in printed.out + printed.err
    report = json.loads((out / "convert_report.json").read_text())
    assert report["dropped_per_reason"] == {"bad_shape": 3, "unreadable_json": 1, "missing_image": 2,
                                            "not_labelme": 1}
    lines = printed.out
    assert "a.json: shape 1 (polygon 'dongmai'): bad_shape: polygon with 2 point(s)" in lines
    assert "a.json: shape 2 (polygon 'dongmai'): bad_shape:" in lines and "zero area" in lines
    assert "b.json: whole file: unreadable_json: not valid JSON" in lines
    assert "c.json: all 2 shape(s): missing_image: image '../elsewhere/c_missing.jpg'" in lines
    assert "fix:" in lines and "validation of" in lines
    # Without --strict the same input converts what it can and exits 0.
    assert main(["--from", "labelme", "--input", str(folder), "--out", str(out)]) == 0


def test_cli_runs_without_torch_and_errors_are_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "sa2va_ray.data.convert", "--from", "labelme", "--input",
                          str(tmp_path / "nothing"), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("error: --input") and out.stderr.strip().count("\n") == 0
    code = ("import sys\nimport sa2va_ray.data.convert.__main__, sa2va_ray.data.convert.roundtrip\n"
            "from sa2va_ray.data.convert import coco, labelme, masks\n"
            "print(sorted(m for m in ('torch', 'transformers', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


def test_ai_mask_shapes_are_traced_with_their_hole(folder, tmp_path):
    import base64
    import io

    crop = np.zeros((30, 40), bool)
    crop[2:28, 3:37] = True
    crop[10:20, 12:28] = False  # a loop
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, "PNG")  # a mode "1" PNG, as LabelMe stores a mask shape
    mask_shape = shape([[100.0, 50.0], [139.0, 79.0]], kind="mask")
    mask_shape["mask"] = base64.b64encode(buf.getvalue()).decode("ascii")
    broken = shape([[0.0, 0.0], [5.0, 5.0]], kind="mask")
    broken["mask"] = "%%%"
    write(folder, "a", labelme_doc("a.jpg", [mask_shape, broken], 512, 512))
    result = convert_annotations("labelme", folder, tmp_path / "out")
    [record] = load_annotation_list(result.annotations)
    expected = np.zeros((512, 512), bool)
    expected[50:80, 100:140] = crop
    assert np.array_equal(rasterize_polygons(record["mask"][0], 512, 512), expected)
    assert result.report.objects[0]["iou"] == 1.0
    [drop] = result.report.drops
    assert drop.reason == "bad_shape" and "not a base64 PNG" in drop.message
