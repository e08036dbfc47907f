"""eval.mode=sequence without Ray: items per (run, text), the run predictor's rows, and the per-run table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sa2va_ray.data.annotations import Sample
from sa2va_ray.evaluate.metrics import run_metrics
from sa2va_ray.evaluate.sequence import Sa2VASequencePredictor, format_run_markdown, run_table, sequence_items
from sa2va_ray.evaluate.table import PACKED_COLUMN, unpack_mask


def test_items_cover_every_sample_text_once_in_frame_order():
    samples = [Sample(index=i, image=f"P(1)_1_1_X_frame_{n:06d}.jpg", texts=t, masks=[[]] * len(t))
               for i, (n, t) in enumerate([(3, ["a"]), (1, ["a", "b"]), (2, ["a"]), (7, ["b"])])]
    items = sequence_items(samples)
    assert [(i["text"], i["samples"], i["frame"]) for i in items] == [("a", [1, 2, 0], [1, 2, 3]),
                                                                     ("b", [1, 3], [1, 7])]
    covered = sorted((p, t) for i in items for p, t in zip(i["samples"], i["text_index"]))
    assert covered == sorted((p, t) for p, s in enumerate(samples) for t in range(len(s.texts)))


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    from sa2va_ray.data.decode import decode_sample
    from sa2va_ray.data.synthetic import generate_synthetic_set
    from sa2va_ray.data.validate import load_valid_samples
    from sa2va_ray.model import build_tiny_sa2va

    root = tmp_path_factory.mktemp("seq")
    annotations = generate_synthetic_set(root, patients=2, frames=5, size=64, seed=1)
    images = annotations.parent / "images"
    samples, _ = load_valid_samples(annotations, images)
    items = sequence_items(samples)
    predictor = Sa2VASequencePredictor(samples, str(images), k=2, model=build_tiny_sa2va(seed=0), keep_masks=True)
    batch = {key: np.array([item[key] for item in items], dtype=object) for key in items[0]}
    rows = predictor(batch)
    truth = {(s.image, t): decode_sample(Sample(s.index, s.image, [s.texts[t]], [s.masks[t]]), images)["masks"][0]
             for s in samples for t in range(len(s.texts))}
    return samples, items, rows, truth, images


def test_one_row_per_frame_with_its_run_and_frame_number(scored):
    samples, items, rows, _, _ = scored
    assert len(rows) == sum(len(s.texts) for s in samples) and (rows["status"] == "ok").all()
    assert rows["sample_id"].is_unique and set(rows["run_id"]) == {i["run_id"] for i in items}
    first = rows[rows["run_id"] == items[0]["run_id"]]
    assert first["frame"].tolist() == items[0]["frame"]
    assert first["stability"].isna().tolist() == [True] + [False] * (len(first) - 1)


def test_the_run_table_is_run_metrics_of_the_predicted_masks(scored):
    _, items, rows, truth, _ = scored
    rows = rows.assign(patient="p")
    runs = run_table(rows)
    assert list(runs["run_id"]) == sorted(i["run_id"] for i in items)
    for item in items:
        g = rows[rows["run_id"] == item["run_id"]].sort_values("frame")
        preds = [unpack_mask(r[PACKED_COLUMN], r["height"], r["width"]) for _, r in g.iterrows()]
        expected = run_metrics(preds, [truth[(r["image"], r["text_index"])] for _, r in g.iterrows()])
        got = runs[runs["run_id"] == item["run_id"]].iloc[0]
        for key in ("j", "f", "jf", "temporal_stability", "worst_j"):
            assert got[key] == pytest.approx(expected[key]), key
        assert got["worst_frame"] == item["frame"][expected["worst_frame"]]
    md = format_run_markdown(runs)
    assert "## Runs (eval.mode=sequence)" in md and items[0]["run_id"] in md


def test_a_frame_that_no_longer_decodes_is_an_error_row_and_the_run_goes_on(scored, tmp_path):
    from sa2va_ray.model import build_tiny_sa2va

    samples, items, _, _, images = scored
    item = items[0]
    broken = list(samples)
    p = item["samples"][1]
    broken[p] = Sample(samples[p].index, "gone_frame_000001.jpg", samples[p].texts, samples[p].masks)
    predictor = Sa2VASequencePredictor(broken, str(images), k=2, model=build_tiny_sa2va(seed=0))
    rows = predictor({k: np.array([item[k]], dtype=object) for k in item})
    assert rows["error_code"].tolist() == ["", "decode_error"] + [""] * (len(item["samples"]) - 2)
    runs = run_table(rows.assign(patient="p"))
    assert runs["frames"].tolist() == [len(item["samples"]) - 1]
    nothing = Sa2VASequencePredictor(broken, str(tmp_path), k=2, model=build_tiny_sa2va(seed=0))
    rows = nothing({k: np.array([item[k]], dtype=object) for k in item})  # no image at all: rows, no crash
    assert (rows["error_code"] == "decode_error").all() and run_table(rows.assign(patient="p")).empty
    assert isinstance(run_table(pd.DataFrame()), pd.DataFrame)


def test_every_record_of_a_frame_counts_not_only_the_first():
    name = "P(1)_1_1_X_frame_{:06d}.jpg"
    samples = [Sample(index=0, image=name.format(1), texts=["a"], masks=[[]]),
               Sample(index=1, image=name.format(1), texts=["b", "a"], masks=[[], []]),  # second record, frame 1
               Sample(index=2, image=name.format(2), texts=["b"], masks=[[]])]
    items = sequence_items(samples)
    assert [(i["text"], i["samples"], i["text_index"]) for i in items] == [
        ("a", [0], [0]), ("b", [1, 2], [0, 0]), ("a", [1], [1])]  # the repeated "a" of frame 1 on its own
    covered = sorted((p, t) for i in items for p, t in zip(i["samples"], i["text_index"]))
    assert covered == [(0, 0), (1, 0), (1, 1), (2, 0)]
