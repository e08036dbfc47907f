"""Run discovery from file names: ordering, sparse numbers, custom regex, unmatched names, sizes, duplicates."""

from __future__ import annotations

import ast
import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from sa2va_ray.data.runs import (
    DEFAULT_RUN_REGEX,
    compile_run_regex,
    discover_runs,
    duplicate_frame_problems,
    parse_run,
    summarize_runs,
)
from sa2va_ray.data.split import split_records
from sa2va_ray.data.validate import validate_annotations

RUN = "Bai_Hui(0000932433)_1-3_1_051C3E6A"


def _name(number: int, run: str = RUN, ext: str = "jpg") -> str:
    return f"{run}_frame_{number:06d}.{ext}"


def test_parse_run_default_regex():
    assert parse_run(_name(11)) == (RUN, 11)
    assert parse_run("sub/dir/A(1)_x_frame_7.png") == ("sub/dir/A(1)_x", 7)
    assert parse_run("A_frame_1_frame_000003.jpg") == ("A_frame_1", 3)  # the last _frame_ separates
    assert parse_run("loose.jpg") is None
    assert parse_run("A_frame_12a.jpg") is None


def test_sparse_numbers_are_ordered_and_gaps_reported_not_invented():
    numbers = list(range(11, 25)) + list(range(26, 41, 2))  # 11-24, then even numbers only
    shuffled = numbers[::3] + numbers[1::3] + numbers[2::3]
    records = [{"image": _name(n)} for n in shuffled]
    (run,) = discover_runs(records)
    assert run.run_id == RUN and run.patient == "0000932433"
    assert list(run.frame_numbers) == numbers
    assert list(run.frames) == [_name(n) for n in numbers]
    assert [shuffled[i] for i in run.record_indices] == numbers  # positions in the list given
    assert run.gaps == tuple((n, n + 2) for n in range(24, 39, 2))
    assert run.missing_frames == 8 and len(run) == len(numbers) and run.is_sequence


def test_several_runs_and_records_of_one_image():
    records = [{"image": _name(2)}, {"image": _name(5, "Li(7)_1-1_1_AA")}, {"image": _name(1)}, {"image": _name(2)}]
    runs = discover_runs(records)
    assert [r.run_id for r in runs] == sorted([RUN, "Li(7)_1-1_1_AA"])
    a = next(r for r in runs if r.run_id == RUN)
    assert a.frame_numbers == (1, 2) and a.record_indices == (2, 0) and a.frame_records == ((2,), (0, 3))
    assert a.gaps == () and not a.warnings


def test_custom_regex_and_its_checks():
    names = ["case7-seq2-f3.png", "case7-seq2-f1.png", "case7-seq3-f1.png"]
    runs = discover_runs(names, r"(?P<run>case\d+-seq\d+)-f(?P<frame>\d+)")
    assert [(r.run_id, r.frame_numbers) for r in runs] == [("case7-seq2", (1, 3)), ("case7-seq3", (1,))]
    assert runs[0].gaps == ((1, 3),)
    with pytest.raises(ValueError, match="lacks the named group"):
        discover_runs(names, r"case(\d+)")
    with pytest.raises(ValueError, match="does not compile"):
        compile_run_regex("(?P<run>")
    assert compile_run_regex("").pattern == compile_run_regex(None).pattern == DEFAULT_RUN_REGEX


def test_unmatched_names_are_each_a_run_of_one_frame():
    records = [{"image": "loose_a.jpg"}, {"image": "loose_b.jpg"}, {"image": "loose_a.jpg"}, {"mask": []}, 5,
               {"image": _name(3)}]
    runs = {r.run_id: r for r in discover_runs(records)}
    assert set(runs) == {"loose_a.jpg", "loose_b.jpg", "record:3", "record:4", RUN}
    a = runs["loose_a.jpg"]
    assert not a.matched and not a.is_sequence and a.frames == ("loose_a.jpg",) and a.frame_records == ((0, 2),)
    assert runs[RUN].matched and len(runs[RUN]) == 1  # a matched run of one frame is used as an image too
    assert sorted(i for r in runs.values() for idx in r.frame_records for i in idx) == list(range(6))


