"""Schema, loader and rasteriser for the official Sa2VA ``annotations.json`` format.

The file is a JSON list of records ``{"image": "<file name>", "mask": [...], "text": ["blood vessel", ...]}``.
A polygon is COCO style, ``[x1, y1, x2, y2, ...]`` in pixel coordinates of the image.

Mask nesting and the mask/text policy (applied everywhere: validation, training, evaluation):

* **depth 1** -- ``mask`` is one flat polygon: one mask made of that polygon. It needs exactly one text.
* **depth 2** -- ``mask`` is a list of polygons:
  with one text, the mask of that text is the **union** of all polygons;
  with as many texts as polygons (more than one), polygon ``i`` is the mask of text ``i``.
* **depth 3** -- ``mask`` is a list of masks, each a list of polygons: mask ``i`` belongs to text ``i``;
  a single text with several masks gets the **union** of all of them.
* Any other disagreement between the number of masks and texts is the problem ``count_mismatch``
  (the record is reported and excluded; nothing is guessed).

Texts must be a JSON list of strings; an empty list, a missing ``text`` key or a blank string is ``empty_text``.
Records that are not objects, lack ``image``/``mask`` or have values of the wrong type are ``invalid_record``.
Coordinates must be finite numbers (``bad_coordinates``); a polygon needs an even number of values, at least
three points and a non-zero area -- points on one line are ``bad_polygon``. A key repeated within a record is
``duplicate_key`` (plain JSON parsing would keep the last value silently). Image-dependent and model-dependent
checks live in :mod:`sa2va_ray.data.validate`; images are opened through :mod:`sa2va_ray.data.images`.

Rasterising: polygons are filled at the image's own size with the COCO pixel-centre convention (see
:func:`rasterize_polygons`); the mask of a text is the union of its polygons. Points slightly outside the image
are fine (the fill is clipped to the canvas).
"""

from __future__ import annotations

import gc
import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sa2va_ray.data.images import (  # noqa: F401 -- re-exported: the image helpers used to live here
    DEFAULT_MAX_PIXELS,
    ImageTooLargeError,
    UnsafeImagePathError,
    load_image,
    open_image_header,
    to_rgb,
)

Polygon = list[float]
"""A flat COCO polygon ``[x1, y1, x2, y2, ...]``."""

PROBLEM_CODES = (
    "invalid_record",
    "duplicate_key",
    "unsafe_path",
    "missing_image",
    "unreadable_image",
    "image_too_large",
    "bad_polygon",
    "bad_coordinates",
    "out_of_bounds",
    "empty_mask",
    "empty_text",
    "reserved_token",
    "too_long",
    "count_mismatch",
    "duplicate_record",
    "duplicate_frame",
)


class AnnotationFileError(ValueError):
    """The annotations file as a whole cannot be used (unreadable, not JSON, not a list)."""


@dataclass(frozen=True)
class Problem:
    """One problem of one record.

    Attributes:
        index: Position of the record in the annotations list.
        image: The record's image file name ("" when the record has none).
        problem: One of :data:`PROBLEM_CODES`.
        message: Human-readable, precise description.
    """

    index: int
    image: str
    problem: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        """Returns the JSON form ``{"index", "image", "problem", "message"}``."""
        return {"index": self.index, "image": self.image, "problem": self.problem, "message": self.message}


@dataclass
class Sample:
    """A parsed record after applying the mask/text policy: ``masks[i]`` belongs to ``texts[i]``.

    Attributes:
        index: Position of the record in the annotations list (stable record id).
        image: Image file name, relative to the images directory.
        texts: One referring expression per mask.
        masks: ``masks[i]`` is the list of polygons whose union is the mask of ``texts[i]``.
        record: The raw record, unchanged (for writing splits).
    """

    index: int
    image: str
    texts: list[str]
    masks: list[list[Polygon]]
    record: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def sample_id(self, text_index: int) -> str:
        """Returns the row id ``"<record index>:<text index>"`` used in every table."""
        return f"{self.index}:{text_index}"


Record = Sample


# ----------------------------------------------------------------------------------------------------------------
# Loading and parsing
# ----------------------------------------------------------------------------------------------------------------


