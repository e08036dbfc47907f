"""LabelMe JSON files (as LabelMe writes them) into :class:`~.common.SourceImage` items.

A file holds ``version``, ``flags``, ``shapes`` (``{label, points, group_id, shape_type, flags, description}``),
``imagePath`` (relative to the JSON file), ``imageData`` (the image, base64; ignored -- never decoded),
``imageHeight`` and ``imageWidth``.

* Shapes: ``polygon`` (at least 3 points, non-zero area), ``rectangle`` (two corners -> 4 points), ``circle``
  (centre and a point on the circle -> a polygon whose points lie on the circle, at most 0.1 px inside it),
  ``mask`` (LabelMe's AI masks: a base64 PNG of the box between the two points, traced to polygons with the IoU
  check of :mod:`~.trace`). ``line``, ``linestrip``, ``point``, ``points`` have no area: dropped and named.
* Texts: the label, or ``--label-map LABEL=TEXT``; all shapes of one text in an image form one mask (union).
* The image: ``--images/imagePath``, then ``--images/<file name of imagePath>``, then ``imagePath`` next to the
  JSON file. Its real (displayed) size is compared with ``imageWidth`` x ``imageHeight``: a mismatch is rescaled
  with a warning naming the file and the factor (800x800 recorded for a 512x512 image: 0.64) or, with
  ``--on-size-mismatch error``, the file is refused.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

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
from sa2va_ray.data.convert.trace import Traced, trace_mask

CIRCLE_SAGITTA = 0.1
"""Largest distance (px) between a circle and the chords of its polygon."""
AREA_SHAPES = ("polygon", "rectangle", "circle", "mask")


def circle_polygon(cx: float, cy: float, px: float, py: float) -> list[float]:
    """A polygon for LabelMe's circle (centre, point on the circle); its chords stay within 0.1 px of the circle."""
    r = math.hypot(px - cx, py - cy)
    n = max(16, math.ceil(math.pi / math.acos(max(-1.0, 1 - CIRCLE_SAGITTA / r)))) if r > 0 else 0
    a = math.atan2(py - cy, px - cx) + np.arange(n) * (2 * math.pi / n)  # starts at the drawn point
    return np.column_stack([cx + r * np.cos(a), cy + r * np.sin(a)]).reshape(-1).tolist()


def mask_shape(shape: dict, simplify: float = 0.0) -> Traced:
    """Traces a LabelMe ``mask`` shape: its PNG covers the pixels ``[y1, y2] x [x1, x2]`` of its two points.

    Raises:
        ValueError: If the points or the PNG are unusable.
    """
    points = shape.get("points")
    if not (isinstance(points, list) and len(points) == 2 and all(isinstance(p, list) and len(p) == 2 and all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in p) for p in points)):
        raise ValueError("a mask shape needs two [x, y] points (its box)")
    try:
        with Image.open(io.BytesIO(base64.b64decode(shape.get("mask") or "", validate=True))) as im:
            crop = np.asarray(im.convert("L")) > 0  # (h, w)
    except (binascii.Error, OSError, ValueError, TypeError) as e:
        raise ValueError(f"its 'mask' is not a base64 PNG ({type(e).__name__})") from e
    (x1, y1), _ = (np.asarray(points, dtype=np.float64)).astype(int)  # as LabelMe places it: int() of the corners
    traced = trace_mask(crop, simplify)
    traced.polygons = [(np.asarray(p).reshape(-1, 2) + (x1, y1)).reshape(-1).tolist() for p in traced.polygons]
    return traced


def shape_polygon(shape: Any) -> tuple[list[float] | None, str, str]:
    """Converts one LabelMe shape to a flat polygon.

    Returns:
        ``(polygon, reason, message)``: the polygon, or None with the drop reason and message.
    """
    if not isinstance(shape, dict):
        return None, "bad_shape", f"a shape must be an object, got {type(shape).__name__}"
    kind = shape.get("shape_type") or "polygon"  # LabelMe 3 wrote null for polygons
    points = shape.get("points")
    if kind not in AREA_SHAPES:
        return None, "unsupported_shape", f"shape_type {kind!r} has no area (only {', '.join(AREA_SHAPES)} do)"
    if not isinstance(points, list) or not all(isinstance(p, list) and len(p) == 2 for p in points):
        return None, "bad_shape", "'points' is not a list of [x, y] pairs"
    flat = [v for p in points for v in p]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in flat):
        return None, "bad_shape", "'points' holds non-numeric or non-finite coordinates"
    if kind == "rectangle":
        if len(points) != 2:
            return None, "bad_shape", f"rectangle with {len(points)} point(s); LabelMe writes 2 corners"
        (x1, y1), (x2, y2) = points
        flat = [x1, y1, x2, y1, x2, y2, x1, y2]
    elif kind == "circle":
        if len(points) != 2:
            return None, "bad_shape", f"circle with {len(points)} point(s); LabelMe writes the centre and one more"
        if points[0] == points[1]:
            return None, "bad_shape", "circle of radius 0"
        return circle_polygon(*points[0], *points[1]), "", ""
    elif len(points) < 3:
        return None, "bad_shape", f"polygon with {len(points)} point(s); a polygon needs at least 3"
    if is_degenerate_polygon(flat):
        return None, "bad_shape", f"{kind} has zero area (its {len(flat) // 2} points lie on one line)"
    return [float(v) for v in flat], "", ""


def find_image(image_path: str, json_file: Path, images_dir: Path) -> Path | None:
    """The image of a LabelMe file (see the module docstring for the order), or None."""
    rel = safe_relative(image_path)
    base = image_path.replace("\\", "/").rsplit("/", 1)[-1]
    candidates = [images_dir / rel] if rel else []
    candidates += [images_dir / base, json_file.parent / image_path.replace("\\", "/")]
    return next((c for c in candidates if base and c.is_file()), None)


