"""Decoding of samples (the function the Ray source and plain loops share)."""

from __future__ import annotations

import numpy as np

from sa2va_ray.data.annotations import Sample, rasterize_polygons
from sa2va_ray.data.decode import decode_rows, decode_sample


def test_decode_sample_own_size_and_resized(tmp_path, files):
    files.rgb(tmp_path / "a.png", (40, 20))  # width 40, height 20
    square, band = [4, 4, 14, 4, 14, 14, 4, 14], [0, 0, 40, 0, 40, 2, 0, 2]
    sample = Sample(index=7, image="a.png", texts=["sq", "band"], masks=[[square], [band]])
    d = decode_sample(sample, tmp_path)
    assert d["image"].shape == (20, 40, 3) and d["image"].dtype == np.uint8
    assert d["masks"].shape == (2, 20, 40) and d["masks"].dtype == bool
    assert (d["masks"][0] == rasterize_polygons([square], 20, 40)).all()
    assert d["sample_ids"] == ["7:0", "7:1"] and (d["orig_height"], d["orig_width"]) == (20, 40)
    r = decode_sample(sample, tmp_path, size=(40, 80))  # (height, width): 2x
    assert r["image"].shape == (40, 80, 3) and r["masks"].shape == (2, 40, 80)
    assert r["masks"][0].sum() == 4 * d["masks"][0].sum()  # rasterised at the new size, not resampled
    assert r["masks"][1].sum() == 4 * 80


def test_decode_rows_one_per_text(tmp_path, files):
    files.rgb(tmp_path / "a.png")
    sample = Sample(index=2, image="a.png", texts=["x", "y"], masks=[[[0, 0, 8, 0, 8, 8]], [[8, 8, 16, 8, 16, 16]]])
    rows = decode_rows(sample, tmp_path, size=32)
    assert [r["sample_id"] for r in rows] == ["2:0", "2:1"] and [r["text"] for r in rows] == ["x", "y"]
    assert all(r["image"].shape == (32, 32, 3) and r["mask"].shape == (32, 32) and r["error"] == "" for r in rows)
    assert not (rows[0]["mask"] & rows[1]["mask"]).any()
