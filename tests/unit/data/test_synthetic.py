"""Synthetic angiography: polygons reproduce the rendered vessels, names parse to patients, CLI, determinism."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from sa2va_ray.data.annotations import load_image, load_samples, rasterize_polygons
from sa2va_ray.data.split import parse_group
from sa2va_ray.data.synthetic import generate_synthetic_set, synthesize_patient


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize("size", [96, 256])
def test_polygons_reproduce_the_rendered_mask(size):
    frames = synthesize_patient(np.random.default_rng(size), size, frames=2)
    for f in frames:
        assert f.image.shape == f.mask.shape == (size, size) and f.image.dtype == np.uint8
        assert _iou(rasterize_polygons(f.polygons, size, size), f.mask) >= 0.95
        assert 0.03 <= f.mask.mean() <= 0.2  # vessel pixel fraction
        # vessels are clearly darker than the background around them
        assert f.image[f.mask].mean() < f.image[~f.mask].mean() - 40


def test_frames_of_a_patient_share_a_deformed_tree():
    a, b = synthesize_patient(np.random.default_rng(3), 128, frames=2)
    assert 0.2 < _iou(a.mask, b.mask) < 1.0


def test_written_set_is_official_format_and_parses_to_patients(synthetic_set):
    records = json.loads(synthetic_set.read_text())
    assert len(records) == 6
    assert all(set(r) == {"image", "mask", "text"} and r["text"] == ["blood vessel"] for r in records)
    groups = Counter(parse_group(r["image"]) for r in records)
    assert None not in groups and len(groups) == 3 and set(groups.values()) == {2}
    samples, problems = load_samples(synthetic_set)
    assert problems == [] and len(samples) == 6
    for s in samples:
        image = np.asarray(load_image(synthetic_set.parent / "images" / s.image))[..., 0]  # (H, W)
        mask = rasterize_polygons(s.masks[0], *image.shape)
        assert image[mask].mean() < image[~mask].mean() - 40  # the JPEG's dark vessels sit under the polygons


def test_same_seed_same_files(tmp_path):
    a = generate_synthetic_set(tmp_path / "a", patients=2, frames=1, size=64, seed=11)
    b = generate_synthetic_set(tmp_path / "b", patients=2, frames=1, size=64, seed=11)
    c = generate_synthetic_set(tmp_path / "c", patients=2, frames=1, size=64, seed=12)
    assert a.read_text() == b.read_text() != c.read_text()


def test_cli(tmp_path):
    out = tmp_path / "syn"
    cmd = [sys.executable, "-m", "sa2va_ray.data.synthetic", "--out", str(out)]
    cmd += "--patients 2 --frames 3 --size 64 --seed 1".split()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads((out / "annotations.json").read_text())) == 6
    assert len(list((out / "images").glob("*.jpg"))) == 6
