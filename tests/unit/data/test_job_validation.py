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
