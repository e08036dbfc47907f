"""Ray Data source: validated samples -> a ``ray.data.Dataset`` of decoded images, masks and texts.

The only module of :mod:`sa2va_ray.data` that imports Ray. The driver only ships light items (indices, names,
polygons as JSON); decoding and rasterising run in Ray tasks through :func:`sa2va_ray.data.decode.decode_rows`,
the same function plain loops use.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import ray

from sa2va_ray.data.annotations import DEFAULT_MAX_PIXELS, Sample
from sa2va_ray.data.decode import Size, decode_rows, decode_sample, error_rows

__all__ = ["build_ray_dataset", "decode_sample", "decode_rows"]

logger = logging.getLogger(__name__)

OnError = Literal["skip", "keep", "raise"]


def _to_item(sample: Sample) -> dict[str, Any]:
    return {
        "record_index": sample.index,
        "image": sample.image,
        "texts": json.dumps(sample.texts),
        "masks": json.dumps(sample.masks),
    }


def _from_item(item: dict[str, Any]) -> Sample:
    return Sample(
        index=int(item["record_index"]),
        image=str(item["image"]),
        texts=json.loads(item["texts"]),
        masks=json.loads(item["masks"]),
    )


def _decode_item(
    item: dict[str, Any], images_dir: str, size: Size, max_pixels: int, on_error: OnError,
    allow_symlinks_outside: bool = False,
) -> list[dict[str, Any]]:
    """Runs in a Ray task: one record item -> one decoded row per text."""
    sample = _from_item(item)
    try:
        return decode_rows(sample, images_dir, size, max_pixels, allow_symlinks_outside)
    except Exception as e:
        if on_error == "raise":
            raise
        message = f"record {sample.index} ({sample.image}): cannot decode: {type(e).__name__}: {e}"
        logger.warning("%s%s", message, "; skipped" if on_error == "skip" else "")
        return [] if on_error == "skip" else error_rows(sample, message, size)


def build_ray_dataset(
    samples: list[Sample],
    images_dir: str | Path,
    size: Size = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_error: OnError = "skip",
    num_blocks: int | None = None,
    num_cpus: float = 1.0,
    allow_symlinks_outside: bool = False,
) -> ray.data.Dataset:
    """Builds a dataset with one row per (record, text) pair, decoded in Ray tasks.

    Columns: ``sample_id`` (``"<record index>:<text index>"``), ``record_index``, ``text_index``,
    ``image_name``, ``text``, ``image`` uint8 (H, W, 3), ``mask`` bool (H, W), ``orig_height``, ``orig_width``,
    ``error`` ("" when decoding worked).

    Args:
        samples: Validated samples (see :func:`sa2va_ray.data.validate.load_valid_samples`).
        images_dir: Directory of the images, readable from every node.
        size: None keeps each image's own size (variable-shaped tensors); an int or ``(height, width)``
            resizes images and rasterises masks at that size, for fixed-shape training batches.
        max_pixels: Decompression-bomb limit.
        on_error: An image that fails to decode (e.g. changed since validation) is skipped with a warning
            (``"skip"``), kept as a row with a zero image and its ``error`` message (``"keep"``), or raises.
        num_blocks: Number of input blocks (parallel tasks); default: enough to keep every CPU busy.
        num_cpus: CPUs each decode task reserves; below 1 lets decoding run beside training workers that hold
            fractional CPUs (otherwise Ray Data may find no whole CPU free and wait forever).
        allow_symlinks_outside: Accept images whose symlinks lead out of ``images_dir`` (``data.*`` config key).

    Returns:
        A lazy ``ray.data.Dataset``.
    """
    if not samples:
        raise ValueError("build_ray_dataset: no samples (did validation exclude every record?)")
    if num_blocks is None:
        cpus = int(ray.cluster_resources().get("CPU", 2)) if ray.is_initialized() else 2
        num_blocks = max(1, min(len(samples), 4 * max(cpus, 1)))
    items = [_to_item(s) for s in samples]
    ds = ray.data.from_items(items, override_num_blocks=num_blocks)
    kwargs = {"images_dir": str(images_dir), "size": size, "max_pixels": max_pixels, "on_error": on_error,
              "allow_symlinks_outside": allow_symlinks_outside}
    return ds.flat_map(_decode_item, fn_kwargs=kwargs, num_cpus=num_cpus)
