"""A COCO instances file (as pycocotools and ARCADE write it) into :class:`~.common.SourceImage` items.

``images`` (``id, file_name, width, height``), ``annotations`` (``id, image_id, category_id, segmentation,
iscrowd``) and ``categories`` (``id, name``). A segmentation is either

* polygons, a list of flat ``[x1, y1, ...]`` lists: taken as they are (their union is the object, as in COCO);
  a polygon with fewer than 3 points or zero area is dropped and named, the others are kept;
* RLE, ``{"size": [h, w], "counts": ...}`` with ``counts`` a string (compressed, as ``pycocotools.mask.encode``
  writes) or a list of run lengths (uncompressed, as crowd annotations have): decoded with ``pycocotools.mask``
  and traced to polygons (:mod:`~.trace`) whose rasterisation is checked against the RLE (IoU per object).

Texts: the category name, ``--category-text ID_OR_NAME=TEXT``, or ``--merge-categories TEXT`` for all. The image's
``width``/``height`` (and an RLE's ``size``) are checked against the real image like LabelMe's recorded size.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from sa2va_ray.data.annotations import is_degenerate_polygon
from sa2va_ray.data.convert.common import (
    ConvertError,
    ConvertOptions,
    SourceImage,
    SourceObject,
    image_size,
    safe_relative,
    scale_points,
    size_factor,
)
from sa2va_ray.data.convert.report import ConversionReport
from sa2va_ray.data.convert.trace import trace_mask


def decode_rle(seg: dict) -> np.ndarray:
    """Decodes a COCO RLE (compressed ``counts`` string or uncompressed list) to an ``(h, w)`` boolean mask.

    Raises:
        ValueError: If the RLE is malformed.
    """
    from pycocotools import mask as mask_utils

    size, counts = seg.get("size"), seg.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f"RLE 'size' must be [height, width], got {size!r}")
    h, w = size
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != h * w:
            raise ValueError(f"uncompressed RLE counts must be non-negative run lengths summing to {h}x{w} = {h * w}")
        rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    elif isinstance(counts, str):
        rle = {"size": [h, w], "counts": counts.encode("ascii")}
    else:
        raise ValueError(f"RLE 'counts' must be a string or a list, got {type(counts).__name__}")
    with warnings.catch_warnings():  # pycocotools' __array__ predates NumPy 2's copy keyword (a DeprecationWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def _polygons(seg: list, src: str, item: str, report: ConversionReport) -> list[list[float]]:
    """The usable polygons of a polygon segmentation; each bad one is reported."""
    out = []
    for k, poly in enumerate(seg):
        what = f"{item} polygon {k}"
        if not isinstance(poly, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in poly
        ):
            report.drop(src, what, "bad_shape", "not a flat list of finite numbers", "fix the segmentation")
        elif len(poly) % 2 or len(poly) < 6:
            report.drop(src, what, "bad_shape", f"{len(poly)} value(s); a polygon needs an even number, at least 6 "
                        "(3 points)", "fix or delete the polygon")
        elif is_degenerate_polygon(poly):
            report.drop(src, what, "bad_shape", "zero area (its points lie on one line)", "fix or delete the polygon")
        else:
            out.append([float(v) for v in poly])
    return out


def _object(ann: dict, cat: dict, src: str, item: str, image: str, sizes: tuple[tuple[int, int], tuple[int, int]],
            scale: tuple[float, float], opts: ConvertOptions, report: ConversionReport,
            merge_text: str | None) -> SourceObject | None:
    """One annotation as an object (polygons as they are, RLE traced), or None (reported).

    ``sizes`` is the image's (recorded, real) size: an RLE of the recorded size takes the image's ``scale``,
    another size is compared with the real one.
    """
    seg = ann.get("segmentation")
    iou = None
    if isinstance(seg, list):
        if not seg:
            report.drop(src, item, "empty_segmentation", "'segmentation' is an empty list", "delete the annotation")
            return None
        polygons = [scale_points(p, *scale) for p in _polygons(seg, src, item, report)]
        if not polygons:
            return None  # each polygon was reported
    elif isinstance(seg, dict):
        try:
            mask = decode_rle(seg)
        except Exception as e:  # noqa: BLE001 -- a malformed RLE is one drop, never a crash
            report.drop(src, item, "bad_segmentation", f"cannot decode the RLE: {e}", "re-encode it with "
                        "pycocotools.mask.encode")
            return None
        if not mask.any():
            report.drop(src, item, "empty_segmentation", "the RLE has no foreground pixel", "delete the annotation")
            return None
        h, w = mask.shape
        if (w, h) != sizes[0]:
            factor = size_factor(src, (w, h), sizes[1], f"{image} (the RLE 'size' of {item})", opts, report, 1)
            if factor is None:
                return None
            scale = factor
        traced = trace_mask(mask, opts.simplify)
        polygons, iou = [scale_points(p, *scale) for p in traced.polygons], traced.iou
    else:
        report.drop(src, item, "bad_segmentation", f"'segmentation' is a {type(seg).__name__}, neither polygons "
                    "nor RLE", "fix the annotation")
        return None
    cid, name = ann.get("category_id"), str(cat.get("name", ""))
    default = merge_text or (None if opts.text_map else name or None)
    label = f"{cid}" + (f" ({name})" if name else "")
    return SourceObject(item=item, keys=() if merge_text else (str(cid), name), label=label, default_text=default,
                        polygons=polygons, iou=iou)


def read_coco(input_path: Path, images_dir: Path | None, opts: ConvertOptions, report: ConversionReport,
              merge_text: str | None = None) -> list[SourceImage]:
    """Reads a COCO instances file.

    Args:
        input_path: The COCO JSON file.
        images_dir: Where ``file_name`` is relative to (default: the JSON file's folder).
        opts: Conversion options (``text_map``: category id or name -> text).
        report: Where drops and warnings go.
        merge_text: Every category becomes this one text (``--merge-categories``).

    Raises:
        ConvertError: When the file is missing, not JSON, or not a COCO instances file.
    """
    try:
        data = json.loads(input_path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConvertError(f"--input {input_path} does not exist; point it at the COCO .json file") from e
    except json.JSONDecodeError as e:
        raise ConvertError(f"{input_path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                           "fix or re-export the file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConvertError(f"cannot read {input_path}: {type(e).__name__}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise ConvertError(f"{input_path} is not a COCO instances file (needs 'images' and 'annotations' lists)")
    report.inputs = 1
    src = input_path.name
    images_dir = images_dir or input_path.parent
    cats = {c.get("id"): c for c in data.get("categories") or [] if isinstance(c, dict)}
    by_image: dict[Any, list[tuple[int, dict]]] = defaultdict(list)
    image_ids = {im.get("id") for im in data["images"] if isinstance(im, dict)}
    for i, ann in enumerate(data["annotations"]):
        item = f"annotation {ann.get('id', i) if isinstance(ann, dict) else i}"
        if not isinstance(ann, dict):
            report.drop(src, item, "bad_segmentation", "an annotation must be an object", "fix the file")
        elif ann.get("image_id") not in image_ids:
            report.drop(src, item, "unknown_image", f"image_id {ann.get('image_id')!r} is not in 'images'",
                        "add the image to 'images' or delete the annotation")
        elif ann.get("category_id") not in cats:
            report.drop(src, item, "unknown_category", f"category_id {ann.get('category_id')!r} is not in "
                        "'categories'", "add the category or delete the annotation")
        else:
            by_image[ann["image_id"]].append((i, ann))
    out, files = [], {}
    for im in data["images"]:
        if not isinstance(im, dict):
            continue
        anns = by_image.pop(im.get("id"), [])
        n, file_name = len(anns), im.get("file_name")
        rel = safe_relative(file_name) if isinstance(file_name, str) else None
        where = f"image {im.get('id')} ({file_name!r})"
        if not anns:
            continue  # an image without annotations (or a repeated id, whose annotations went to the first)
        if rel is None:
            report.drop(src, f"{where}: all {n} annotation(s)", "missing_image", "'file_name' is empty, absolute "
                        "or contains '..'", "give a file name relative to --images", count=n)
            continue
        if rel in files:
            report.drop(src, f"{where}: all {n} annotation(s)", "duplicate_image", f"{rel} is also image "
                        f"{files[rel]}", "list each image once in 'images'", count=n)
            continue
        files[rel] = im.get("id")
        candidates = [images_dir / rel, images_dir / Path(rel).name]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            report.drop(src, f"{where}: all {n} annotation(s)", "missing_image", f"{rel} not found in {images_dir}",
                        "put the image there or point --images at its folder", count=n)
            continue
        try:
            real = image_size(path)
        except Exception as e:  # noqa: BLE001
            report.drop(src, f"{where}: all {n} annotation(s)", "unreadable_image", f"cannot open {path}: "
                        f"{type(e).__name__}: {e}", "replace the image with a readable one", count=n)
            continue
        recorded = (im.get("width"), im.get("height"))
        if not all(isinstance(v, int) and v > 0 for v in recorded):
            report.warn(src, f"{where} has no valid width/height; the real size {real[0]}x{real[1]} is assumed")
            recorded = real
        scale = size_factor(src, recorded, real, rel, opts, report, n)
        if scale is None:
            continue
        image = SourceImage(source=src, name=rel, path=path)
        for i, ann in anns:
            item = f"annotation {ann.get('id', i)} of {where}"
            try:
                obj = _object(ann, cats[ann["category_id"]], src, item, rel, (recorded, real), scale, opts, report,
                              merge_text)
            except Exception as e:  # noqa: BLE001 -- one drop, never a traceback
                report.drop(src, item, "error", f"{type(e).__name__}: {e}", "check the annotation")
                continue
            if obj is not None:
                image.objects.append(obj)
        out.append(image)
    return out
