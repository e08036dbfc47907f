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


class RowSummary:
    """Stands in for a predictor: one output row per input row, and the size of every batch it was given."""

    def __init__(self, tag: str = ""):
        self.tag, self.calls = tag, []

    def __call__(self, batch):
        import pandas as pd

        self.calls.append(len(batch["sample_id"]))
        return pd.DataFrame({"sample_id": batch["sample_id"], "error": batch["error"], "tag": self.tag,
                             "image_sum": [int(np.asarray(im).sum()) for im in batch["image"]],
                             "mask_sum": [int(np.asarray(m).sum()) for m in batch["mask"]]})


def _summary(rows):
    return {r["sample_id"]: (int(np.asarray(r["image"]).sum()), int(np.asarray(r["mask"]).sum())) for r in rows}


def test_decode_then_gives_the_consumer_the_rows_of_the_plain_loop(synthetic_set):
    from sa2va_ray.data.ray_source import DecodeThen, _to_item, rows_to_batch

    images = synthetic_set.parent / "images"
    samples, _ = load_valid_samples(synthetic_set, images, strict=True)
    three_texts = Sample(index=99, image=samples[0].image, texts=["a", "b", "c"], masks=[samples[0].masks[0]] * 3)
    gone = Sample(index=5, image="deleted.jpg", texts=["v"], masks=[[[0, 0, 5, 0, 5, 5]]])
    records = samples[:2] + [three_texts, gone]
    items = {k: np.asarray([_to_item(s)[k] for s in records])
             for k in ("record_index", "image", "texts", "masks")}
    consumer = DecodeThen(RowSummary, {"tag": "x"}, images_dir=images, rows_per_call=2)
    out = consumer(items)
    assert consumer.fn.calls == [2, 2, 2]  # 6 rows (1 + 1 + 3 + 1), at most rows_per_call per call
    assert out["sample_id"].tolist() == ["0:0", "1:0", "99:0", "99:1", "99:2", "5:0"] and (out["tag"] == "x").all()
    plain = _summary(row for s in records[:3] for row in decode_rows(s, images))
    got = {r.sample_id: (r.image_sum, r.mask_sum) for r in out.itertuples() if r.sample_id != "5:0"}
    assert got == plain
    assert "deleted.jpg" in out["error"].iloc[-1] and (out["error"].iloc[:-1] == "").all()  # a decode_error row

    same_size = rows_to_batch([r for s in samples[:2] for r in decode_rows(s, images, size=32)])
    assert same_size["image"].shape == (2, 32, 32, 3) and same_size["mask"].shape == (2, 32, 32)


def test_record_dataset_decoded_in_actors_matches_decode_tasks(ray_cluster, synthetic_set):
    import sys

    import ray

    from sa2va_ray.data.ray_source import DecodeThen, build_ray_dataset, build_record_dataset

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # RowSummary travels to the actor by value
    images = synthetic_set.parent / "images"
    samples, _ = load_valid_samples(synthetic_set, images, strict=True)
    gone = Sample(index=5, image="deleted.jpg", texts=["v"], masks=[[[0, 0, 5, 0, 5, 5]]])
    in_actors = build_record_dataset(samples + [gone], num_blocks=3).map_batches(
        DecodeThen, fn_constructor_kwargs={"fn": RowSummary, "images_dir": str(images), "rows_per_call": 2},
        batch_size=2, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5,
    ).take_all()
    in_tasks = build_ray_dataset(samples + [gone], images, on_error="keep").take_all()
    assert sorted(r["sample_id"] for r in in_actors) == sorted(r["sample_id"] for r in in_tasks)
    want = _summary(in_tasks)
    assert {r["sample_id"]: (r["image_sum"], r["mask_sum"]) for r in in_actors} == want
    assert {r["sample_id"]: r["error"] for r in in_actors} == {r["sample_id"]: r["error"] for r in in_tasks}
    with pytest.raises(ValueError, match="no samples"):
        build_record_dataset([])