def _recorded_size(data: dict) -> tuple[int, int] | None:
    w, h = data.get("imageWidth"), data.get("imageHeight")
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (w, h))
    return (w, h) if ok else None


def read_labelme_file(path: Path, images_dir: Path, opts: ConvertOptions, report: ConversionReport,
                      names: dict[str, str]) -> SourceImage | None:
    """Reads one LabelMe file; every problem is reported, None when nothing of it can be used."""
    src = path.name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        report.drop(src, "whole file", "unreadable_json", f"not valid JSON ({e.msg} at line {e.lineno} column "
                    f"{e.colno})", "re-save it in LabelMe or remove it from the folder")
        return None
    except (OSError, UnicodeDecodeError) as e:
        report.drop(src, "whole file", "unreadable_json", f"cannot read it ({type(e).__name__}: {e})",
                    "check the file's permissions and encoding (UTF-8)")
        return None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        report.drop(src, "whole file", "not_labelme", "no 'shapes' list: not a LabelMe file",
                    "remove it from the LabelMe folder")
        return None
    shapes = data["shapes"]
    image_path = data.get("imagePath")
    if not isinstance(image_path, str) or not image_path.strip():
        report.drop(src, f"all {len(shapes)} shape(s)", "missing_image", "'imagePath' is empty",
                    "open the file in LabelMe with its image and save it again", count=len(shapes))
        return None
    image = find_image(image_path, path, images_dir)
    if image is None:
        report.drop(src, f"all {len(shapes)} shape(s)", "missing_image",
                    f"image {image_path!r} (imagePath) not found in {images_dir} nor next to the JSON file",
                    "put the image there or point --images at its folder", count=len(shapes))
        return None
    try:
        real = image_size(image)
    except Exception as e:  # noqa: BLE001 -- any decoder error: unreadable, never a crash
        report.drop(src, f"all {len(shapes)} shape(s)", "unreadable_image", f"cannot open {image}: "
                    f"{type(e).__name__}: {e}", "replace the image with a readable one", count=len(shapes))
        return None
    if image.name in names:
        report.drop(src, f"all {len(shapes)} shape(s)", "duplicate_image",
                    f"image name {image.name!r} already used by {names[image.name]}",
                    "keep one LabelMe file per image (rename one image if they differ)", count=len(shapes))
        return None
    names[image.name] = src
    recorded = _recorded_size(data)
    if recorded is None:
        report.warn(src, f"no valid imageWidth/imageHeight; the real size {real[0]}x{real[1]} of {image.name} "
                         "is assumed")
        recorded = real
    factor = size_factor(src, recorded, real, image.name, opts, report, len(shapes))
    if factor is None:
        return None
    out = SourceImage(source=src, name=image.name, path=image)
    for i, shape in enumerate(shapes):
        label = shape.get("label") if isinstance(shape, dict) else None
        kind = (shape.get("shape_type") or "polygon") if isinstance(shape, dict) else "?"
        item = f"shape {i} ({kind} {label!r})"
        iou = None
        if kind == "mask":
            try:
                traced = mask_shape(shape, opts.simplify)
            except ValueError as e:
                report.drop(src, item, "bad_shape", str(e), "redraw or delete it in LabelMe")
                continue
            if not traced.polygons:
                report.drop(src, item, "bad_shape", "the mask is empty", "delete it in LabelMe")
                continue
            polys, iou = traced.polygons, traced.iou
        else:
            poly, reason, message = shape_polygon(shape)
            polys = [poly] if poly is not None else []
        if not polys:
            fix = ("draw it as a polygon, rectangle, circle or mask" if reason == "unsupported_shape"
                   else "redraw or delete it in LabelMe")
            report.drop(src, item, reason, message, fix)
            continue
        if not isinstance(label, str) or not label.strip():
            report.drop(src, item, "bad_shape", "the shape has no label", "give it a label in LabelMe")
            continue
        label = label.strip()
        out.objects.append(SourceObject(item=item, keys=(label,), label=label,
                                        default_text=None if opts.text_map else label,
                                        polygons=[scale_points(p, *factor) for p in polys], iou=iou))
    return out


def read_labelme(input_path: Path, images_dir: Path | None, opts: ConvertOptions,
                 report: ConversionReport) -> list[SourceImage]:
    """Reads a folder of LabelMe files (or one file).

    Args:
        input_path: The folder LabelMe saved to, or one JSON file.
        images_dir: Where the images are (default: the folder of the JSON files).
        opts: Conversion options.
        report: Where drops and warnings go.

    Raises:
        ConvertError: When the input does not exist or holds no JSON file.
    """
    if input_path.is_file():
        files = [input_path]
    elif input_path.is_dir():
        files = sorted(input_path.glob("*.json"))
    else:
        raise ConvertError(f"--input {input_path} does not exist; point it at the folder of LabelMe .json files")
    if not files:
        raise ConvertError(f"no .json files in {input_path}; point --input at the folder LabelMe saved to")
    images_dir = images_dir or (input_path if input_path.is_dir() else input_path.parent)
    names: dict[str, str] = {}
    images = []
    for f in files:
        report.inputs += 1
        try:
            im = read_labelme_file(f, images_dir, opts, report, names)
        except Exception as e:  # noqa: BLE001 -- a file we did not foresee is one drop, never a traceback
            report.drop(f.name, "whole file", "error", f"{type(e).__name__}: {e}", "check the file")
            continue
        if im is not None:
            images.append(im)
    return images
