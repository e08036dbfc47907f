"""Mask folders -> official format: binary and label masks, holes, the pattern, and every bad case."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sa2va_ray.data.annotations import load_annotation_list, rasterize_polygons
from sa2va_ray.data.convert.__main__ import main
from sa2va_ray.data.convert.common import ConvertError, ConvertOptions
from sa2va_ray.data.convert.pipeline import convert_annotations
from sa2va_ray.data.convert.roundtrip import compare_annotations, write_mask_folder


def test_synthetic_set_round_trip_gives_the_same_masks(synthetic_set, tmp_path):
    images = synthetic_set.parent / "images"
    write_mask_folder(synthetic_set, images, tmp_path / "masks")  # 0/255 PNGs, x_mask.png
    result = convert_annotations("masks", tmp_path / "masks", tmp_path / "out", images, text="blood vessel")
    assert result.clean and result.validation.valid == 6
    ious = compare_annotations(synthetic_set, images, result.annotations, result.images_dir)
    assert len(ious) == 6 and min(ious.values()) >= 0.99
    assert [o["iou"] for o in result.report.objects] == [1.0] * 6


@pytest.fixture
def raw(tmp_path):
    """``raw/images/*.png`` (48 x 40) and an empty ``raw/masks``."""
    (tmp_path / "raw" / "images").mkdir(parents=True)
    (tmp_path / "raw" / "masks").mkdir()
    return tmp_path / "raw"


def _image(raw, name, size=(48, 40)):
    Image.fromarray(np.zeros((size[1], size[0]), np.uint8)).save(raw / "images" / name)


def _mask(raw, name, values, mode="L"):
    Image.fromarray(values.astype(np.uint8), mode=mode).save(raw / "masks" / name)


def _vessel_loop():
    m = np.zeros((40, 48), np.uint8)
    m[5:35, 5:9] = m[5:35, 38:42] = m[5:9, 5:42] = m[31:35, 5:42] = 1  # a loop with a hole
    return m


def test_binary_01_and_label_masks_with_a_pattern(raw, tmp_path):
    loop = _vessel_loop()
    _image(raw, "a.png")
    _image(raw, "b.jpg")
    _mask(raw, "a-gt.png", loop)  # 0/1
    labels = loop.copy()
    labels[15:25, 15:30] = 2  # a catheter inside the loop
    _mask(raw, "b-gt.png", labels)
    opts = ConvertOptions(text_map={"1": "blood vessel", "2": "catheter"})
    result = convert_annotations("masks", raw / "masks", tmp_path / "out", raw / "images", opts,
                                 mask_pattern="{stem}-gt.png")
    recs = load_annotation_list(result.annotations)
    assert [r["text"] for r in recs] == [["blood vessel"], ["blood vessel", "catheter"]]
    assert np.array_equal(rasterize_polygons(recs[0]["mask"][0], 40, 48), loop.astype(bool))
    assert np.array_equal(rasterize_polygons(recs[1]["mask"][1], 40, 48), labels == 2)
    assert result.clean

    # --text names the foreground of binary masks only: in a label mask every value needs --label-text.
    with pytest.raises(ConvertError, match=r"2 unmapped mask value\(s\): '1' \(1 object\(s\) in 1 file\(s\)\), '2'"):
        convert_annotations("masks", raw / "masks", tmp_path / "out2", raw / "images",
                            mask_pattern="{stem}-gt.png", text="blood vessel")


def test_palette_and_rgb_grey_masks(raw, tmp_path):
    loop = _vessel_loop()
    _image(raw, "p.png")
    pal = Image.fromarray(loop * 3, mode="P")  # palette index 3
    pal.putpalette([0, 0, 0] * 3 + [255, 0, 0] + [0, 0, 0] * 252)
    pal.save(raw / "masks" / "p_mask.png")
    _image(raw, "g.png")
    Image.fromarray(np.stack([loop * 255] * 3, -1).astype(np.uint8)).save(raw / "masks" / "g_mask.png")
    result = convert_annotations("masks", raw / "masks", tmp_path / "out", raw / "images",
                                 ConvertOptions(text_map={"3": "blood vessel"}), text="blood vessel")
    assert result.clean and len(load_annotation_list(result.annotations)) == 2


def test_bad_input_is_named_counted_and_never_a_crash(raw, tmp_path, capsys):
    ok = _vessel_loop() * 255
    for name in ("ok", "small", "noisy", "colour", "lonely", "broken"):
        _image(raw, f"{name}.png")
    _mask(raw, "ok_mask.png", ok)
    _mask(raw, "small_mask.png", np.zeros((20, 24)) + 255)  # another size than its image
    _mask(raw, "noisy_mask.png", np.arange(40 * 48).reshape(40, 48) % 200)  # a JPEG-like mask
    colour = np.zeros((40, 48, 3), np.uint8)
    colour[5:10, 5:10] = (255, 0, 0)
    Image.fromarray(colour).save(raw / "masks" / "colour_mask.png")
    (raw / "masks" / "broken_mask.png").write_bytes(b"not a png")
    _mask(raw, "orphan_mask.png", ok)  # no image
    out = tmp_path / "out"
    rc = main(["--from", "masks", "--input", str(raw / "masks"), "--out", str(out), "--text", "blood vessel",
               "--strict"])
    printed = capsys.readouterr()
    assert rc == 2 and "Traceback" not in printed.out + printed.err
    report = json.loads((out / "convert_report.json").read_text())
    assert report["dropped_per_reason"] == {"unreadable_mask": 2, "missing_mask": 1, "bad_mask": 1,
                                            "mask_size_mismatch": 1, "unused_mask": 1}
    assert ("small_mask.png: mask: mask_size_mismatch: the mask is 24x20, its image small.png is 48x40; "
            "fix: resize the mask to 48x40") in printed.out
    assert "lonely.png: image: missing_mask: no mask" in printed.out
    assert "orphan_mask.png: mask: unused_mask:" in printed.out
    assert "colour_mask.png: mask: unreadable_mask:" in printed.out and "differing colour channels" in printed.out
    assert [r["image"] for r in load_annotation_list(out / "annotations.json")] == ["ok.png"]


def test_masks_beside_their_images(raw, tmp_path):
    _image(raw, "a.png")
    Image.fromarray(_vessel_loop() * 255).save(raw / "images" / "a_mask.png")
    result = convert_annotations("masks", raw / "images", tmp_path / "out", raw / "images", text="blood vessel")
    assert result.clean and [r["image"] for r in load_annotation_list(result.annotations)] == ["a.png"]


def test_polygons_below_min_iou_are_dropped_and_reported(raw, tmp_path):
    _image(raw, "a.png")
    yy, xx = np.mgrid[0:40, 0:48]
    _mask(raw, "a_mask.png", (np.abs(yy - 0.8 * xx) < 2) * 255)  # a thin oblique vessel: a staircase outline
    opts = ConvertOptions(simplify=3.0, min_iou=0.999, drop_unmapped=True)
    with pytest.raises(ConvertError, match="nothing to write.*trace_iou: traced polygons rasterise to IoU 0.") as e:
        convert_annotations("masks", raw / "masks", tmp_path / "out", raw / "images", opts, text="blood vessel")
    [obj] = e.value.report.objects
    assert obj["iou"] < 0.999 and obj["image"] == "a.png" and obj["text"] == "blood vessel"
