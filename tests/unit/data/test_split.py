"""Patient-level split: group parsing, no leakage, determinism, unmatched names, the CLI."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from sa2va_ray.data.patients import group_id, parse_group
from sa2va_ray.data.split import split_records


def _records(patients: int = 10, frames: int = 4) -> list[dict]:
    return [
        {"image": f"Pat_{p}({p:010d})_1-3_1_051C3E6A_frame_{f:06d}.jpg", "mask": [[0, 0, 1, 0, 1, 1]], "text": ["v"]}
        for p in range(patients)
        for f in range(frames)
    ]


def test_group_id_default_regex():
    assert group_id("An_Cong_Xue(0000932433)_1-3_1_051C3E6A_frame_000011.jpg") == "0000932433"
    assert group_id("An Cong Xue(0000932433)_1-3_1_051C3E6A_frame_000012.jpg") == "0000932433"
    assert group_id("sub/dir/Li(42)_frame_1.png") == "42"
    assert parse_group("frame_0001.jpg") is None
    assert group_id("frame_0001.jpg") == "frame_0001.jpg"
    assert group_id("case-7-frame-3.png", r"case-(\d+)-") == "7"


def test_no_patient_in_both_splits_and_fraction():
    records = _records(10, 4)
    result = split_records(records, val_fraction=0.3, seed=0)
    train_ids = {group_id(r["image"]) for r in result.train}
    val_ids = {group_id(r["image"]) for r in result.val}
    assert not train_ids & val_ids
    assert len(result.train) + len(result.val) == len(records)
    assert len(result.val) == 12 and len(val_ids) == 3
    assert result.val_groups == val_ids and result.train_groups == train_ids
    # records are copied unchanged, in their original order
    assert result.train == [r for r in records if r in result.train]


def test_split_is_deterministic_and_depends_on_seed():
    records = _records(12, 3)
    a = split_records(records, 0.25, seed=1)
    b = split_records(records, 0.25, seed=1)
    assert a.val == b.val
    others = [split_records(records, 0.25, seed=s).val_groups for s in range(2, 8)]
    assert any(g != a.val_groups for g in others)


def test_unmatched_names_are_own_groups_with_warning(caplog):
    records = _records(4, 2) + [
        {"image": "loose_a.jpg", "mask": [], "text": []},
        {"image": "loose_a.jpg", "mask": [[1]], "text": ["x"]},  # same file: same group
        {"image": "loose_b.jpg", "mask": [], "text": []},
        "not a record",
    ]
    with caplog.at_level(logging.WARNING, logger="sa2va_ray.data.split"):
        result = split_records(records, 0.4, seed=3)
    assert "do not match the group regex" in caplog.text
    assert len(result.unmatched) == 3  # loose_a, loose_b, the non-record
    groups = result.train_groups | result.val_groups
    assert {"loose_a.jpg", "loose_b.jpg"} <= groups and len(groups) == 4 + 3
    a_in_val = [r for r in result.val if isinstance(r, dict) and r["image"] == "loose_a.jpg"]
    assert len(a_in_val) in (0, 2)


def test_small_fraction_still_gets_one_group_and_train_never_empty():
    records = _records(3, 2)
    assert len(split_records(records, 0.01, seed=0).val_groups) == 1
    assert len(split_records(records, 0.99, seed=0).train_groups) >= 1
    with pytest.raises(ValueError):
        split_records(records, 1.0, seed=0)


def test_cli_writes_train_and_val(tmp_path):
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps(_records(10, 3)))
    out = tmp_path / "split"
    cmd = [sys.executable, "-m", "sa2va_ray.data.split", "--annotations", str(ann), "--out", str(out)]
    cmd += "--val-fraction 0.2 --seed 5".split()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    train = json.loads((out / "train.json").read_text())
    val = json.loads((out / "val.json").read_text())
    assert len(train) == 24 and len(val) == 6
    assert not {group_id(r["image"]) for r in train} & {group_id(r["image"]) for r in val}
    assert "train" in proc.stdout and "patients" in proc.stdout and " 8" in proc.stdout
    again = subprocess.run(cmd[:-1] + ["5"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and json.loads((out / "val.json").read_text()) == val
    bad = subprocess.run(cmd[:-1] + ["5", "--group-regex", "("], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
