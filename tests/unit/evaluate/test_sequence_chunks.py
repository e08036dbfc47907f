"""eval.mode=sequence on long runs (chunks with overlap) and on the issue's bad runs, without Ray."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from sa2va_ray.evaluate.sequence import (
    Sa2VASequencePredictor,
    chunk_bounds,
    chunk_items,
    run_table,
    sequence_items,
)
from sa2va_ray.evaluate.table import hash_mask


def test_chunk_bounds_cover_every_frame_once_with_the_stated_overlap():
    assert chunk_bounds(20, 64, 4) == [(0, 20, 0)]
    assert chunk_bounds(64, 64, 4) == [(0, 64, 0)]
    assert chunk_bounds(200, 0, 4) == [(0, 200, 0)]  # 0: never split
    assert chunk_bounds(65, 64, 4) == [(0, 35, 0), (31, 65, 4)]  # balanced, not 64 + a tail of 1
    assert chunk_bounds(20, 8, 3) == [(0, 8, 0), (5, 13, 3), (10, 18, 3), (15, 20, 3)]
    for n in range(1, 90):
        for chunk, overlap in ((8, 3), (16, 0), (10, 9), (64, 4)):
            bounds = chunk_bounds(n, chunk, overlap)
            owned = [p for s, e, own in bounds for p in range(s + own, e)]
            assert owned == list(range(n)), (n, chunk, overlap)  # every frame exactly once, in order
            assert all(e - s <= chunk for s, e, _ in bounds)
            assert all(a[1] - b[0] == overlap for a, b in zip(bounds, bounds[1:]))  # neighbours share `overlap`
            assert len(bounds) == (1 if n <= chunk else -(-(n - overlap) // (chunk - overlap)))  # the fewest
    with pytest.raises(ValueError, match="overlap"):
        chunk_bounds(20, 4, 4)


@pytest.fixture(scope="module")
def model():
    import torch

    from sa2va_ray.model import build_tiny_sa2va

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 cores: one thread is as fast here and leaves the other core alone
    yield build_tiny_sa2va(seed=0)
    torch.set_num_threads(previous)


def _load(root):
    from sa2va_ray.data.validate import load_valid_samples

    images = root / "images"
    samples, _ = load_valid_samples(root / "annotations.json", images)
    return samples, images


def _predict(model, samples, images, items, **kwargs):
    predictor = Sa2VASequencePredictor(samples, str(images), k=2, model=model, keep_masks=False, **kwargs)
    batch = {key: np.array([item[key] for item in items], dtype=object) for key in items[0]}
    return predictor(batch)


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    from sa2va_ray.data.synthetic import generate_synthetic_set

    root = tmp_path_factory.mktemp("long")
    generate_synthetic_set(root, patients=1, frames=12, size=32, seed=3)
    return _load(root)


def test_a_long_run_in_chunks_has_each_frame_once_and_one_run_row(model, long_run):
    samples, images = long_run
    whole = sequence_items(samples)
    assert len(whole) == 1 and len(whole[0]["samples"]) == 12
    bounds = chunk_bounds(12, 6, 2)
    assert bounds == [(0, 6, 0), (4, 10, 2), (8, 12, 2)]
    items = chunk_items(whole, chunk=6, overlap=2)
    assert [(i["chunk"], i["chunks"], i["own_from"], i["frame"]) for i in items] == [
        (c, 3, own, whole[0]["frame"][s:e]) for c, (s, e, own) in enumerate(bounds)]
    rows = _predict(model, samples, images, items, offload=True)
    assert (rows["status"] == "ok").all() and rows["sample_id"].is_unique
    assert sorted(rows["frame"]) == whole[0]["frame"]  # every frame exactly once
    assert set(rows["run_id"]) == {whole[0]["run_id"]}
    runs = run_table(rows.assign(patient="p"))
    assert len(runs) == 1 and runs["frames"].iloc[0] == 12
    # an overlap frame's row is the earlier chunk's prediction (and offload changed no mask)
    frames = [np.asarray(Image.open(images / samples[p].image).convert("RGB")) for p in whole[0]["samples"]]
    by_frame = rows.set_index("frame")
    for item, (s, e, own) in zip(items, bounds):
        masks = model.predict_sequence(frames[s:e], item["text"], k=2).masks
        for n, mask in zip(item["frame"][own:], masks[own:]):
            assert by_frame.loc[n, "pred_hash"] == hash_mask(mask), n
    assert by_frame["stability"].isna().sum() == 1  # only the run's first frame has no frame before it


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """One run of 4 frames whose frame 3 has another size, a second image with frame number 1 of that run, a run of
    one frame."""
    from sa2va_ray.data.annotations import load_samples
    from sa2va_ray.data.synthetic import generate_synthetic_set

    root = tmp_path_factory.mktemp("bad")
    generate_synthetic_set(root, patients=2, frames=4, size=32, seed=5)
    other = tmp_path_factory.mktemp("other")
    generate_synthetic_set(other, patients=1, frames=1, size=48, seed=6)
    records = json.loads((root / "annotations.json").read_text())
    samples, _ = load_samples(root / "annotations.json")
    run = sorted(r["image"] for r in records)[:4]  # the first patient's run (names sort by patient, then frame)
    big = json.loads((other / "annotations.json").read_text())[0]
    stem = run[0].rsplit("_frame_", 1)[0]
    sized, dup = f"{stem}_frame_{999:06d}.jpg", f"{stem}_twin_frame_{0:06d}.jpg"
    shutil.copy(other / "images" / big["image"], root / "images" / sized)
    records.append({**big, "image": sized})  # same run, another size
    twin = next(r for r in records if r["image"] == run[1])
    number = int(run[1].rsplit("_frame_", 1)[1][:6])
    dup = f"{stem}_frame_{number:06d}.png"  # another image (png) with the number of frame 1
    Image.open(root / "images" / run[1]).save(root / "images" / dup)
    records.append({**twin, "image": dup})
    single = "Solo(0000000001)_1_1_ABC_frame_000007.jpg"
    shutil.copy(root / "images" / run[0], root / "images" / single)
    records.append({**twin, "image": single})
    (root / "annotations.json").write_text(json.dumps(records))
    return root, stem, sized, dup, single, len(samples)


def test_validation_reports_the_bad_runs_precisely(bad_runs):
    from sa2va_ray.data.validate import validate_annotations

    root, stem, sized, dup, _, _ = bad_runs
    report = validate_annotations(root / "annotations.json", root / "images")
    problems = [(p.image, p.problem) for p in report.problems]
    assert problems == [(dup, "duplicate_frame")]
    assert "two images cannot have one frame number" in report.problems[0].message
    warnings = [w for r in report.runs for w in r.warnings]
    assert [w.code for w in warnings] == ["mixed_sizes"]
    assert "32x32: frames" in warnings[0].message and "48x48: frames 999" in warnings[0].message


def test_bad_runs_give_precise_rows_never_a_crash(model, bad_runs):
    from sa2va_ray.data.annotations import load_samples

    root, stem, sized, dup, single, _ = bad_runs
    samples, _ = load_samples(root / "annotations.json")  # unvalidated: the duplicate frame is still there
    items = chunk_items(sequence_items(samples), chunk=3, overlap=1)
    rows = _predict(model, samples, root / "images", items)
    assert (rows["status"] == "ok").all() and rows["sample_id"].is_unique
    assert len(rows) == sum(len(s.texts) for s in samples)
    run_of = dict(zip(rows["image"], rows["run_id"]))
    assert run_of[sized] == f"{stem}@48x48"  # its own video; the common size keeps the run id
    assert run_of[dup] == dup  # the second image of a frame number: a run of one frame, predicted as an image
    assert run_of[single] == single.rsplit("_frame_", 1)[0]
    one = rows[rows["image"] == single].iloc[0]
    assert np.isnan(one["stability"]) and one["height"] == 32
    runs = run_table(rows.assign(patient="p"))
    assert {stem, f"{stem}@48x48", dup} <= set(runs["run_id"])
    assert runs.set_index("run_id").loc[stem, "frames"] == 4


def test_chunk_settings_are_checked_in_the_config():
    from sa2va_ray.config import ConfigError, EvalSection

    assert (EvalSection().sequence_chunk, EvalSection().sequence_overlap, EvalSection().sequence_offload) == (
        64, 4, False)
    EvalSection(sequence_chunk=0, sequence_overlap=8)  # never split: the overlap does not matter
    for chunk, overlap in ((8, 8), (-1, 0), (8, -1)):
        with pytest.raises(ConfigError, match="sequence_overlap"):
            EvalSection(sequence_chunk=chunk, sequence_overlap=overlap)