def test_mixed_sizes_split_into_one_run_per_size_with_a_warning():
    names = [_name(n) for n in range(1, 7)]
    sizes = {n: (512, 512) for n in names} | {names[2]: (256, 256), names[4]: (256, 256)}
    runs = discover_runs(names, sizes=sizes)
    main, other = runs
    assert main.run_id == RUN and main.frame_numbers == (1, 2, 4, 6) and main.size == (512, 512)
    assert other.run_id == f"{RUN}@256x256" and other.frame_numbers == (3, 5) and other.size == (256, 256)
    (w,) = main.warnings
    assert w.code == "mixed_sizes" and "512x512: frames 1-2, 4, 6" in w.message and "256x256: frames 3, 5" in w.message
    assert other.warnings == [] and main.patient == other.patient == "0000932433"


def test_duplicate_numbers_keep_the_first_image_and_warn():
    names = [_name(1), _name(2), f"{RUN}_frame_2.jpg", _name(3), _name(2, ext="png")]
    runs = {r.run_id: r for r in discover_runs(names)}
    main = runs[RUN]
    assert main.frame_numbers == (1, 2, 3) and main.frames[1] == _name(2)
    dups = [r for r in runs.values() if r.run_id != RUN]
    assert sorted(r.frames[0] for r in dups) == sorted([f"{RUN}_frame_2.jpg", _name(2, ext="png")])
    for r in dups:
        assert len(r) == 1 and r.frame_numbers == (2,) and r.warnings[0].code == "duplicate_frame"
        assert _name(2) in r.warnings[0].message and "record 1" in r.warnings[0].message
    problems = duplicate_frame_problems(names)
    assert sorted(problems) == [2, 4] and problems[2][0] == RUN and "frame 2" in problems[2][1]
    assert duplicate_frame_problems([_name(2), _name(2)]) == {}  # the same image twice is one frame


def test_mixed_patients_warned():
    names = ["A(1)_s_frame_1.jpg", "A(1)_s_frame_2.jpg"]
    (run,) = discover_runs(names, group_regex=r"_frame_(?P<id>\d+)")
    assert run.patient == "1" and [w.code for w in run.warnings] == ["mixed_patients"]


def test_summary():
    names = [_name(n) for n in (1, 2, 3, 5)] + [_name(n, "B(2)_s") for n in (1, 2)] + ["x.jpg"]
    s = summarize_runs(discover_runs(names))
    assert s["runs"] == 3 and s["sequences"] == 2 and s["single_frame_runs"] == 1
    assert s["frames_per_run"] == {"min": 1, "median": 2, "max": 4}
    assert s["runs_with_gaps"] == 1 and s["missing_frames"] == 1 and s["warnings"] == []
    assert summarize_runs([])["runs"] == 0


