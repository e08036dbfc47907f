"""Ray Data source: validated samples -> a ``ray.data.Dataset`` of decoded images, masks and texts.

The only module of :mod:`sa2va_ray.data` that imports Ray. The driver only ships light items (indices, names,
texts, polygons); decoding and rasterising run through :func:`sa2va_ray.data.decode.decode_rows`, the same function
plain loops use, in one of two places:

* :func:`build_ray_dataset` decodes in Ray tasks (``map_batches`` over blocks of items): CPUs decode while the
  consumers (GPU actors, training workers) do something else;
* :func:`build_record_dataset` + :class:`DecodeThen` decode inside the consumer itself: no decode tasks, and no
  images or masks through the object store. On CPU-only clusters, where the consumer's own cores would be the ones
  decoding anyway, this is the faster choice (``docs/scaling.md``, measured by ``benchmarks/``).
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import ray

from sa2va_ray.data.annotations import DEFAULT_MAX_PIXELS, Sample
from sa2va_ray.data.decode import Size, decode_rows, decode_sample, error_rows

__all__ = ["DecodeThen", "build_ray_dataset", "build_record_dataset", "decode_items", "decode_rows",
           "decode_sample", "rows_to_batch"]

logger = logging.getLogger(__name__)

OnError = Literal["skip", "keep", "raise"]
ROW_COLUMNS = ("sample_id", "record_index", "text_index", "image_name", "text", "image", "mask", "orig_height",
               "orig_width", "error")
"""Columns of a decoded row (:func:`sa2va_ray.data.decode.decode_rows`)."""


def _to_item(sample: Sample) -> dict[str, Any]:
    return {
        "record_index": sample.index,
        "image": sample.image,
        "texts": json.dumps(sample.texts),
        "masks": pickle.dumps(sample.masks, protocol=5),  # 15x faster than JSON for thousands of polygon points
    }


def _from_item(item: dict[str, Any]) -> Sample:
    return Sample(
        index=int(item["record_index"]),
        image=str(item["image"]),
        texts=json.loads(item["texts"]),
        masks=pickle.loads(item["masks"]),  # written by this driver (_to_item), never read from elsewhere
    )


def _decode_item(
    item: dict[str, Any], images_dir: str, size: Size, max_pixels: int, on_error: OnError,
    allow_symlinks_outside: bool = False,
) -> list[dict[str, Any]]:
    """One record item -> one decoded row per text (or its error rows, or none)."""
    sample = _from_item(item)
    try:
        return decode_rows(sample, images_dir, size, max_pixels, allow_symlinks_outside)
    except Exception as e:
        if on_error == "raise":
            raise
        message = f"record {sample.index} ({sample.image}): cannot decode: {type(e).__name__}: {e}"
        logger.warning("%s%s", message, "; skipped" if on_error == "skip" else "")
        return [] if on_error == "skip" else error_rows(sample, message, size)


def _batch_items(batch: dict[str, np.ndarray]) -> Iterable[dict[str, Any]]:
    """The items of a numpy batch of :func:`build_record_dataset` rows, one dict each."""
    for i in range(len(batch["record_index"])):
        yield {k: batch[k][i] for k in ("record_index", "image", "texts", "masks")}


def decode_items(
    items: Iterable[dict[str, Any]], images_dir: str | Path, size: Size = None, max_pixels: int = DEFAULT_MAX_PIXELS,
    on_error: OnError = "keep", allow_symlinks_outside: bool = False,
) -> list[dict[str, Any]]:
    """Decoded rows of record items (rows of :func:`build_record_dataset`), in order; arguments as
    :func:`build_ray_dataset`."""
    return [row for item in items
            for row in _decode_item(item, str(images_dir), size, max_pixels, on_error, allow_symlinks_outside)]


def rows_to_batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Decoded rows -> a numpy batch (one array per column). Images and masks stay one array per row (an object
    array: sizes may differ, and nothing is copied) unless every row has the same shape, then they are stacked
    (B, H, W, 3) / (B, H, W), the form Ray Data keeps as a fixed-shape tensor column."""
    batch: dict[str, np.ndarray] = {}
    for col in ROW_COLUMNS:
        values = [r[col] for r in rows]
        if col in ("image", "mask"):
            if values and all(v.shape == values[0].shape for v in values):
                batch[col] = np.stack(values)
            else:
                batch[col] = np.empty(len(values), dtype=object)
                batch[col][:] = values
        else:
            batch[col] = np.asarray(values)
    return batch