class JsonObjectWithDuplicates(dict):
    """A JSON object in which a key appeared more than once; ``json`` alone would silently keep the last value.

    Attributes:
        duplicate_keys: The repeated keys, in order of first repetition.
    """

    duplicate_keys: tuple[str, ...] = ()


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` of the annotations loader: a plain dict, or one that remembers repeated keys."""
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    repeated = [k for k, _ in pairs if k in seen or seen.add(k)]
    out = JsonObjectWithDuplicates(obj)
    out.duplicate_keys = tuple(dict.fromkeys(repeated))
    return out


def load_annotation_list(path: str | Path, allow_empty: bool = False) -> list[Any]:
    """Reads ``annotations.json`` and returns its list of raw records.

    A record with a repeated key comes back as a :class:`JsonObjectWithDuplicates` (problem ``duplicate_key`` in
    :func:`parse_record`) instead of silently keeping the last value.

    Args:
        path: Path of the JSON file.
        allow_empty: Accept an empty list (otherwise it is an error: there is nothing to use).

    Returns:
        The raw records (any JSON values; they are checked by :func:`parse_record`).

    Raises:
        AnnotationFileError: If the file is missing, unreadable, not JSON, not a JSON list, or an empty list;
            the message is one line naming the file and the fix.
    """
    path = Path(path)
    fix = "point data.annotations (or --annotations) to an annotations.json in the official format"
    gc_was_enabled = gc.isenabled()
    gc.disable()  # JSON builds no cycles; collections during a 100k-record parse made it 5x slower (superlinear)
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f, object_pairs_hook=_object_pairs)
    except FileNotFoundError as e:
        raise AnnotationFileError(f"annotations file not found: {path}; {fix}") from e
    except IsADirectoryError as e:
        raise AnnotationFileError(f"annotations path {path} is a directory; {fix}") from e
    except UnicodeDecodeError as e:
        raise AnnotationFileError(f"annotations file {path} is not UTF-8 text ({e.reason}); {fix}") from e
    except json.JSONDecodeError as e:
        raise AnnotationFileError(
            f"annotations file {path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
            "fix the file or regenerate it"
        ) from e
    except (OSError, RecursionError) as e:
        raise AnnotationFileError(f"cannot read annotations file {path}: {type(e).__name__}: {e}") from e
    finally:
        if gc_was_enabled:
            gc.enable()
    if not isinstance(data, list):
        raise AnnotationFileError(
            f"annotations file {path} holds a JSON {type(data).__name__}, not a list of records "
            '[{"image": ..., "mask": ..., "text": [...]}, ...]'
        )
    if not data and not allow_empty:
        raise AnnotationFileError(
            f"annotations file {path} is an empty list: there are no records to use; "
            'add records [{"image": ..., "mask": ..., "text": [...]}, ...]'
        )
    return data


def _depth(value: Any) -> int:
    """Nesting depth of lists: a number is 0, ``[1, 2]`` is 1, ``[[1, 2]]`` is 2 (``[]`` counts as 1)."""
    if not isinstance(value, list):
        return 0
    if not value:
        return 1
    return 1 + _depth(value[0])


def _check_polygon(poly: Any, where: str) -> list[tuple[str, str]]:
    """Returns ``(code, message)`` problems of one flat polygon."""
    if not isinstance(poly, list):
        return [("invalid_record", f"{where} is not a list of numbers")]
    out = []
    types = set(map(type, poly))
    if types <= {int, float}:  # fast path: plain JSON numbers
        finite = np.isfinite(np.asarray(poly, dtype=np.float64))
        bad = [] if finite.all() else [poly[int(np.argmin(finite))]]
        n_bad = int((~finite).sum())
    elif list in types:
        return [("invalid_record", f"{where} is not a flat list of numbers")]
    else:
        bad = [v for v in poly if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v)]
        n_bad = len(bad)
    if bad:
        out.append(("bad_coordinates", f"{where} has {n_bad} non-finite or non-numeric value(s), e.g. {bad[0]!r}"))
    if len(poly) % 2:
        out.append(("bad_polygon", f"{where} has an odd number of values ({len(poly)})"))
    elif len(poly) < 6:
        out.append(("bad_polygon", f"{where} has {len(poly) // 2} point(s); a polygon needs at least 3"))
    elif not bad and is_degenerate_polygon(poly):
        out.append(("bad_polygon", f"{where} has zero area: its {len(poly) // 2} points lie on one line"))
    return out


def is_degenerate_polygon(poly: Polygon) -> bool:
    """True when every point of a flat polygon lies on one line (or on one point): it encloses no area.

    Tested on the spread of the points, not on the signed area, so a self-crossing "bow tie" whose signed area
    cancels out is not degenerate. Uses ``det(D^T D) <= 1e-12 * trace(D^T D)^2`` for the centred points ``D``
    (the determinant is the sum of squared cross products of all point pairs).
    """
    d = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    d = d - d.mean(axis=0)  # (P, 2)
    c = d.T @ d  # (2, 2) scatter matrix
    trace = c[0, 0] + c[1, 1]
    return bool(c[0, 0] * c[1, 1] - c[0, 1] * c[1, 0] <= 1e-12 * trace * trace)


def _split_masks(mask: Any) -> tuple[list[list[Any]] | None, int, str]:
    """Brings a mask value to the depth-3 form ``[[poly, ...], ...]``; returns (masks, depth, error)."""
    depth = _depth(mask)
    if depth == 1:
        return [[mask]], 1, ""
    if depth == 2:
        if any(_depth(p) != 1 for p in mask):
            return None, depth, "mask mixes flat polygons and nested lists"
        return [[p] for p in mask], 2, ""
    if depth == 3:
        if any(m != [] and (_depth(m) != 2 or any(_depth(p) != 1 for p in m)) for m in mask):
            return None, depth, "mask mixes nesting depths (expected a list of masks, each a list of polygons)"
        return [list(m) for m in mask], 3, ""
    return None, depth, f"mask must be a polygon, a list of polygons or a list of masks (nesting depth {depth})"


def _apply_policy(masks: list[list[Any]], depth: int, n_texts: int) -> tuple[list[list[Any]] | None, str]:
    """Pairs masks with texts following the module policy; returns (masks per text, mismatch message)."""
    n = len(masks)
    if n == n_texts:
        return masks, ""
    if n_texts == 1 and depth in (2, 3):
        return [[p for m in masks for p in m]], ""  # one text: union of everything
    unit = {1: "polygon", 2: "polygon", 3: "mask"}[depth]
    return None, f"{n} {unit}(s) for {n_texts} text(s) (nesting depth {depth}); expected equal counts or one text"


def parse_record(index: int, record: Any) -> tuple[Sample | None, list[Problem]]:
    """Checks one raw record and applies the mask/text policy (no image access).

    Args:
        index: Position of the record in the annotations list.
        record: The raw JSON value.

    Returns:
        ``(sample, problems)``; ``sample`` is None when any problem was found.
    """
    if not isinstance(record, dict):
        return None, [Problem(index, "", "invalid_record", f"record is of type {type(record).__name__}, not an object")]
    image = record.get("image")
    image_name = image if isinstance(image, str) else ""
    problems: list[Problem] = []

    def add(code: str, message: str) -> None:
        problems.append(Problem(index, image_name, code, message))

    for key in getattr(record, "duplicate_keys", ()):
        add("duplicate_key", f"key {key!r} appears more than once in the record (JSON would keep only the last "
                             "value); keep one")

    if "image" not in record:
        add("invalid_record", "record has no 'image' key")
    elif not isinstance(image, str) or not image.strip():
        add("invalid_record", f"'image' must be a non-empty string, got {image!r}")

    texts = record.get("text")
    if texts is None or texts == []:
        add(
            "empty_text",
            "record has no 'text' key" if "text" not in record else f"'text' is {json.dumps(texts, default=str)}",
        )
        texts = None
    elif not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        add("invalid_record", f"'text' must be a list of strings, got {json.dumps(texts, default=str)[:80]}")
        texts = None
    else:
        blank = [i for i, t in enumerate(texts) if not t.strip()]
        if blank:
            add("empty_text", f"text(s) {blank} are blank")
            texts = None

    masks: list[list[Any]] | None = None
    if "mask" not in record:
        add("invalid_record", "record has no 'mask' key")
    elif not isinstance(record["mask"], list):
        add("invalid_record", f"'mask' must be a list, got {type(record['mask']).__name__}")
    elif record["mask"] == []:
        add("empty_mask", "'mask' is an empty list")
    else:
        masks, depth, error = _split_masks(record["mask"])
        if error:
            add("invalid_record", error)
        else:
            for mi, m in enumerate(masks):
                if not m:
                    add("empty_mask", f"mask {mi} has no polygons")
                for pi, poly in enumerate(m):
                    for code, msg in _check_polygon(poly, f"mask {mi} polygon {pi}"):
                        add(code, msg)
            if texts is not None:
                masks, mismatch = _apply_policy(masks, depth, len(texts))
                if mismatch:
                    add("count_mismatch", mismatch)
    if problems:
        return None, problems
    assert texts is not None and masks is not None
    return Sample(index=index, image=image, texts=list(texts), masks=[list(m) for m in masks], record=record), []


def record_key(record: Any) -> str:
    """Canonical JSON of a record's image, texts and masks; equal keys mean duplicate records."""
    if not isinstance(record, dict):
        return json.dumps(record, sort_keys=True, default=str)
    return json.dumps([record.get(k) for k in ("image", "text", "mask")], default=str)


def record_digest(record: Any) -> str:
    """Cheap key (image, texts and the shape of the masks): records with different digests are not duplicates."""
    if not isinstance(record, dict):
        return json.dumps(record, sort_keys=True, default=str)[:200]
    mask = record.get("mask")
    shape = [len(m) if isinstance(m, list) else -1 for m in mask] if isinstance(mask, list) else repr(mask)
    return json.dumps([record.get("image"), record.get("text"), shape], default=str)


def load_samples(path: str | Path) -> tuple[list[Sample], list[Problem]]:
    """Parses every record of a file without touching images (see :func:`validate_annotations` for the full check).

    Args:
        path: Path of ``annotations.json``.

    Returns:
        ``(samples, problems)`` for the records that parse and the ones that do not.
    """
    samples, problems = [], []
    for i, rec in enumerate(load_annotation_list(path)):
        s, p = parse_record(i, rec)
        problems.extend(p)
        if s is not None:
            samples.append(s)
    return samples, problems


# ----------------------------------------------------------------------------------------------------------------
# Rasterising
# ----------------------------------------------------------------------------------------------------------------


def rasterize_polygons(polygons: list[Polygon], height: int, width: int) -> np.ndarray:
    """Fills polygons into a boolean mask of the given size (union of all polygons).

    Convention (the COCO one): pixel ``(row i, column j)`` covers ``[j, j+1) x [i, i+1)`` in polygon
    coordinates and belongs to the mask when its centre ``(j + 0.5, i + 0.5)`` lies inside a polygon
    (even-odd rule within a polygon, union across polygons). Points outside the image are allowed: the fill
    is clipped to the canvas. Vertices are first clamped to a wide margin (one image size around the canvas)
    so that absurd coordinates stay harmless. Vectorised scanline: cost grows with the number of edge/row
    crossings and the filled area, with no per-pixel polygon test.

    Args:
        polygons: Flat polygons ``[x1, y1, x2, y2, ...]`` in pixel coordinates.
        height: Mask height.
        width: Mask width.

    Returns:
        ``(height, width)`` boolean array.
    """
    rings = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons]
    rings = [r for r in rings if len(r) >= 3]
    mask = np.zeros((height, width), dtype=bool)
    if not rings:
        return mask
    lens = np.array([len(r) for r in rings])
    xy = np.concatenate(rings)  # (E, 2) all vertices; edge k goes from vertex k to the next of its ring
    xy[:, 0] = np.clip(xy[:, 0], -width, 2 * width)
    xy[:, 1] = np.clip(xy[:, 1], -height, 2 * height)
    first = np.cumsum(lens) - lens
    nxt = np.arange(len(xy)) + 1
    nxt[first + lens - 1] = first  # close each ring
    x0, y0 = xy[:, 0], xy[:, 1]
    x1, y1 = xy[nxt, 0], xy[nxt, 1]
    pid = np.repeat(np.arange(len(rings)), lens)
    # Rows whose centre y = r + 0.5 lies in [min(y0, y1), max(y0, y1)): half-open, so vertices count once.
    r_lo = np.clip(np.ceil(np.minimum(y0, y1) - 0.5), 0, height).astype(np.int64)
    r_hi = np.clip(np.ceil(np.maximum(y0, y1) - 0.5), 0, height).astype(np.int64)
    n = np.maximum(r_hi - r_lo, 0)  # crossings per edge; horizontal edges have none
    total = int(n.sum())
    if total == 0:
        return mask
    e = np.repeat(np.arange(len(n)), n)  # (C,) edge of each crossing
    rows = r_lo[e] + np.arange(total) - np.repeat(np.cumsum(n) - n, n)  # (C,)
    t = (rows + 0.5 - y0[e]) / (y1[e] - y0[e])
    xs = x0[e] + t * (x1[e] - x0[e])  # (C,) x of the crossing
    order = np.lexsort((xs, rows, pid[e]))  # every (polygon, row) has an even number of crossings
    xs, rows = xs[order], rows[order]
    start = np.clip(np.ceil(xs[0::2] - 0.5), 0, width).astype(np.int64)  # first column with centre >= x_in
    stop = np.clip(np.ceil(xs[1::2] - 0.5), 0, width).astype(np.int64)  # first column with centre >= x_out
    run = np.maximum(stop - start, 0)  # (R,) pixels per run
    offset = rows[0::2] * width + start - (np.cumsum(run) - run)
    mask.reshape(-1)[np.repeat(offset, run) + np.arange(int(run.sum()))] = True
    return mask


def scale_polygons(polygons: list[Polygon], sx: float, sy: float) -> list[Polygon]:
    """Scales polygon coordinates (x by ``sx``, y by ``sy``), e.g. to rasterise at a resized resolution."""
    out = []
    for poly in polygons:
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2) * (sx, sy)
        out.append(xy.reshape(-1).tolist())
    return out