def _imports(module: str) -> set[str]:
    """Top-level modules imported by a module of the package, following its imports within ``sa2va_ray``."""
    seen, todo, out = set(), [module], set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        path = importlib.util.find_spec(mod).origin
        for node in ast.walk(ast.parse(open(path).read())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                (todo.append(name) if name.startswith("sa2va_ray.") else out.add(name.split(".")[0]))
    return out


def test_no_torch_or_ray_import():
    # The package root registers the model (torch), so the module's own import graph is what is checked.
    imported = _imports("sa2va_ray.data.runs")
    assert "re" in imported and not imported & {"torch", "ray", "transformers", "deepspeed"}


# ---- runs in the validate report: bad input gives precise messages, never a crash ----


def _write_run(images, numbers_sizes: dict[int, int], run: str = RUN) -> list[dict]:
    """One grayscale image per frame number (square, of the given side) and its record."""
    records = []
    for n, side in numbers_sizes.items():
        Image.fromarray(np.full((side, side), 120, np.uint8), mode="L").save(images / _name(n, run, "png"))
        records.append({"image": _name(n, run, "png"), "mask": [[2, 2, 12, 2, 12, 12]], "text": ["vessel"]})
    return records


def test_validate_report_splits_mixed_sizes_and_warns(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    records = _write_run(images, {1: 32, 2: 32, 3: 24, 4: 32})
    report = validate_annotations(records, images)
    assert report.problems == [] and report.valid == 4  # nothing excluded: every frame is a fine image
    assert [(r.run_id, r.frame_numbers, r.size) for r in report.runs] == [
        (RUN, (1, 2, 4), (32, 32)), (f"{RUN}@24x24", (3,), (24, 24))]
    summary = report.to_dict()["runs"]
    assert summary["runs"] == 2 and summary["runs_with_gaps"] == 1
    (w,) = summary["warnings"]
    assert w["warning"] == "mixed_sizes" and "32x32: frames 1-2, 4; 24x24: frames 3" in w["message"]
    text = report.format()
    assert "runs (valid records): 2" in text and "mixed_sizes" in text


def test_validate_report_duplicate_numbers_and_single_frames(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    records = _write_run(images, {7: 32, 8: 32}) + _write_run(images, {5: 32}, run="Li(42)_s")
    Image.fromarray(np.full((32, 32), 90, np.uint8), mode="L").save(images / f"{RUN}_frame_8.png")
    records.append(dict(records[0], image=f"{RUN}_frame_8.png"))  # frame 8 again, another image
    report = validate_annotations(records, images)
    (p,) = report.problems
    assert (p.index, p.problem) == (3, "duplicate_frame") and f"already the image {_name(8, ext='png')}" in p.message
    assert {r.run_id: len(r) for r in report.runs} == {RUN: 2, "Li(42)_s": 1}
    summary = report.to_dict(salt="a-secret-salt-of-16+")["runs"]
    assert summary["frames_per_run"] == {"min": 1, "median": 1.5, "max": 2} and summary["single_frame_runs"] == 1
    with pytest.raises(ValueError, match="lacks the named group"):
        validate_annotations(records, images, run_regex=r"_frame_\d+")


def test_pseudonymised_run_warnings_hide_names(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    report = validate_annotations(_write_run(images, {1: 32, 2: 24}), images)
    dumped = json.dumps(report.to_dict(salt="a-secret-salt-of-16+")) + report.format(salt="a-secret-salt-of-16+")
    assert "mixed_sizes" in dumped and "Bai_Hui" not in dumped and "0000932433" not in dumped


def test_split_keeps_runs_whole(synthetic_set):
    records = json.loads(synthetic_set.read_text()) + [{"image": _name(n), "mask": [], "text": []} for n in (1, 2, 5)]
    runs = discover_runs(records)
    for seed in range(5):
        result = split_records(records, 0.4, seed)
        val = {r["image"] for r in result.val}
        assert result.val and result.train
        for run in runs:  # every run is wholly in one split
            assert len({f in val for f in run.frames}) == 1, run.run_id


def test_split_joins_groups_that_share_a_run(caplog):
    # names without a patient id: each frame would be its own group, and a random frame split would leak
    records = [{"image": f"scan{k}_frame_{n:06d}.jpg"} for k in range(6) for n in range(1, 5)]
    records += [{"image": "loose.jpg"}, {"image": "other.jpg"}]
    for seed in range(4):
        result = split_records(records, 0.3, seed)
        val = {r["image"] for r in result.val}
        for k in range(6):
            assert len({f"scan{k}_frame_{n:06d}.jpg" in val for n in range(1, 5)}) == 1
        assert 0 < len(result.val) < len(records)
        assert not result.train_groups & result.val_groups
        assert len(result.train_groups | result.val_groups) == len(records)  # every file name is still named
    assert "groups sharing a run are kept together (6 joined group(s)" in caplog.text
    plain = [{"image": f"P{p}({p})_s_frame_{n:06d}.jpg"} for p in range(8) for n in range(3)]
    caplog.clear()
    without_runs = split_records(plain, 0.25, 0, run_regex=r"(?P<run>NEVER)_(?P<frame>\d+)")
    assert split_records(plain, 0.25, 0) == without_runs  # runs within patients: the split by patient alone
    assert "kept together" not in caplog.text


def test_split_cli_takes_a_run_regex(tmp_path):
    import subprocess
    import sys

    records = [{"image": f"case{k}-seq1-f{n}.png", "mask": [[0, 0, 4, 0, 4, 4]], "text": ["v"]}
               for k in range(5) for n in range(3)]
    (tmp_path / "a.json").write_text(json.dumps(records))
    cmd = [sys.executable, "-m", "sa2va_ray.data.split", "--annotations", str(tmp_path / "a.json"), "--out",
           str(tmp_path / "out"), "--val-fraction", "0.4", "--run-regex", r"(?P<run>case\d+-seq\d+)-f(?P<frame>\d+)"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    val = {r["image"] for r in json.loads((tmp_path / "out" / "val.json").read_text())}
    runs_in_val = {v.split("-f")[0] for v in val}
    assert 0 < len(runs_in_val) < 5 and val == {f"{r}-f{n}.png" for r in runs_in_val for n in range(3)}  # whole runs
    bad = subprocess.run(cmd[:-1] + ["(?P<run>x)"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "frame" in bad.stderr
