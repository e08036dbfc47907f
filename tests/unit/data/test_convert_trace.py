"""Masks traced to polygons reproduce the mask under the project's rasteriser: holes, loops, islands, specks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from sa2va_ray.data.annotations import parse_record, rasterize_polygons
from sa2va_ray.data.convert.trace import mask_iou, trace_mask


def _ring_with_island() -> np.ndarray:
    m = np.zeros((40, 48), bool)
    m[4:36, 4:44] = True
    m[10:30, 10:38] = False  # a hole ...
    m[16:24, 18:30] = True  # ... with an island in it
    m[12:14, 33:35] = True  # ... and a speck
    m[0, 0] = m[1, 1] = True  # two pixels touching by a corner only
    m[38, 46] = True  # a single pixel at the border
    return m


def test_holes_islands_and_specks_are_exact():
    m = _ring_with_island()
    traced = trace_mask(m)
    assert traced.iou == 1.0
    assert np.array_equal(rasterize_polygons(traced.polygons, *m.shape), m)
    # Every polygon is a valid polygon of the official format (the record passes the project's parser).
    sample, problems = parse_record(0, {"image": "x.png", "mask": [traced.polygons], "text": ["vessel"]})
    assert not problems and sample is not None


def test_a_vessel_loop_keeps_its_hole():
    m = np.zeros((30, 30), bool)
    m[5:25, 5:8] = m[5:25, 22:25] = m[5:8, 5:25] = m[22:25, 5:25] = True  # a closed loop of "vessel"
    traced = trace_mask(m)
    assert len(traced.polygons) == 1  # one component: outline with its hole bridged in
    assert traced.iou == 1.0
    assert not rasterize_polygons(traced.polygons, 30, 30)[15, 15]


@pytest.mark.parametrize("seed", range(6))
def test_random_blobs_and_noise_are_exact(seed):
    rng = np.random.default_rng(seed)
    blobs = ndimage.gaussian_filter(rng.random((64, 80)), 2.5) > 0.5
    noise = rng.random((32, 32)) > 0.5  # worst case: many diagonal contacts and one-pixel holes
    for m in (blobs, noise):
        traced = trace_mask(m)
        assert traced.iou == 1.0
        assert traced.pixels == m.sum()


def test_simplify_trades_points_for_iou_and_says_so():
    m = ndimage.binary_dilation(np.eye(60, dtype=bool), iterations=3)  # a diagonal vessel: a staircase outline
    exact, simple = trace_mask(m), trace_mask(m, simplify=1.0)
    assert sum(map(len, simple.polygons)) < sum(map(len, exact.polygons))
    assert simple.iou == mask_iou(rasterize_polygons(simple.polygons, 60, 60), m) > 0.9


def test_empty_mask_has_no_polygons():
    traced = trace_mask(np.zeros((8, 8), bool))
    assert traced.polygons == [] and traced.pixels == 0
