"""What jobs validate with (``prepare_splits``): the job's model rules and config, before any worker starts."""

from __future__ import annotations

import json

import pytest

from sa2va_ray.config import Config
from sa2va_ray.data.annotations import AnnotationFileError
from sa2va_ray.data.prepare import prepare_splits


def _config(tmp_path, annotations, images) -> Config:
    cfg = Config()
    cfg.output_dir = str(tmp_path / "out")
    cfg.data.annotations, cfg.data.images_dir = str(annotations), str(images)
    return cfg


def test_records_a_worker_would_refuse_are_excluded_and_counted(tmp_path, synthetic_set):
    records = json.loads(synthetic_set.read_text())
    good = records[0]
    bad = [
        {**good, "text": ["the <IMG_CONTEXT> vessel"]},  # the processor raises on it
        {**good, "text": ["blood vessel " * 700]},  # > max_length 1024 of the tiny model (the job's model)
        {**good, "image": "../" + good["image"]},  # reads outside images_dir
        {**good, "image": "/etc/hostname"},
    ]
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps(records + bad))
    splits = prepare_splits(_config(tmp_path, ann, synthetic_set.parent / "images"))
    report = splits.reports["all"]
    assert report.counts() == {"unsafe_path": 2, "reserved_token": 1, "too_long": 1}
    kept = {s.index for s in splits.train + splits.val}
    assert kept == set(range(len(records)))  # every good record, none of the bad ones
    written = json.loads((tmp_path / "out" / "split" / "train.json").read_text())
    assert all(r in records for r in written)


def test_symlinks_out_follow_the_config(tmp_path, synthetic_set):
    images = tmp_path / "images"
    images.mkdir()
    records = json.loads(synthetic_set.read_text())
    for r in records:  # every image a link into the synthetic set's own directory, outside `images`
        (images / r["image"]).symlink_to(synthetic_set.parent / "images" / r["image"])
    cfg = _config(tmp_path, synthetic_set, images)
    with pytest.raises(AnnotationFileError, match="none of its 6 record"):
        prepare_splits(cfg)
    cfg.data.allow_symlinks_outside = True
    splits = prepare_splits(cfg)
    assert len(splits.train) + len(splits.val) == 6


@pytest.mark.parametrize("content", ["", "[]", "{}", '[{"image": 1}]', "[1, 2]"])
def test_unusable_annotations_fail_before_work_with_one_line(tmp_path, content):
    ann = tmp_path / "annotations.json"
    if content:
        ann.write_text(content)
    (tmp_path / "images").mkdir()
    with pytest.raises(AnnotationFileError) as err:
        prepare_splits(_config(tmp_path, ann, tmp_path / "images"))
    assert str(ann) in str(err.value) and "\n" not in str(err.value)


def test_data_run_regex_reaches_validation_and_split(tmp_path, synthetic_set):
    import shutil

    images = tmp_path / "images"
    images.mkdir()
    source = json.loads(synthetic_set.read_text())
    records = []
    for k in range(4):  # names without a patient id: only the run regex ties the frames of a run together
        for n in range(3):
            name = f"case{k}-seq1-f{n}.jpg"
            shutil.copy(synthetic_set.parent / "images" / source[n]["image"], images / name)
            records.append({**source[n], "image": name})
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps(records))
    cfg = _config(tmp_path, ann, images)
    cfg.data.run_regex = r"(?P<run>case\d+-seq\d+)-f(?P<frame>\d+)"
    splits = prepare_splits(cfg)
    assert [(r.run_id, r.frame_numbers) for r in splits.reports["all"].runs] == [
        (f"case{k}-seq1", (0, 1, 2)) for k in range(4)]
    val_runs = {s.image.split("-f")[0] for s in splits.val}
    assert val_runs and not val_runs & {s.image.split("-f")[0] for s in splits.train}  # runs stay whole
