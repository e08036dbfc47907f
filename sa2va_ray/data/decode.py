"""Decoding of validated samples into arrays: image (uint8 RGB), one boolean mask per text, optional resize.

Pure numpy/PIL, no Ray: the Ray Data source (:mod:`sa2va_ray.data.ray_source`) runs these functions inside Ray
tasks, and plain loops (tests, benchmarks, small evaluations) call them directly, so both give the same rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sa2va_ray.data.annotations import Sample, rasterize_polygons, scale_polygons
from sa2va_ray.data.images import DEFAULT_MAX_PIXELS, load_image, resolve_image_path

Size = int | tuple[int, int] | None
"""Target size: None keeps the image's own size, an int gives a square, a tuple is ``(height, width)``."""


def _target_hw(size: Size, height: int, width: int) -> tuple[int, int]:
    if size is None:
        return height, width
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def decode_sample(
    sample: Sample,
    images_dir: str | Path,
    size: Size = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allow_symlinks_outside: bool = False,
) -> dict[str, Any]:
    """Decodes one record: its image once (as displayed: EXIF orientation applied), and one mask per text.

    Masks are rasterised directly at the target size (polygons scaled), not resized, so they stay exact. The
    image path is checked again here (:func:`~sa2va_ray.data.images.resolve_image_path`), not only in validation.

    Args:
        sample: A validated sample.
        images_dir: Directory the image name is relative to.
        size: Target size (see :data:`Size`); the image is resized bilinearly.
        max_pixels: Decompression-bomb limit.
        allow_symlinks_outside: Accept an image whose symlinks lead out of ``images_dir``.

    Returns:
        ``{"record_index", "image_name", "image": uint8 (H, W, 3), "masks": bool (T, H, W), "texts",
        "sample_ids", "orig_height", "orig_width"}``.

    Raises:
        OSError, ImageTooLargeError: If the image cannot be read (e.g. changed since validation).
        UnsafeImagePathError: If the image name leads out of ``images_dir``.
    """
    path = resolve_image_path(images_dir, sample.image, allow_symlinks_outside=allow_symlinks_outside)
    im = load_image(path, max_pixels=max_pixels)
    w0, h0 = im.size
    h, w = _target_hw(size, h0, w0)
    if (h, w) != (h0, w0):
        im = im.resize((w, h), Image.BILINEAR)
    masks = [rasterize_polygons(scale_polygons(p, w / w0, h / h0), h, w) for p in sample.masks]
    return {
        "record_index": sample.index,
        "image_name": sample.image,
        "image": np.asarray(im, dtype=np.uint8),  # (H, W, 3)
        "masks": np.stack(masks),  # (T, H, W)
        "texts": list(sample.texts),
        "sample_ids": [sample.sample_id(i) for i in range(len(sample.texts))],
        "orig_height": h0,
        "orig_width": w0,
    }


def decode_rows(
    sample: Sample,
    images_dir: str | Path,
    size: Size = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allow_symlinks_outside: bool = False,
) -> list[dict[str, Any]]:
    """Decodes one record into one row per text (the image array is shared between the rows); arguments as
    :func:`decode_sample`.

    Returns:
        Rows ``{"sample_id", "record_index", "text_index", "image_name", "text", "image": uint8 (H, W, 3),
        "mask": bool (H, W), "orig_height", "orig_width", "error": ""}``; ``sample_id`` is
        ``"<record index>:<text index>"``.
    """
    d = decode_sample(sample, images_dir, size, max_pixels, allow_symlinks_outside)
    return [
        {
            "sample_id": d["sample_ids"][t],
            "record_index": d["record_index"],
            "text_index": t,
            "image_name": d["image_name"],
            "text": text,
            "image": d["image"],
            "mask": d["masks"][t],
            "orig_height": d["orig_height"],
            "orig_width": d["orig_width"],
            "error": "",
        }
        for t, text in enumerate(d["texts"])
    ]


def error_rows(sample: Sample, error: str, size: Size = None) -> list[dict[str, Any]]:
    """Rows for a record whose decoding failed: same columns, zero image/mask, the error message kept."""
    h, w = _target_hw(size, 1, 1)
    return [
        {
            "sample_id": sample.sample_id(t),
            "record_index": sample.index,
            "text_index": t,
            "image_name": sample.image,
            "text": text,
            "image": np.zeros((h, w, 3), dtype=np.uint8),
            "mask": np.zeros((h, w), dtype=bool),
            "orig_height": 0,
            "orig_width": 0,
            "error": error,
        }
        for t, text in enumerate(sample.texts)
    ]
