"""COCO -> official format: polygons, compressed and uncompressed RLE (pycocotools), categories, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from sa2va_ray.data.annotations import load_annotation_list, rasterize_polygons
from sa2va_ray.data.convert.__main__ import main
from sa2va_ray.data.convert.coco import decode_rle
from sa2va_ray.data.convert.common import ConvertError, ConvertOptions
from sa2va_ray.data.convert.pipeline import convert_annotations
from sa2va_ray.data.convert.roundtrip import compare_annotations, uncompressed_rle, write_coco_file


@pytest.mark.parametrize("rle", [None, "compressed", "uncompressed"])
def test_synthetic_set_round_trip_gives_the_same_masks(synthetic_set, tmp_path, rle):
    images = synthetic_set.parent / "images"
    coco = write_coco_file(synthetic_set, images, tmp_path / "instances.json", rle=rle)
    result = convert_annotations("coco", coco, tmp_path / "out", images)
    assert result.clean and result.validation.valid == 6
    ious = compare_annotations(synthetic_set, images, result.annotations, result.images_dir)
    assert len(ious) == 6 and min(ious.values()) >= 0.99
    traced = result.report.objects
    assert len(traced) == (0 if rle is None else 6) and all(o["iou"] >= 0.99 for o in traced)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode under NumPy 2
def test_uncompressed_rle_is_what_pycocotools_reads():
    m = np.zeros((7, 5), bool)
    m[0, 0] = m[2:5, 1:4] = m[6, 4] = True
    rle = uncompressed_rle(m)
    assert np.array_equal(mask_utils.decode(mask_utils.frPyObjects(rle, 7, 5)).astype(bool), m)
    assert np.array_equal(decode_rle(rle), m)


def _coco(tmp_path, anns, cats=None, images=None):
    d = tmp_path / "arcade"
    (d / "images").mkdir(parents=True, exist_ok=True)
    for name in ("1.png", "2.png"):
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(d / "images" / name)
    doc = {"images": images or [{"id": 1, "file_name": "1.png", "width": 64, "height": 64},
                                {"id": 2, "file_name": "2.png", "width": 64, "height": 64}],
           "annotations": anns,
           "categories": cats or [{"id": 1, "name": "1"}, {"id": 2, "name": "stenosis"}]}
    path = d / "annotations" / "train.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(doc))
    return path, d / "images"


def _ring_rle(compressed=True):
    m = np.zeros((64, 64), np.uint8)
    m[10:50, 10:50] = 1
    m[20:40, 20:40] = 0  # a loop: the hole must survive
    enc = mask_utils.encode(np.asfortranarray(m))
    seg = {"size": enc["size"], "counts": enc["counts"].decode("ascii")} if compressed else uncompressed_rle(m)
    return m.astype(bool), seg


def test_categories_texts_merge_and_rle_with_a_hole(tmp_path):
    ring, seg = _ring_rle()
    tri = [[5.0, 5.0, 30.0, 5.0, 5.0, 30.0]]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": seg, "iscrowd": 1},
            {"id": 2, "image_id": 1, "category_id": 2, "segmentation": tri, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "segmentation": tri, "iscrowd": 0}]
    path, images = _coco(tmp_path, anns)
    mapped = convert_annotations("coco", path, tmp_path / "a", images, ConvertOptions(
        text_map={"1": "blood vessel", "stenosis": "stenosis"}))  # by id or by name
    recs = load_annotation_list(mapped.annotations)
    assert [r["text"] for r in recs] == [["blood vessel", "stenosis"], ["blood vessel"]]
    assert np.array_equal(rasterize_polygons(recs[0]["mask"][0], 64, 64), ring)
    assert mapped.report.objects[0]["iou"] == 1.0

    merged = convert_annotations("coco", path, tmp_path / "b", images, merge_text="blood vessel")
    recs = load_annotation_list(merged.annotations)
    assert [r["text"] for r in recs] == [["blood vessel"], ["blood vessel"]]  # one mask: the union
    assert rasterize_polygons(recs[0]["mask"][0], 64, 64).sum() == (ring | rasterize_polygons(tri, 64, 64)).sum()

    names = convert_annotations("coco", path, tmp_path / "c", images)  # no map: the category names
    assert load_annotation_list(names.annotations)[0]["text"] == ["1", "stenosis"]

    with pytest.raises(ConvertError, match=r"unmapped category\(s\): '2 \(stenosis\)' \(1 object"):
        convert_annotations("coco", path, tmp_path / "d", images, ConvertOptions(text_map={"1": "blood vessel"}))


def test_bad_input_is_named_counted_and_never_a_crash(tmp_path, capsys):
    _, seg = _ring_rle(compressed=False)
    bad_rle = {"size": [64, 64], "counts": [5, 3]}  # does not cover the image
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": seg, "iscrowd": 1},
            {"id": 2, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 9, 1]], "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 9, "segmentation": [[1, 1, 9, 1, 9, 9]], "iscrowd": 0},
            {"id": 4, "image_id": 7, "category_id": 1, "segmentation": [[1, 1, 9, 1, 9, 9]], "iscrowd": 0},
            {"id": 5, "image_id": 3, "category_id": 1, "segmentation": [[1, 1, 9, 1, 9, 9]], "iscrowd": 0},
            {"id": 6, "image_id": 1, "category_id": 1, "segmentation": bad_rle, "iscrowd": 1},
            {"id": 7, "image_id": 2, "category_id": 1, "segmentation": [[1, 1, 9, 1, 9, 9]], "iscrowd": 0}]
    images = [{"id": 1, "file_name": "1.png", "width": 64, "height": 64},
              {"id": 2, "file_name": "2.png", "width": 128, "height": 128},  # recorded 2x the real size
              {"id": 3, "file_name": "gone.png", "width": 64, "height": 64}]
    path, image_dir = _coco(tmp_path, anns, images=images)
    out = tmp_path / "out"
    rc = main(["--from", "coco", "--input", str(path), "--images", str(image_dir), "--out", str(out),
               "--merge-categories", "blood vessel", "--strict"])
    printed = capsys.readouterr()
    assert rc == 2 and "Traceback" not in printed.out + printed.err
    report = json.loads((out / "convert_report.json").read_text())
    assert report["dropped_per_reason"] == {"bad_shape": 1, "unknown_category": 1, "unknown_image": 1,
                                            "missing_image": 1, "bad_segmentation": 1}
    assert "annotation 3: unknown_category: category_id 9 is not in 'categories'" in printed.out
    assert "missing_image: gone.png not found in" in printed.out
    assert "128x128 recorded for the 64x64 image 2.png: points rescaled by 0.5" in printed.out
    recs = load_annotation_list(out / "annotations.json")
    assert recs[1]["mask"] == [[[0.5, 0.5, 4.5, 0.5, 4.5, 4.5]]]


def test_unusable_coco_file_is_one_line(tmp_path, capsys):
    (tmp_path / "x.json").write_text("{not json")
    assert main(["--from", "coco", "--input", str(tmp_path / "x.json"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not valid JSON" in err and err.strip().count("\n") == 0
    (tmp_path / "y.json").write_text("[]")
    assert main(["--from", "coco", "--input", str(tmp_path / "y.json"), "--out", str(tmp_path / "o")]) == 2
    assert "not a COCO instances file" in capsys.readouterr().err
