"""Procedural synthetic X-ray coronary angiography with exact vessel polygons.

Each patient gets a branching vessel tree: centrelines grown as smooth random walks with a per-branch bend,
radii decaying along each branch and from parent to child. Rendering follows Beer--Lambert: the contrast path
length through a round vessel of radius ``r`` at distance ``d`` from its centreline is ``2 * sqrt(r^2 - d^2)``,
and the image is ``background * exp(-mu * path)`` on a smooth, vignetted background, plus noise. Vessels are dark
on a brighter background.

The frames of a patient form one run (a cine sequence) that a per-frame model finds harder than a model with
memory (:func:`synthesize_patient`):

* **cardiac motion** -- the tree moves with a smooth periodic translation, rotation, scale and sinusoidal warp
  (period :data:`CARDIAC_PERIOD` frames), so consecutive frames differ by a few pixels;
* **contrast wash-in** -- the first ``wash_in`` frames (default ``min(5, frames // 3)``) have faint vessels
  (attenuation rising from :data:`WASH_IN_START` of full to full); their masks are the full vessel tree all the same;
* **a catheter** -- a thin dark (or, for some patients, bright) curved line from the image border towards the
  ostium, moving with the heart and swaying on its own. It is not a vessel and is **not in the mask**.

The annotation of a frame is one mask (depth 3 ``[[poly, ...]]``, text ``"blood vessel"``): one polygon per
branch, the outline of its thick centreline with round caps, so the union of the rasterised polygons is the set
of pixels within ``r`` of a centreline, which is exactly where the renderer put contrast (tested: IoU >= 0.95).

Command line::

    python -m sa2va_ray.data.synthetic [--config FILE] [--out DIR] [--patients P] [--frames F] [--size S] [--seed N]

writes ``DIR/images/*.jpg`` (grayscale JPEG) and ``DIR/annotations.json``. File names look like real ones,
``Name(0000932433)_1-3_1_051C3E6A_frame_000011.jpg``, with fake names and ids.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sa2va_ray.cli import CliParser, module_main, module_parser, parse_module_args

TEXT = "blood vessel"
CARDIAC_PERIOD = 8
"""Frames per cardiac cycle of the synthetic motion."""
WASH_IN_START = 0.15
"""Vessel attenuation of the first frame of a wash-in, as a fraction of full contrast."""
_SYLLABLES = (
    "An Bai Chen Cong Fang Feng Gong Hui Kun Li Min Wan Xue Zhao Liu Yang Wu Zhou Sun Ma Lin Qiu Tao Hu Jin Lu Shi"
).split()


@dataclass
class Branch:
    """A vessel centreline: ``points`` (N, 2) as (x, y) pixel coordinates, ``radii`` (N,) in pixels."""

    points: np.ndarray
    radii: np.ndarray


@dataclass
class SyntheticFrame:
    """One rendered frame: ``image`` (S, S) uint8, ``polygons`` one per branch, ``mask`` (S, S) bool (exact).

    ``contrast`` is the vessel attenuation as a fraction of full contrast (below 1 during the wash-in) and
    ``distractor`` (S, S) bool the pixels of the catheter (not part of ``mask`` or ``polygons``).
    """

    image: np.ndarray
    polygons: list[list[float]]
    mask: np.ndarray
    contrast: float = 1.0
    distractor: np.ndarray | None = None


# ----------------------------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------------------------


def _grow_branch(
    rng: np.random.Generator,
    start: np.ndarray,
    heading: float,
    length: float,
    r0: float,
    r1: float,
    size: int,
    step: float,
) -> Branch:
    """Smooth random-walk centreline from ``start``; stops at the image border."""
    n = max(3, int(length / step))
    bend = rng.uniform(-0.7, 0.7) / n  # total turn of the branch, spread over its steps
    wiggle = np.convolve(rng.normal(0.0, 0.08, n + 4), np.ones(5) / 5, mode="valid")[:n]
    # Radius of curvature must stay above the radius, or the offset outline would fold onto itself.
    dtheta = np.clip(bend + wiggle, -step / (2.0 * r0), step / (2.0 * r0))
    theta = heading + np.cumsum(dtheta)
    steps = step * np.stack([np.cos(theta), np.sin(theta)], axis=1)  # (n, 2)
    pts = np.concatenate([start[None], start + np.cumsum(steps, axis=0)])  # (n + 1, 2)
    inside = np.all((pts >= 1.0) & (pts <= size - 2.0), axis=1)
    stop = len(pts) if inside.all() else max(2, int(np.argmin(inside)))
    pts = pts[:stop]
    radii = np.linspace(r0, r1, n + 1)[:stop]
    return Branch(pts, radii)


def build_tree(rng: np.random.Generator, size: int) -> list[Branch]:
    """Grows a branching vessel tree (root from the upper border, children at both sides, decaying radii).

    Args:
        rng: Random generator.
        size: Image side in pixels.

    Returns:
        The branches, root first.
    """
    step = max(2.0, size / 160)
    r_min = 1.5
    root_r = max(3.5, size * rng.uniform(0.013, 0.018))
    start = np.array([rng.uniform(0.25, 0.75) * size, 1.0])
    heading = np.pi / 2 + rng.uniform(-0.5, 0.5)
    todo = [(start, heading, size * rng.uniform(0.8, 1.0), root_r, 0)]
    branches: list[Branch] = []
    while todo and len(branches) < 60:
        start, heading, length, r0, depth = todo.pop(0)
        br = _grow_branch(rng, start, heading, length, r0, max(r_min, r0 * 0.6), size, step)
        if len(br.points) < 3:
            continue
        branches.append(br)
        n_children = 0 if depth >= 4 else int(rng.integers(2, 5))
        for _ in range(n_children):
            k = int(rng.integers(len(br.points) // 6, max(len(br.points) // 6 + 1, 4 * len(br.points) // 5)))
            r_child = br.radii[k] * rng.uniform(0.55, 0.8)
            if r_child < r_min:
                continue
            d = br.points[min(k + 1, len(br.points) - 1)] - br.points[max(k - 1, 0)]
            side = rng.choice([-1.0, 1.0])
            child_heading = np.arctan2(d[1], d[0]) + side * rng.uniform(0.45, 1.05)
            todo.append((br.points[k].copy(), child_heading, length * rng.uniform(0.45, 0.75), r_child, depth + 1))
    return branches


def deform_tree(branches: list[Branch], size: int, phase: float, direction: float = 0.0) -> list[Branch]:
    """Cardiac motion at ``phase`` (radians): a smooth periodic translation along ``direction`` (about 1.5% of the
    image at its extremes, with a sideways figure-of-eight), rotation, scale and a sinusoidal warp."""
    c = size / 2.0
    angle = 0.03 * np.sin(phase)
    scale = 1.0 + 0.02 * np.sin(phase + 1.0)
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    along = np.array([np.cos(direction), np.sin(direction)])
    shift = 0.015 * size * (np.sin(phase) * along + 0.3 * np.sin(2 * phase) * along[::-1] * (-1.0, 1.0))
    amp, k = 0.008 * size, 2 * np.pi / size
    out = []
    for b in branches:
        p = (b.points - c) @ rot.T + c + shift
        warp = amp * np.stack([np.sin(k * p[:, 1] + phase), np.cos(k * p[:, 0] + 0.7 * phase)], axis=1)
        # Keep outlines within the 10% border tolerance of validation (matters only for tiny images).
        margin = np.maximum(b.radii - 0.09 * size, 0.0)[:, None]  # (N, 1)
        out.append(Branch(np.clip(p + warp, margin, size - 1.0 - margin), b.radii))
    return out


_CAP = np.linspace(0.0, np.pi, 9)[1:-1, None]  # (7, 1) angles of the round cap points


def branch_polygon(branch: Branch) -> list[float]:
    """Outline of a thick centreline with round caps, as a flat polygon ``[x1, y1, ...]``."""
    p, r = branch.points, branch.radii[:, None]  # (N, 2), (N, 1)
    t = np.empty_like(p)
    t[1:-1] = p[2:] - p[:-2]
    t[0], t[-1] = p[1] - p[0], p[-1] - p[-2]
    t /= np.maximum(np.sqrt((t * t).sum(1, keepdims=True)), 1e-9)
    n = t[:, ::-1] * (-1.0, 1.0)  # left normal (-ty, tx)
    end_cap = p[-1] + r[-1] * (np.cos(_CAP) * n[-1] + np.sin(_CAP) * t[-1])
    start_cap = p[0] - r[0] * (np.cos(_CAP) * n[0] + np.sin(_CAP) * t[0])
    ring = np.concatenate([p + r * n, end_cap, (p - r * n)[::-1], start_cap])  # (2N + 14, 2)
    return np.round(ring, 1).ravel().tolist()


def _segment_path_lengths(a: np.ndarray, b: np.ndarray, ra: np.ndarray, rb: np.ndarray, half: int):
    """Path lengths of segments ``a -> b`` (M, 2) in windows of side ``2 * half + 1`` around their midpoints.

    Returns flat pixel coordinates ``(xs (M, 1, K), ys (M, K, 1))`` and path lengths ``(M, K, K)``.
    """
    offs = np.arange(-half, half + 1)
    centre = np.floor((a + b) / 2).astype(np.int64)  # (M, 2)
    xs = centre[:, 0, None, None] + offs[None, None, :]  # (M, 1, K)
    ys = centre[:, 1, None, None] + offs[None, :, None]  # (M, K, 1)
    ab = (b - a).astype(np.float32)  # (M, 2)
    len2 = np.maximum((ab**2).sum(1), 1e-9)
    # Pixel (i, j) has its centre at (j + 0.5, i + 0.5), the convention of rasterize_polygons.
    px = (xs + 0.5 - a[:, 0, None, None]).astype(np.float32)  # (M, 1, K)
    py = (ys + 0.5 - a[:, 1, None, None]).astype(np.float32)  # (M, K, 1)
    t = np.clip((px * ab[:, 0, None, None] + py * ab[:, 1, None, None]) / len2[:, None, None], 0.0, 1.0)  # (M,K,K)
    dx = px - t * ab[:, 0, None, None]
    dy = py - t * ab[:, 1, None, None]
    r = (ra[:, None, None] + t * (rb - ra)[:, None, None]).astype(np.float32)
    return xs, ys, 2.0 * np.sqrt(np.maximum(r * r - dx * dx - dy * dy, 0.0))


def render_path_length(branches: list[Branch], size: int) -> np.ndarray:
    """Contrast path length (S, S) through the vessels: max over segments of ``2 sqrt(r^2 - d^2)``.

    Vectorised over segments: each one only looks at a small window around itself; segments are grouped by
    window size so thin vessels do not pay for the thick ones.
    """
    a = np.concatenate([b.points[:-1] for b in branches])  # (M, 2)
    b = np.concatenate([b.points[1:] for b in branches])  # (M, 2)
    ra = np.concatenate([b.radii[:-1] for b in branches])  # (M,)
    rb = np.concatenate([b.radii[1:] for b in branches])  # (M,)
    halves = np.ceil(np.linalg.norm(b - a, axis=1) / 2 + np.maximum(ra, rb)).astype(np.int64) + 1  # (M,)
    out = np.zeros(size * size, dtype=np.float32)
    for half in np.unique(halves):
        sel = halves == half
        xs, ys, path = _segment_path_lengths(a[sel], b[sel], ra[sel], rb[sel], int(half))
        valid = (path > 0) & (xs >= 0) & (xs < size) & (ys >= 0) & (ys < size)
        flat = (np.broadcast_to(ys, path.shape) * size + np.broadcast_to(xs, path.shape))[valid]
        np.maximum.at(out, flat, path[valid])
    return out.reshape(size, size)


# ----------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------


def render_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth bright background (S, S) in about [0.45, 0.9]: low-frequency texture and a vignette."""
    coarse = rng.normal(0.0, 1.0, (6, 6)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    vignette = 1.0 - 0.9 * (xx**2 + yy**2)
    return np.clip((rng.uniform(0.62, 0.78) + 0.05 * smooth) * vignette, 0.3, 0.95).astype(np.float32)


def build_catheter(size: int, tree: list[Branch], sway: float, entry: float = 0.55, reach: float = 0.1) -> Branch:
    """A catheter-like thin tube: a quadratic curve from a side border towards the root of the tree.

    Args:
        size: Image side in pixels.
        tree: The vessel tree (its root is the ostium the catheter heads for).
        sway: Phase (radians) of the tube's own motion.
        entry: Height of the entry point on the side border, as a fraction of the image.
        reach: Where the tip stops: this fraction of the image beside and below the root.
    """
    root = tree[0].points[0]
    side = 1.0 if root[0] < size / 2 else -1.0  # enter from the farther side border
    start = np.array([size / 2 + side * (size / 2 - 1.5), size * (entry + 0.05 * np.sin(sway))])
    tip = root + reach * size * np.array([side, 0.8]) + 0.02 * size * np.array([np.sin(sway), np.cos(sway)])
    ctrl = np.array([tip[0] + side * 0.1 * size, start[1]]) + 0.05 * size * np.sin(sway + 1.0)
    t = np.linspace(0.0, 1.0, max(8, size // 8))[:, None]
    pts = (1 - t) ** 2 * start + 2 * (1 - t) * t * ctrl + t**2 * tip  # (N, 2)
    radius = max(0.8, size / 300)
    return Branch(np.clip(pts, 1.0, size - 2.0), np.full(len(pts), radius))


def choose_catheter(rng: np.random.Generator, size: int, tree: list[Branch], tries: int = 6) -> tuple[float, float]:
    """Draws ``(entry, reach)`` of :func:`build_catheter` for a patient: of a few random candidates, the one whose
    tube stays furthest from the vessels (a distractor beside the tree, crossing it as little as possible).

    Nearness is judged on a coarse grid (cells of 1/32 of the image, the vessels' cells grown by one): cheap.
    """
    cells = 32
    occupied = np.zeros((cells + 2, cells + 2), dtype=bool)  # one cell of padding on each side
    pts = np.concatenate([b.points for b in tree])  # (P, 2)
    ij = np.clip((pts * (cells / size)).astype(np.int64), 0, cells - 1) + 1
    occupied[ij[:, 1], ij[:, 0]] = True
    near = occupied.copy()
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)):
        near[1:-1, 1:-1] |= occupied[1 + dy : cells + 1 + dy, 1 + dx : cells + 1 + dx]
    best, best_score = (0.55, 0.1), np.inf
    for _ in range(tries):
        cand = (float(rng.uniform(0.3, 0.9)), float(rng.uniform(0.08, 0.2)))
        tube = build_catheter(size, tree, 0.0, *cand).points  # (N, 2)
        tij = np.clip((tube * (cells / size)).astype(np.int64), 0, cells - 1) + 1
        score = float(near[tij[:, 1], tij[:, 0]].mean())  # fraction of the tube near a vessel
        if score < best_score:
            best, best_score = cand, score
    return best


def render_frame(
    branches: list[Branch],
    background: np.ndarray,
    rng: np.random.Generator,
    contrast: float = 1.0,
    catheter: Branch | None = None,
    catheter_sign: float = 1.0,
) -> SyntheticFrame:
    """Renders one frame of a tree: attenuation image, per-branch polygons and the exact mask.

    Args:
        branches: The (deformed) vessel tree.
        background: (S, S) background in [0, 1].
        rng: Random generator (attenuation and noise).
        contrast: Fraction of the full vessel attenuation (contrast wash-in).
        catheter: A distractor drawn into the image but not into the mask.
        catheter_sign: 1 draws the catheter dark (radio-opaque), -1 bright.
    """
    size = background.shape[0]
    path = render_path_length(branches, size)  # (S, S)
    root_r = branches[0].radii[0]
    mu = contrast * rng.uniform(0.75, 0.95) / root_r  # centre of the root vessel: exp(-2 mu r) ~ 0.15-0.2
    inside = path > 0
    # Whole-image arithmetic in place (a few passes); the catheter touches only its own pixels.
    bg = background * np.float32(255.0)  # (S, S)
    att = path * np.float32(-mu)  # (S, S) minus the optical depth; Beer-Lambert: intensity = bg * exp(att)
    distractor, tube, tube_att = None, None, None
    if catheter is not None:
        c_path = render_path_length([catheter], size)  # (S, S)
        distractor = c_path > 0
        tube = np.flatnonzero(distractor)
        tube_att = c_path.ravel()[tube] * np.float32(0.6 / (2.0 * catheter.radii[0]))  # centre: ~45% darker
        if catheter_sign > 0:
            att.ravel()[tube] -= tube_att
    np.exp(att, out=att)
    att *= bg
    img = _noise(rng, background.shape, 0.025 * 255.0)  # (S, S)
    img += att
    if tube is not None and catheter_sign < 0:
        img.ravel()[tube] += bg.ravel()[tube] * (1.0 - np.exp(-tube_att))  # a bright line instead
    np.clip(img, 0, 255, out=img)
    image = img.astype(np.uint8)
    return SyntheticFrame(image=image, polygons=[branch_polygon(b) for b in branches], mask=inside,
                          contrast=contrast, distractor=distractor)


def _noise(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    """Noise of the given std around 0.5 (the rounding offset of the uint8 cast): the difference of two uniforms
    (triangular, close to Gaussian quantum noise after JPEG), about 3x faster than ``standard_normal``, which
    was the largest cost of a frame."""
    u = rng.random(shape, dtype=np.float32)
    u -= rng.random(shape, dtype=np.float32)
    u *= np.float32(std * np.sqrt(6.0))  # the variance of u1 - u2 is 1/6
    u += np.float32(0.5)
    return u


def wash_in_contrast(frame: int, wash_in: int) -> float:
    """Vessel contrast of a frame: rises linearly from :data:`WASH_IN_START` over ``wash_in`` frames, then 1."""
    if frame >= wash_in:
        return 1.0
    return WASH_IN_START + (1.0 - WASH_IN_START) * frame / wash_in


def synthesize_patient(
    rng: np.random.Generator, size: int, frames: int, wash_in: int | None = None, catheter: bool = True
) -> list[SyntheticFrame]:
    """Renders one run of ``frames`` frames of one patient: one tree and background, with cardiac motion.

    Args:
        rng: Random generator.
        size: Image side in pixels.
        frames: Number of frames.
        wash_in: Frames of contrast wash-in (faint vessels); None: ``min(5, frames // 3)`` (none below 3 frames).
        catheter: Draw the moving catheter distractor.

    Returns:
        The frames in order.
    """
    wash_in = min(5, frames // 3) if wash_in is None else wash_in
    tree = build_tree(rng, size)
    background = render_background(rng, size)
    phase0 = rng.uniform(0, 2 * np.pi)
    direction = rng.uniform(0, 2 * np.pi)
    sway0 = rng.uniform(0, 2 * np.pi)
    entry, reach = choose_catheter(rng, size, tree) if catheter else (0.0, 0.0)
    sign = 1.0 if rng.uniform() < 0.7 else -1.0
    out = []
    for f in range(frames):
        phase = phase0 + 2 * np.pi * f / CARDIAC_PERIOD
        deformed = deform_tree(tree, size, phase, direction)
        tube = None
        if catheter:
            tube = build_catheter(size, tree, sway0 + 2 * np.pi * f / 5, entry, reach)
            tube = deform_tree([tube], size, phase, direction)[0]
        gain = rng.uniform(0.97, 1.03)
        out.append(render_frame(deformed, np.clip(background * gain, 0.0, 1.0), rng, wash_in_contrast(f, wash_in),
                                tube, sign))
    return out


def make_patient_name(rng: np.random.Generator) -> tuple[str, str]:
    """Returns a fake ``(name, 10-digit id)`` such as ``("Bai_Hui_Min", "0000202318")``."""
    parts = rng.choice(_SYLLABLES, size=int(rng.integers(2, 4)))
    return "_".join(parts), f"{int(rng.integers(0, 10**7)):010d}"


def generate_synthetic_set(
    out: str | Path, patients: int = 4, frames: int = 3, size: int = 512, seed: int = 0, quality: int = 92
) -> Path:
    """Writes a synthetic angiography set: ``out/images/*.jpg`` and ``out/annotations.json``.

    Args:
        out: Output directory (created).
        patients: Number of patients (one vessel tree each).
        frames: Frames per patient.
        size: Image side in pixels.
        seed: Seed; the same arguments give the same files.
        quality: JPEG quality.

    Returns:
        Path of the written ``annotations.json`` (images are in its sibling ``images/``).
    """
    out = Path(out)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records, used_ids = [], set()
    for _ in range(patients):
        name, pid = make_patient_name(rng)
        while pid in used_ids:
            pid = f"{int(rng.integers(0, 10**7)):010d}"
        used_ids.add(pid)
        series = f"1-{int(rng.integers(1, 6))}_1_{int(rng.integers(0, 16**8)):08X}"
        first = int(rng.integers(5, 40))
        for f, frame in enumerate(synthesize_patient(rng, size, frames)):
            file_name = f"{name}({pid})_{series}_frame_{first + f:06d}.jpg"
            Image.fromarray(frame.image, mode="L").save(images / file_name, quality=quality)
            records.append({"image": file_name, "mask": [frame.polygons], "text": [TEXT]})
    path = out / "annotations.json"
    path.write_text(json.dumps(records, separators=(",", ":")))
    return path


def build_parser() -> CliParser:
    """The CLI's parser: its flags are the ``data.synthetic`` keys, their defaults the config's."""
    ap = module_parser("python -m sa2va_ray.data.synthetic", __doc__.split("\n")[0], config="optional")
    ap.add_config_argument("--out", key="data.synthetic.out", help="output directory")
    ap.add_config_argument("--patients", key="data.synthetic.patients", type=int, help="patients (vessel trees)")
    ap.add_config_argument("--frames", key="data.synthetic.frames", type=int, help="frames per patient")
    ap.add_config_argument("--size", key="data.synthetic.size", type=int, help="image side in pixels")
    ap.add_config_argument("--seed", key="data.synthetic.seed", type=int, help="seed (same seed, same files)")
    return ap


@module_main
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    args, _ = parse_module_args(build_parser(), argv)  # the config's checks: patients >= 2, frames >= 1, size >= 32
    t0 = time.perf_counter()
    path = generate_synthetic_set(args.out, args.patients, args.frames, args.size, args.seed)
    n = args.patients * args.frames
    print(f"wrote {n} images of {args.size}x{args.size} and {path} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