def _decode_batch(batch: dict[str, np.ndarray], **kwargs) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` step: a batch of record items -> a batch of decoded rows (one per text)."""
    rows = decode_items(_batch_items(batch), **kwargs)
    return rows_to_batch(rows)


def build_record_dataset(samples: list[Sample], num_blocks: int | None = None) -> ray.data.Dataset:
    """One light row per record, nothing decoded: ``record_index``, ``image`` (the name), ``texts`` (JSON) and
    ``masks`` (the polygons, pickled). Map it with :class:`DecodeThen` to decode in the consumer.

    Args:
        samples: Validated samples.
        num_blocks: Number of blocks; default one per record up to ``4 x CPUs``.
    """
    if not samples:
        raise ValueError("build_record_dataset: no samples (did validation exclude every record?)")
    if num_blocks is None:
        cpus = int(ray.cluster_resources().get("CPU", 2)) if ray.is_initialized() else 2
        num_blocks = 4 * max(cpus, 1)
    return ray.data.from_items([_to_item(s) for s in samples], override_num_blocks=max(1, min(len(samples),
                                                                                              num_blocks)))


class DecodeThen:
    """Ray Data callable class: decodes a batch of record items in the consumer, then calls ``fn`` on the rows.

    ``map_batches(DecodeThen, fn_constructor_kwargs={"fn": Predictor, "fn_kwargs": {...}, "images_dir": ...})``
    runs ``Predictor(**fn_kwargs)`` once per actor and ``predictor(batch)`` on decoded rows, exactly the batches
    (numpy format, columns :data:`ROW_COLUMNS`) it would get from :func:`build_ray_dataset` — at most
    ``rows_per_call`` rows each (a record with several texts gives several rows).

    Args:
        fn: The consumer's class (or a function, called as is).
        fn_kwargs: Its constructor's arguments.
        images_dir, size, max_pixels, on_error, allow_symlinks_outside: As :func:`build_ray_dataset`; the default
            ``on_error="keep"`` hands failed records to ``fn`` as rows with their ``error``.
        rows_per_call: Largest batch ``fn`` gets (None: every row of the incoming batch at once).
    """

    def __init__(
        self, fn: Callable | type, fn_kwargs: dict[str, Any] | None = None, *, images_dir: str | Path,
        size: Size = None, max_pixels: int = DEFAULT_MAX_PIXELS, on_error: OnError = "keep",
        allow_symlinks_outside: bool = False, rows_per_call: int | None = None,
    ):
        self.fn = fn(**(fn_kwargs or {})) if isinstance(fn, type) else fn
        self.decode = {"images_dir": str(images_dir), "size": size, "max_pixels": max_pixels, "on_error": on_error,
                       "allow_symlinks_outside": allow_symlinks_outside}
        self.rows_per_call = rows_per_call

    def __call__(self, batch: dict[str, np.ndarray]):
        import pandas as pd

        rows = decode_items(_batch_items(batch), **self.decode)
        step = self.rows_per_call or max(1, len(rows))
        outs = [self.fn(rows_to_batch(rows[i:i + step])) for i in range(0, len(rows), step)]
        if not outs:
            return pd.DataFrame()
        if len(outs) == 1:
            return outs[0]
        if isinstance(outs[0], pd.DataFrame):
            return pd.concat(outs, ignore_index=True)
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


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
    ds = build_record_dataset(samples, num_blocks)
    kwargs = {"images_dir": str(images_dir), "size": size, "max_pixels": max_pixels, "on_error": on_error,
              "allow_symlinks_outside": allow_symlinks_outside}
    # One task per block of items, each returning one block of rows in numpy form (batch_size=None): no per-row
    # dicts for Ray Data to convert, and images of one size arrive stacked, as one tensor column.
    return ds.map_batches(_decode_batch, batch_size=None, batch_format="numpy", fn_kwargs=kwargs, num_cpus=num_cpus)
