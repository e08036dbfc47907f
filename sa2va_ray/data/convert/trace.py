"""Masks to polygons whose rasterisation reproduces the mask, checked with the project's own rasteriser.

The official format's mask is a list of polygons whose **union** is the mask, and
:func:`sa2va_ray.data.annotations.rasterize_polygons` fills each polygon with the even-odd rule. A hole therefore
cannot be a polygon of its own (the union would fill it); instead each connected component becomes one polygon:
its outer outline with every hole outline joined to it by a "bridge" (a segment walked there and back). Under the
even-odd rule the two walks of a bridge cancel, so the hole stays empty, and a vessel tree with loops comes back
with its loops. Islands inside a hole are components of their own.

Outlines are traced with ``skimage.measure.find_contours`` at level 0.5 on the padded component, which runs
between pixel centres (``x = column + 0.5`` in polygon coordinates, the COCO pixel-centre convention of the
rasteriser), so no pixel centre lies on an outline and the fill is exact; collinear points are removed (exact,
coordinates are multiples of 0.5). :func:`trace_mask` returns the polygons with their IoU against the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.measure import approximate_polygon, find_contours

from sa2va_ray.data.annotations import Polygon, rasterize_polygons


@dataclass
class Traced:
    """Polygons of a mask and how well they reproduce it.

    Attributes:
        polygons: One flat polygon per connected component (holes bridged in).
        iou: IoU of ``rasterize_polygons(polygons)`` with the mask (1.0 for an exact trace).
        pixels: Foreground pixels of the mask.
    """

    polygons: list[Polygon]
    iou: float
    pixels: int


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (1.0 when both are empty)."""
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """Removes points of a closed ring (P, 2) that lie on the line through their neighbours (and repeats)."""
    for _ in range(4):  # removing points can make new collinear triples only where repeats were removed
        prev, nxt = np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0)
        d_in, d_out = ring - prev, nxt - ring
        cross = d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]
        keep = cross != 0
        if keep.all() or keep.sum() < 3:
            break
        ring = ring[keep]
    return ring


def _rings(component: np.ndarray, simplify: float) -> list[np.ndarray]:
    """Outlines of one connected component (cropped) as (P, 2) ``(x, y)`` rings, outer outline first."""
    padded = np.pad(component, 1).astype(np.float32)
    rings = []
    for c in find_contours(padded, 0.5, fully_connected="low"):
        xy = c[:-1, ::-1] - 0.5  # (P, 2) (row, col) of the padded array -> x, y in crop pixel coordinates + 0.5 - 1
        if simplify > 0:
            xy = approximate_polygon(np.vstack([xy, xy[:1]]), simplify)[:-1]
        xy = _drop_collinear(xy)
        if len(xy) >= 3:
            rings.append(xy)
    # The outer outline encloses the largest area (its holes lie inside it).
    areas = [abs(np.dot(r[:, 0], np.roll(r[:, 1], -1)) - np.dot(r[:, 1], np.roll(r[:, 0], -1))) for r in rings]
    order = np.argsort(areas)[::-1]
    return [rings[i] for i in order]


def _bridge_holes(outer: np.ndarray, holes: list[np.ndarray]) -> np.ndarray:
    """One ring: ``outer`` with each hole spliced in at its nearest outer point (bridge there and back)."""
    if not holes:
        return outer
    tree = cKDTree(outer)
    at: dict[int, list[np.ndarray]] = {}
    for hole in holes:
        dist, idx = tree.query(hole)
        h = int(np.argmin(dist))
        k = int(idx[h])
        rotated = np.roll(hole, -h, axis=0)  # starts at the hole point nearest to outer[k]
        at.setdefault(k, []).append(np.vstack([rotated, rotated[:1], outer[k:k + 1]]))
    parts = []
    for k in range(len(outer)):
        parts.append(outer[k:k + 1])
        parts += at.get(k, [])
    return np.vstack(parts)


def trace_mask(mask: np.ndarray, simplify: float = 0.0) -> Traced:
    """Traces a boolean mask into polygons and checks them with the project's rasteriser.

    Args:
        mask: ``(H, W)`` boolean (or 0/1) array.
        simplify: Douglas-Peucker tolerance in pixels (0: exact outlines).

    Returns:
        The polygons (one per 4-connected component, holes bridged in) and their IoU with ``mask``.
    """
    mask = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(mask)  # 4-connected, as find_contours(fully_connected="low") separates them
    polygons: list[Polygon] = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        rings = _rings(labels[sl] == k, simplify)
        if not rings:
            continue
        ring = _bridge_holes(rings[0], rings[1:]) + (sl[1].start, sl[0].start)  # crop -> image coordinates
        polygons.append(ring.reshape(-1).tolist())
    drawn = rasterize_polygons(polygons, *mask.shape)
    return Traced(polygons=polygons, iou=mask_iou(drawn, mask), pixels=int(np.count_nonzero(mask)))
