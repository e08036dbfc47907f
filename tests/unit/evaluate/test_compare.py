"""Tests of paired comparisons: flags, statistics, verdicts, files, and the compare job on two eval dirs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sa2va_ray.evaluate.compare import compare_tables, find_eval_dir, format_comparison, write_comparison
from sa2va_ray.evaluate.table import empty_row, mark_error

ROOT = Path(__file__).resolve().parents[3]


def _table(dice, hashes=None, failed=()):
    rows = []
    for i, d in enumerate(dice):
        r = empty_row(f"{i}:0", i, 0, f"P({i:03d})_f.jpg", "blood vessel")
        r.update(dice=d, iou=d / (2 - d), precision=d, recall=1.0, accuracy=0.95, hd95=10 * (1 - d),
                 intersection=100 * d, union=100.0, pred_hash=(hashes or [f"h{i}"] * len(dice))[i])
        rows.append(mark_error(r, "predict_error", "boom") if i in failed else r)
    return pd.DataFrame(rows)


DICE = np.random.default_rng(0).uniform(0.2, 0.8, 30)


def test_same_model_is_identical():
    a = _table(DICE)
    c = compare_tables(a, a.copy(), {"model_fingerprint": "f" * 64}, {"model_fingerprint": "f" * 64}, n_boot=200)
    assert c.flags["same_fingerprint"] and c.flags["identical_predictions"] and c.flags["n_paired"] == 30
    assert "identical" in c.verdict and "differ" not in c.verdict
    s = c.metrics["dice"]
    assert s["mean_diff"] == 0 and s["n_tied"] == 30 and s["p_value"] == 1.0 and s["all_identical"]


def test_improved_model_differs_with_counts_and_most_changed():
    a = _table(DICE)
    better = DICE.copy()
    better[:20] += 0.1  # 20 better, 10 unchanged
    hashes = [f"h{i}" if i >= 20 else f"new{i}" for i in range(30)]
    better[5] += 0.05  # the most changed one
    b = _table(better, hashes)
    c = compare_tables(a, b, {"model_fingerprint": "a" * 64}, {"model_fingerprint": "b" * 64}, n_boot=300)
    assert "differ" in c.verdict and "identical" not in c.verdict
    assert not c.flags["identical_predictions"] and c.flags["n_prediction_changed"] == 20
    s = c.metrics["dice"]
    assert (s["n_better"], s["n_worse"], s["n_tied"]) == (20, 0, 10)
    assert s["mean_diff"] == pytest.approx((20 * 0.1 + 0.05) / 30) and 0 < s["ci_low"] < s["ci_high"]
    assert s["p_value"] < 1e-3
    hd = c.metrics["hd95"]  # lower is better: the same samples count as better
    assert hd["n_better"] == 20 and hd["mean_diff"] < 0
    assert c.changed.iloc[0]["sample_id"] == "5:0" and len(c.changed) == 10


def test_flags_for_fingerprint_and_prediction_mismatches():
    a = _table(DICE)
    # different fingerprints, same predictions everywhere: 'identical predictions'
    c = compare_tables(a, a.copy(), {"model_fingerprint": "a" * 64}, {"model_fingerprint": "b" * 64}, n_boot=50)
    assert not c.flags["same_fingerprint"] and c.flags["identical_predictions"]
    assert "identical" in c.verdict and "differ" not in c.verdict
    # same fingerprint but one prediction changed (same metrics): the hash column catches it
    hashes = [f"h{i}" for i in range(30)]
    hashes[7] = "other"
    c = compare_tables(a, _table(DICE, hashes), {"model_fingerprint": "f"}, {"model_fingerprint": "f"}, n_boot=50)
    assert c.flags["same_fingerprint"] and not c.flags["identical_predictions"]
    assert c.flags["n_prediction_changed"] == 1 and "differ" in c.verdict
    # a failure on one side: paired over the rest, never identical
    c = compare_tables(a, _table(DICE, failed={3}), n_boot=50)
    assert c.flags["n_paired"] == 29 and c.flags["n_failed_either"] == 1 and not c.flags["identical_predictions"]
    # different sample sets
    c = compare_tables(a, _table(DICE[:25]), n_boot=50)
    assert not c.flags["same_samples"] and c.flags["n_only_a"] == 5 and "differ" in c.verdict
    renamed = a.assign(image=a["image"].where(a.index != 4, "patient-x_f.jpg"))  # same ids, another image
    c = compare_tables(a, renamed, n_boot=50)
    assert c.flags["n_renamed"] == 1 and not c.flags["same_samples"] and "differ" in c.verdict
    assert "identical" not in c.verdict


def test_write_comparison_files(tmp_path):
    a = _table(DICE)
    b = _table(DICE + 0.01, [f"x{i}" for i in range(30)], failed={0})
    c = compare_tables(a, b, n_boot=50)
    md, csv = write_comparison(c, tmp_path)
    paired = pd.read_csv(csv)
    assert len(paired) == 30 and {"dice_a", "dice_b", "dice_diff", "same_prediction", "status_b"} <= set(paired)
    text = md.read_text()
    assert text == format_comparison(c) and c.verdict in text and "| dice |" in text
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["flags"]["n_paired"] == 29 and doc["verdict"] == c.verdict


def _write_eval(d: Path, table: pd.DataFrame, fingerprint: str) -> Path:
    d.mkdir(parents=True)
    table.to_parquet(d / "samples.parquet", index=False)
    (d / "summary.json").write_text(json.dumps({"model_fingerprint": fingerprint}))
    return d


def test_find_eval_dir(tmp_path):
    run = tmp_path / "run"
    _write_eval(run / "eval", _table(DICE[:3]), "f")
    assert find_eval_dir(run) == run / "eval" and find_eval_dir(run / "eval") == run / "eval"
    assert find_eval_dir(tmp_path / "model") is None


def test_compare_job_on_two_eval_dirs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("compare_job", ROOT / "jobs" / "compare.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    a = _write_eval(tmp_path / "a" / "eval", _table(DICE), "f" * 64)
    cfg = ROOT / "configs" / "demo.yaml"
    out = tmp_path / "out"
    rc = job.main(["--config", str(cfg), f"output_dir={out}", f"compare.a={a.parent}", f"compare.b={a}",
                   "eval.n_boot=50"])
    printed = capsys.readouterr().out
    assert rc == 0 and "verdict: identical" in printed
    assert (out / "compare" / "summary.md").is_file() and len(pd.read_csv(out / "compare" / "paired.csv")) == 30
    assert job.main(["--config", str(cfg), f"output_dir={out}", f"compare.a={a}"]) == 2  # b missing


def test_per_run_comparison_pairs_runs_parsed_from_image_names():
    from sa2va_ray.evaluate.compare import compare_runs

    def table(shift):
        rows = []
        for run in range(4):
            for f in range(3):
                i = run * 3 + f
                r = empty_row(f"{i}:0", i, 0, f"P({run:03d})_1_1_X_frame_{f:06d}.jpg", "vessel")
                r.update(iou=0.5 + 0.1 * run + (shift if run % 2 else 0.0), dice=0.6, pred_hash=f"h{i}{shift}")
                rows.append(r)
        return pd.DataFrame(rows)

    c = compare_tables(table(0.0), table(0.1), n_boot=200)
    runs, stats = compare_runs(c, n_boot=200)
    assert len(runs) == 4 and (runs["frames"] == 3).all()
    assert runs["j_diff"].round(6).tolist() == [0.0, 0.1, 0.0, 0.1]
    assert stats["mean_diff"] == pytest.approx(0.05) and stats["n_better"] == 2 and stats["n_tied"] == 2
    md = format_comparison(c)
    assert "## Per run" in md and "| P(001)_1_1_X | 3 |" in md
    _, none = compare_runs(compare_tables(_table(DICE), _table(DICE), n_boot=50))  # names without runs
    assert none is None
