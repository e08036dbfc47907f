"""Fixtures of the data-layer tests: a small synthetic set and writers of good and bad files.

The Ray test uses the session-wide ``ray_cluster`` fixture of ``tests/conftest.py``.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sa2va_ray.data.synthetic import generate_synthetic_set


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory) -> Path:
    """3 patients x 2 frames at 96 px; returns the annotations path (images in its sibling ``images/``)."""
    return generate_synthetic_set(tmp_path_factory.mktemp("synthetic"), patients=3, frames=2, size=96, seed=7)


def write_rgb(path: Path, size: tuple[int, int] = (16, 16), fmt: str = "PNG") -> Path:
    """Writes a small random RGB image."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, fmt)
    return path


def write_truncated_jpeg(path: Path) -> Path:
    """A 64 x 64 JPEG cut in the middle of its entropy-coded data."""
    buf = io.BytesIO()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def write_bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A tiny file whose PNG header declares a huge image (no pixel data: decoding would fail)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b""))
    return path


def write_records(path: Path, records: list) -> Path:
    """Writes an annotations file."""
    path.write_text(json.dumps(records))
    return path


class Files:
    """Writers of test files, handed to tests by the ``files`` fixture."""

    rgb = staticmethod(write_rgb)
    truncated_jpeg = staticmethod(write_truncated_jpeg)
    bomb_png = staticmethod(write_bomb_png)
    records = staticmethod(write_records)


@pytest.fixture
def files() -> type[Files]:
    """Writers of small good and bad image/annotation files."""
    return Files
