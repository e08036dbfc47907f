"""Ray Data source: one row per (record, text), decoded in Ray tasks, same content as the plain loop."""

from __future__ import annotations

import numpy as np
import pytest

from sa2va_ray.data.annotations import Sample
from sa2va_ray.data.decode import decode_rows
from sa2va_ray.data.validate import load_valid_samples


def test_build_ray_dataset_matches_plain_loop(ray_cluster, synthetic_set, tmp_path):
    from sa2va_ray.data.ray_source import build_ray_dataset

    images = synthetic_set.parent / "images"
    samples, _ = load_valid_samples(synthetic_set, images, strict=True)
    two_texts = Sample(index=99, image=samples[0].image, texts=["a", "b"], masks=[samples[0].masks[0]] * 2)
    samples = samples[:3] + [two_texts]
    ds = build_ray_dataset(samples, images, size=48)
    rows = sorted(ds.take_all(), key=lambda r: (r["record_index"], r["text_index"]))
    assert [r["sample_id"] for r in rows] == ["0:0", "1:0", "2:0", "99:0", "99:1"]
    plain = [row for s in samples for row in decode_rows(s, images, size=48)]
    for got, want in zip(rows, plain):
        assert got["image"].shape == (48, 48, 3) and got["image"].dtype == np.uint8
        assert got["mask"].shape == (48, 48) and got["mask"].dtype == bool
        assert (got["image"] == want["image"]).all() and (got["mask"] == want["mask"]).all()
        assert got["text"] == want["text"] and got["image_name"] == want["image_name"]

    own_size = build_ray_dataset(samples[:1], images).take_all()
    assert own_size[0]["image"].shape == (96, 96, 3)

    gone = Sample(index=5, image="deleted.jpg", texts=["v"], masks=[[[0, 0, 5, 0, 5, 5]]])
    assert build_ray_dataset([gone, samples[0]], images, size=16).count() == 1  # skipped with a warning
    kept = build_ray_dataset([gone], images, size=16, on_error="keep").take_all()
    assert kept[0]["sample_id"] == "5:0" and "deleted.jpg" in kept[0]["error"]
    with pytest.raises(ValueError, match="no samples"):
        build_ray_dataset([], images)
