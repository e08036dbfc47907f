"""Bad input is caught up front: unusable files are one readable line (exit 2), zero-area polygons and repeated
JSON keys are problems, and the duplicate check stays linear."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from sa2va_ray.data import validate as validate_module
from sa2va_ray.data.annotations import (
    AnnotationFileError,
    is_degenerate_polygon,
    load_annotation_list,
    parse_record,
    rasterize_polygons,
)
from sa2va_ray.data.validate import NoValidRecordsError, load_valid_samples, validate_annotations

SQUARE = [2, 2, 12, 2, 12, 12, 2, 12]

BAD_FILES = {
    "missing": None,
    "directory": "DIR",
    "garbage": "this is not json {",
    "truncated": '[{"image": "a.png", "mask": [[1, 2, 3',
    "not utf-8": b"\xff\xfe[\x00]\x00",
    "object": '{"image": "a.png"}',
    "number": "42",
    "empty list": "[]",
    "too deep": "[" * 100_000 + "]" * 100_000,
}


def _write_bad(tmp_path, kind):
    path = tmp_path / "annotations.json"
    content = BAD_FILES[kind]
    if content == "DIR":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    return path


@pytest.mark.parametrize("kind", BAD_FILES)
def test_unusable_files_are_one_line_naming_the_file(tmp_path, kind):
    path = _write_bad(tmp_path, kind)
    with pytest.raises(AnnotationFileError) as err:
        load_annotation_list(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message


def _cli(module, *args):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("kind", ["missing", "garbage", "empty list"])  # each CLI run imports torch: a few only
def test_validate_and_split_clis_exit_2_with_one_line(tmp_path, kind):
    path = _write_bad(tmp_path, kind)
    for module, extra in (("sa2va_ray.data.validate", ("--images", tmp_path, "--strict")),
                          ("sa2va_ray.data.split", ("--out", tmp_path / "split"))):
        run = _cli(module, "--annotations", path, *extra)
        assert run.returncode == 2, (module, run.stdout, run.stderr)
        errors = [line for line in run.stderr.splitlines() if line.startswith("error")]
        assert len(errors) == 1 and str(path) in errors[0] and "Traceback" not in run.stderr, run.stderr


def test_every_record_bad_is_a_clear_error(tmp_path, files):
    (tmp_path / "images").mkdir()
    ann = files.records(tmp_path / "a.json", [{"image": "gone.png", "mask": [SQUARE], "text": ["v"]}, "x"])
    with pytest.raises(NoValidRecordsError, match="none of its 2 record") as err:
        load_valid_samples(ann, tmp_path / "images")
    assert isinstance(err.value, AnnotationFileError) and str(ann) in str(err.value)
    run = _cli("sa2va_ray.data.validate", "--annotations", ann, "--images", tmp_path / "images")
    assert run.returncode == 2 and "none of the 2 record" in run.stderr and "Traceback" not in run.stderr
    assert "missing_image" in run.stdout  # the report is still printed


def _random_collinear(rng: random.Random) -> list[float]:
    x0, y0 = rng.uniform(-50, 150), rng.uniform(-50, 150)
    dx, dy = rng.choice([(1, 0), (0, 1), (1, 1), (rng.uniform(-3, 3), rng.uniform(-3, 3))])
    ts = [rng.choice([rng.uniform(-40, 40), round(rng.uniform(-40, 40))]) for _ in range(rng.randint(3, 9))]
    return [v for t in ts for v in (x0 + t * dx, y0 + t * dy)]


def test_every_collinear_polygon_is_bad_and_real_ones_are_not():
    rng = random.Random(0)
    for _ in range(300):
        poly = _random_collinear(rng)
        assert is_degenerate_polygon(poly), poly
        sample, problems = parse_record(0, {"image": "a.png", "mask": [poly], "text": ["v"]})
        assert sample is None and [p.problem for p in problems] == ["bad_polygon"]
        assert "zero area" in problems[0].message
    assert is_degenerate_polygon([5, 5, 5, 5, 5, 5])  # one point repeated
    for _ in range(300):
        tri = [rng.uniform(0, 64) for _ in range(6)]
        (ax, ay), (bx, by), (cx, cy) = np.reshape(tri, (3, 2))
        area = abs((bx - ax) * (cy - ay) - (by - ay) * (cx - ax)) / 2
        if area < 1:
            continue
        assert not is_degenerate_polygon(tri), tri
        assert parse_record(0, {"image": "a.png", "mask": [tri], "text": ["v"]})[1] == []
    bow_tie = [0, 0, 10, 10, 10, 0, 0, 10]  # signed area 0, but it covers pixels
    assert not is_degenerate_polygon(bow_tie) and rasterize_polygons([bow_tie], 12, 12).any()


@pytest.mark.parametrize("key", ["image", "mask", "text", "note"])
def test_a_repeated_key_is_a_problem_whatever_the_key(tmp_path, key):
    values = {"image": '"a.png"', "mask": json.dumps([SQUARE]), "text": '["v"]', "note": '"x"'}
    body = ", ".join(f'"{k}": {v}' for k, v in values.items())
    path = tmp_path / "a.json"
    path.write_text(f'[{{{body}}}, {{{body}, "{key}": {values[key]}}}]')  # the same value again still counts
    records = load_annotation_list(path)
    assert parse_record(0, records[0])[1] == []
    sample, problems = parse_record(1, records[1])
    assert sample is None and [p.problem for p in problems] == ["duplicate_key"] and repr(key) in problems[0].message


def test_no_repeated_key_means_plain_records(synthetic_set):
    records = load_annotation_list(synthetic_set)
    assert all(type(r) is dict for r in records)


def test_duplicate_check_hashes_each_record_once(tmp_path, files, monkeypatch):
    """Records sharing an image, texts and mask shape used to be compared pairwise (quadratic); count the keys."""
    images = tmp_path / "images"
    images.mkdir()
    files.rgb(images / "a.png", size=(64, 64))
    records = [{"image": "a.png", "mask": [[i % 50, 1, 60, 1, 60, 60]], "text": ["v"]} for i in range(2000)]
    calls = []
    real = validate_module.record_key
    monkeypatch.setattr(validate_module, "record_key", lambda r: calls.append(1) or real(r))
    report = validate_annotations(records, images)
    assert len(calls) == len(records)
    assert report.counts() == {"duplicate_record": 2000 - 50}
    first = {p.index: p.message for p in report.problems}
    assert first[1999] == "same image, texts and masks as record 49"
