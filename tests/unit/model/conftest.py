"""Fixtures for the model tests: tiny models and synthetic vessel-like images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw


def draw_vessel(rng: np.random.Generator, height: int = 64, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A dark, thick polyline (a 'vessel') on a noisy bright background: (uint8 (H, W) image, bool (H, W) mask)."""
    img = Image.new("L", (width, height), 170)
    mask = Image.new("L", (width, height), 0)
    x, y = rng.uniform(0, width), 0.0
    points = [(x, y)]
    for _ in range(4):
        x = float(np.clip(x + rng.uniform(-15, 15), 0, width))
        y += height / 4
        points.append((x, y))
    line_width = int(rng.integers(5, 8))
    ImageDraw.Draw(img).line(points, fill=60, width=line_width)
    ImageDraw.Draw(mask).line(points, fill=1, width=line_width)
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, 8, (height, width))
    return np.clip(noisy, 0, 255).astype(np.uint8), np.asarray(mask) > 0


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one intra-op thread; on a shared 2-core machine OpenMP spinning otherwise
    costs ~5x in CPU time."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def vessel_samples():
    """Factory: n training samples (dict(image, masks, texts)) with `per_image` masks each."""

    def make(n: int, per_image: int = 1, seed: int = 0, size: tuple[int, int] = (64, 64)) -> list[dict]:
        rng = np.random.default_rng(seed)
        samples = []
        for i in range(n):
            pairs = [draw_vessel(rng, *size) for _ in range(per_image)]
            image = np.minimum.reduce([p[0] for p in pairs])  # all vessels in one image
            samples.append({"id": f"img{i}", "image": image, "masks": [p[1] for p in pairs],
                            "texts": ["blood vessel", "the left vessel", "vessel"][:per_image]})
        return samples

    return make


@pytest.fixture(scope="module")
def tiny_model():
    """A tiny model shared by the tests of one module (do not train it in place)."""
    from sa2va_ray.model import build_tiny_sa2va

    return build_tiny_sa2va(seed=0)
