"""Validation: every problem code, lenient/strict behaviour, the CLI and its JSON report."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sa2va_ray.data.annotations import PROBLEM_CODES
from sa2va_ray.data.text_rules import TextRules
from sa2va_ray.data.validate import DataValidationError, load_valid_samples, validate_annotations

SQUARE = [2, 2, 12, 2, 12, 12, 2, 12]


@pytest.fixture
def bad_set(tmp_path, files):
    """Images of every kind (16 x 16 unless said otherwise) and records that exercise every problem code."""
    images = tmp_path / "images"
    images.mkdir()
    files.rgb(images / "good.png")
    files.rgb(images / "other.jpg", fmt="JPEG")
    Image.fromarray(np.full((16, 16), 90, np.uint8), mode="L").save(images / "gray.png")
    Image.fromarray(np.full((16, 16, 4), 200, np.uint8), mode="RGBA").save(images / "rgba.png")
    Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 16).save(images / "deep.png")
    files.truncated_jpeg(images / "trunc.jpg")
    files.bomb_png(images / "bomb.png")
    (images / "text.png").write_text("not an image")
    records = [
        {"image": "good.png", "mask": [SQUARE], "text": ["vessel"]},  # 0 valid
        {"image": "gray.png", "mask": SQUARE, "text": ["vessel"]},  # 1 valid (grayscale)
        {"image": "rgba.png", "mask": [[SQUARE]], "text": ["vessel"]},  # 2 valid (RGBA)
        {"image": "deep.png", "mask": [SQUARE], "text": ["vessel"]},  # 3 valid (16-bit)
        {"image": "missing.png", "mask": [SQUARE], "text": ["vessel"]},  # 4 missing_image
        {"image": "trunc.jpg", "mask": [SQUARE], "text": ["vessel"]},  # 5 unreadable_image (truncated)
        {"image": "text.png", "mask": [SQUARE], "text": ["vessel"]},  # 6 unreadable_image (not an image)
        {"image": "bomb.png", "mask": [SQUARE], "text": ["vessel"]},  # 7 image_too_large
        {"image": "good.png", "mask": [[2, 2, 12, 2, 12]], "text": ["vessel"]},  # 8 bad_polygon
        {"image": "good.png", "mask": [[2, 2, 12, "x", 12, 12]], "text": ["vessel"]},  # 9 bad_coordinates
        {"image": "good.png", "mask": [[0, 0, 30, 0, 30, 10, 0, 10]], "text": ["vessel"]},  # 10 out_of_bounds
        {"image": "other.jpg", "mask": [[-1, -1, 17, -1, 17, 17]], "text": ["vessel"]},  # 11 valid (clipped)
        {"image": "good.png", "mask": [[5.1, 5.1, 5.3, 5.1, 5.3, 5.3]], "text": ["vessel"]},  # 12 empty_mask
        {"image": "good.png", "mask": [SQUARE], "text": [""]},  # 13 empty_text
        {"image": "good.png", "mask": [[SQUARE], [SQUARE]], "text": ["a", "b", "c"]},  # 14 count_mismatch
        {"image": "good.png", "mask": [SQUARE], "text": ["vessel"]},  # 15 duplicate_record (of 0)
        "just a string",  # 16 invalid_record
        {"image": "gone.png", "mask": [SQUARE]},  # 17 missing_image + empty_text
        {"image": "../outside.png", "mask": [SQUARE], "text": ["vessel"]},  # 18 unsafe_path (file exists)
        {"image": "good.png", "mask": [SQUARE], "text": ["the [SEG] vessel"]},  # 19 reserved_token
        {"image": "good.png", "mask": [SQUARE], "text": ["x" * 60]},  # 20 too_long (with RULES)
        {"image": "good.png", "mask": [[1, 1, 6, 6, 11, 11]], "text": ["vessel"]},  # 21 bad_polygon (collinear)
    ]
    files.rgb(tmp_path / "outside.png")
    ann = files.records(tmp_path / "annotations.json", records)
    # 22 duplicate_key: JSON text, since a Python dict cannot hold a repeated key
    text = ann.read_text()[:-1] + ', {"image": "good.png", "mask": [[2, 2, 12, 2, 12, 12]], "image": "other.jpg", ' \
        '"text": ["v"]}'
    # 23 valid, 24 duplicate_frame: another image with frame number 1 of the run "R(0000000001)_s"
    for name in ("R(0000000001)_s_frame_000001.png", "R(0000000001)_s_frame_1.png"):
        files.rgb(images / name)
        text += f', {{"image": "{name}", "mask": [{json.dumps(SQUARE)}], "text": ["vessel"]}}'
    ann.write_text(text + "]")
    return ann, images


RULES = TextRules(max_length=50, count_tokens=lambda texts, height, width: sum(map(len, texts)), source="test")
"""Length rule with a character count as the token count (the real tokenizer is tested in test_text_rules.py)."""


EXPECTED = {
    4: {"missing_image"},
    5: {"unreadable_image"},
    6: {"unreadable_image"},
    7: {"image_too_large"},
    8: {"bad_polygon"},
    9: {"bad_coordinates"},
    10: {"out_of_bounds"},
    12: {"empty_mask"},
    13: {"empty_text"},
    14: {"count_mismatch"},
    15: {"duplicate_record"},
    16: {"invalid_record"},
    17: {"missing_image", "empty_text"},
    18: {"unsafe_path"},
    19: {"reserved_token"},
    20: {"too_long"},
    21: {"bad_polygon"},
    22: {"duplicate_key"},
    24: {"duplicate_frame"},
}


def test_every_problem_code(bad_set):
    ann, images = bad_set
    report = validate_annotations(ann, images, text_rules=RULES)
    got: dict[int, set[str]] = {}
    for p in report.problems:
        got.setdefault(p.index, set()).add(p.problem)
    assert got == EXPECTED
    assert set(report.counts()) == set(PROBLEM_CODES)
    assert [s.index for s in report.samples] == [0, 1, 2, 3, 11, 23]
    assert report.records == 25 and report.valid == 6 and report.invalid == 19
    by_index = {p.index: p for p in report.problems}
    assert by_index[15].message.endswith("record 0")
    assert by_index[5].image == "trunc.jpg" and "truncated" in by_index[5].message
    assert "frame 1 of run R(0000000001)_s is already the image R(0000000001)_s_frame_000001.png (record 23)" in \
        by_index[24].message


def test_report_json_shape_and_text(bad_set):
    report = validate_annotations(*bad_set, text_rules=RULES)
    d = report.to_dict()
    assert set(d) == {"records", "valid", "problems", "runs"}
    assert all(set(p) == {"index", "image", "problem", "message"} for p in d["problems"])
    assert d["runs"]["runs"] == 6 and d["runs"]["single_frame_runs"] == 6  # 5 loose images, 1 run of 1 frame
    text = report.format(max_problems=3)
    assert "records: 25" in text and "image_too_large" in text and "first 3 of" in text


def test_pseudonymised_report_hides_names(tmp_path, files):
    images = tmp_path / "images"
    images.mkdir()
    name = "Li_Min(0000123456)_1-3_1_051C3E6A_frame_000001.png"
    ann = files.records(tmp_path / "a.json", [{"image": name, "mask": [SQUARE], "text": ["v"]}])
    d = validate_annotations(ann, images).to_dict(salt="s3cret")
    dumped = json.dumps(d)
    assert "Li_Min" not in dumped and "0000123456" not in dumped
    assert d["problems"][0]["image"].endswith("_1-3_1_051C3E6A_frame_000001.png")


def test_load_valid_samples_strict_lists_all(bad_set):
    with pytest.raises(DataValidationError) as err:
        load_valid_samples(*bad_set, strict=True, text_rules=RULES)
    message = str(err.value)
    for index in EXPECTED:
        assert f"record {index} " in message
    assert len(err.value.report.problems) == 20


def test_load_valid_samples_lenient_warns(bad_set, caplog):
    with caplog.at_level(logging.WARNING, logger="sa2va_ray.data.validate"):
        samples, report = load_valid_samples(*bad_set, strict=False, text_rules=RULES)
    assert len(samples) == 6 and report.invalid == 19
    assert "19 of 25 records excluded" in caplog.text and "missing_image=2" in caplog.text


def test_synthetic_set_is_clean(synthetic_set):
    report = validate_annotations(synthetic_set, synthetic_set.parent / "images")
    assert report.problems == [] and report.valid == report.records == 6


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "sa2va_ray.data.validate", *map(str, args)], capture_output=True, text=True, timeout=60
    )


def test_cli_exit_codes_and_json(bad_set, synthetic_set, tmp_path):
    ann, images = bad_set
    out = tmp_path / "report.json"
    lenient = _cli("--annotations", ann, "--images", images, "--report", out)
    assert lenient.returncode == 0, lenient.stderr
    assert "duplicate_record" in lenient.stdout and "record" in lenient.stdout
    report = json.loads(out.read_text())
    assert set(report) == {"records", "valid", "problems", "runs"}
    # no --model: no length rule, so record 20 is valid here
    assert report["records"] == 25 and report["valid"] == 7 and len(report["problems"]) == 19
    assert "runs (valid records): 6" in lenient.stdout  # records 0 and 20 are one image
    strict = _cli("--annotations", ann, "--images", images, "--strict")
    assert strict.returncode == 1
    clean = _cli("--annotations", synthetic_set, "--images", synthetic_set.parent / "images", "--strict")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    missing = _cli("--annotations", tmp_path / "nope.json", "--images", images)
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_cli_takes_the_salt_from_a_file_never_the_command_line(tmp_path, files):
    images = tmp_path / "images"
    images.mkdir()
    name = "Li_Min(0000123456)_1-3_1_051C3E6A_frame_000001.png"
    ann = files.records(tmp_path / "a.json", [{"image": name, "mask": [SQUARE], "text": ["v"]},
                                              {"image": name, "mask": [SQUARE], "text": ["w"]}])
    salt = tmp_path / "salt.txt"
    salt.write_text("a-secret-salt-of-some-length\n")
    out = tmp_path / "r.json"
    ok = _cli("--annotations", ann, "--images", images, "--pseudonymise", "--salt-file", salt, "--report", out)
    shown = ok.stdout + ok.stderr + out.read_text()
    assert "Li_Min" not in shown and "0000123456" not in shown and "a-secret-salt" not in shown
    assert "frame_000001" in out.read_text()
    no_salt = _cli("--annotations", ann, "--images", images, "--pseudonymise")
    assert no_salt.returncode == 2 and "salt" in no_salt.stderr and len(no_salt.stderr.strip().splitlines()) == 1
