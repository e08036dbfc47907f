"""What every converter shares: the intermediate objects, label -> text mapping, size checks and writing the output.

A converter reads its format into :class:`SourceImage` items (one per image, each with :class:`SourceObject` items:
the polygons of one shape/annotation/mask value and the keys that map it to a text). :func:`build_records` then maps
labels to texts, drops what must be dropped (every drop named in the :class:`~.report.ConversionReport`) and
builds one record per image: ``{"image", "mask": [[poly, ...], ...], "text": [...]}`` (depth 3), one mask per
distinct text -- the union of every shape of that text in the image -- so one text never has two different targets.
:func:`write_output` writes ``OUT/annotations.json`` and copies (or links) the images into ``OUT/images/``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from sa2va_ray.data.annotations import Polygon
from sa2va_ray.data.convert.report import ConversionReport
from sa2va_ray.data.images import displayed_size, open_image_header

DEFAULT_MIN_IOU = 0.99
"""A traced object whose polygons rasterise to less than this IoU with its source mask is dropped."""

LINK_MODES = ("copy", "hardlink", "symlink")
SIZE_MISMATCH_MODES = ("rescale", "error")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ConvertError(ValueError):
    """The input as a whole cannot be converted (nothing found, unreadable COCO file, unmapped labels); one line."""


@dataclass
class ConvertOptions:
    """Options every converter understands.

    Attributes:
        text_map: Label (LabelMe label, COCO category id or name, mask value) -> text. Empty: labels are texts as
            they are (LabelMe, COCO names); when given, every label met must be in it.
        drop_unmapped: Drop (and report) objects whose label has no text instead of refusing the whole input.
        on_size_mismatch: ``rescale`` (with a warning naming the file and the factor) or ``error`` (the file's
            shapes are dropped) when the recorded image size is not the real one.
        link: How images get into ``OUT/images``: ``copy``, ``hardlink`` (copy across file systems) or ``symlink``.
        min_iou: Traced polygons must rasterise to at least this IoU with their mask, otherwise they are dropped.
        simplify: Douglas-Peucker tolerance in pixels for traced outlines (0: exact, only collinear points removed).
    """

    text_map: dict[str, str] = field(default_factory=dict)
    drop_unmapped: bool = False
    on_size_mismatch: str = "rescale"
    link: str = "copy"
    min_iou: float = DEFAULT_MIN_IOU
    simplify: float = 0.0

    def __post_init__(self) -> None:
        if self.on_size_mismatch not in SIZE_MISMATCH_MODES:
            raise ConvertError(f"on_size_mismatch must be one of {SIZE_MISMATCH_MODES}, got {self.on_size_mismatch!r}")
        if self.link not in LINK_MODES:
            raise ConvertError(f"link must be one of {LINK_MODES}, got {self.link!r}")
        if not 0.0 < self.min_iou <= 1.0:
            raise ConvertError(f"min_iou must be in (0, 1], got {self.min_iou}")


@dataclass
class SourceObject:
    """One shape / annotation / mask value of an image, in the image's pixel coordinates.

    Attributes:
        item: How the report names it, e.g. ``"shape 3 (polygon 'dongmai')"``.
        keys: Keys looked up in the text map, in order (e.g. COCO category id, then name).
        label: The label as the report shows it when unmapped.
        default_text: Text when no key is mapped (None: the object is unmapped).
        polygons: Flat polygons; their union is the object.
        iou: IoU of the traced polygons with the source mask (None when the source was polygons).
    """

    item: str
    keys: tuple[str, ...]
    label: str
    default_text: str | None
    polygons: list[Polygon]
    iou: float | None = None


@dataclass
class SourceImage:
    """One image and its objects.

    Attributes:
        source: The file the annotations came from (a LabelMe JSON, the COCO file, a mask), for the report.
        name: The image's name in the output (relative to ``OUT/images``).
        path: The image file to copy.
        objects: Its objects.
    """

    source: str
    name: str
    path: Path
    objects: list[SourceObject] = field(default_factory=list)


def parse_mapping(pairs: list[str] | None, flag: str) -> dict[str, str]:
    """Parses repeated ``KEY=TEXT`` arguments (``--label-map dongmai="blood vessel"``) into a dict.

    Raises:
        ConvertError: For an item without ``=``, an empty key or text, or a key given twice with different texts.
    """
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key or not text:
            raise ConvertError(f"{flag} {pair!r}: expected KEY=TEXT, e.g. {flag} 1=\"blood vessel\"")
        if out.get(key, text) != text:
            raise ConvertError(f"{flag}: {key!r} is mapped twice ({out[key]!r} and {text!r}); keep one")
        out[key] = text
    return out


def image_size(path: Path) -> tuple[int, int]:
    """Returns the displayed ``(width, height)`` of an image (EXIF orientation applied, as LabelMe shows it).

    Raises:
        OSError, ValueError: If the file is not a readable image (or is too large).
    """
    with open_image_header(path) as im:
        return displayed_size(im)


def safe_relative(name: str) -> str | None:
    """``name`` with ``/`` separators when it is a relative path inside its folder, else None."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if not name.strip() or posix.is_absolute() or ".." in posix.parts or ":" in posix.parts[0]:
        return None
    return str(posix)


def size_factor(source: str, recorded: tuple[int, int], real: tuple[int, int], image: str,
                opts: ConvertOptions, report: ConversionReport, n_objects: int) -> tuple[float, float] | None:
    """Compares a recorded image size with the real one.

    Returns:
        ``(sx, sy)`` to multiply coordinates by (``(1, 1)`` when they agree), or None when the mismatch is refused
        (``on_size_mismatch="error"``; the drop is reported).
    """
    (rw, rh), (w, h) = recorded, real
    if (rw, rh) == (w, h):
        return 1.0, 1.0
    sx, sy = w / rw, h / rh
    factor = f"{sx:g}" if sx == sy else f"{sx:g} (x) and {sy:g} (y)"
    what = f"{rw}x{rh} recorded for the {w}x{h} image {image}"
    if opts.on_size_mismatch == "error":
        report.drop(source, f"all {n_objects} shape(s)", "size_mismatch", f"{what} (factor {factor})",
                    "fix the recorded size, or use --on-size-mismatch rescale to scale the points", count=n_objects)
        return None
    report.warn(source, f"{what}: points rescaled by {factor}")
    return sx, sy


def scale_points(poly: Polygon, sx: float, sy: float) -> Polygon:
    """Scales a flat polygon (x by ``sx``, y by ``sy``); unchanged when both are 1."""
    if sx == 1.0 and sy == 1.0:
        return list(poly)
    return [v * (sx if i % 2 == 0 else sy) for i, v in enumerate(poly)]


def resolve_texts(images: list[SourceImage], opts: ConvertOptions, flag: str, what: str, hint: str = "") -> None:
    """Checks that every object's label has a text; raises one line listing all unmapped labels with counts.

    Args:
        images: The images read by a converter.
        opts: Options (``text_map``, ``drop_unmapped``).
        flag: The flag that maps labels, named in the message (``--label-map``).
        what: What a label is, for the message (``label``, ``category``, ``mask value``).
        hint: Appended to the message.

    Raises:
        ConvertError: When some labels are unmapped and ``drop_unmapped`` is off.
    """
    objects: Counter[str] = Counter()
    files: dict[str, set[str]] = {}
    for im in images:
        for obj in im.objects:
            if text_of(obj, opts) is None:
                objects[obj.label] += 1
                files.setdefault(obj.label, set()).add(im.source)
    if objects and not opts.drop_unmapped:
        listed = ", ".join(f"{label!r} ({n} object(s) in {len(files[label])} file(s))"
                           for label, n in objects.most_common())
        example = next(iter(objects))
        raise ConvertError(f"{len(objects)} unmapped {what}(s): {listed}; add {flag} {example}=\"TEXT\" for each, "
                           f"or --drop-unmapped to drop them{hint}")


def text_of(obj: SourceObject, opts: ConvertOptions) -> str | None:
    """The text of an object: the first of its keys in the text map, else its default text."""
    for key in obj.keys:
        if key in opts.text_map:
            return opts.text_map[key]
    return obj.default_text


def build_records(images: list[SourceImage], opts: ConvertOptions, report: ConversionReport) -> list[dict]:
    """Maps labels to texts and builds one record per image (see the module docstring); drops are reported.

    Objects without a text (only with ``drop_unmapped``), traced objects below ``min_iou`` and images left
    without objects are reported; the rest become records in input order.
    """
    records = []
    for im in images:
        masks: dict[str, list[Polygon]] = {}
        for obj in im.objects:
            text = text_of(obj, opts)
            if text is None:
                report.drop(im.source, obj.item, "unmapped_label", f"label {obj.label!r} has no text",
                            f"add a mapping {obj.label}=\"TEXT\"")
                continue
            if obj.iou is not None:
                report.traced(im.name, text, obj.item, obj.iou)
                if obj.iou < opts.min_iou:
                    report.drop(im.source, obj.item, "trace_iou",
                                f"traced polygons rasterise to IoU {obj.iou:.4f} < {opts.min_iou} with the mask",
                                "check the mask (single-pixel lines, noise) or lower --min-iou")
                    continue
            masks.setdefault(text, []).extend(obj.polygons)
            report.kept += 1
        if not masks:
            if im.objects:
                report.warn(im.source, f"image {im.name}: no shape left after the drops above; image not written")
            else:
                report.warn(im.source, f"image {im.name} has no shapes; not written (the format has no empty masks)")
            continue
        records.append({"image": im.name, "mask": list(masks.values()), "text": list(masks)})
        report.texts.update(list(masks))
    return records


def place_image(src: Path, dst: Path, link: str, report: ConversionReport) -> None:
    """Copies (or hard/sym-links) one image to ``dst``; a hard link across file systems falls back to a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and os.path.samefile(dst, src):
        return  # converting in place (or a link made by an earlier run): the image is already there
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if link == "symlink":
        dst.symlink_to(src.resolve())
        return
    if link == "hardlink":
        try:
            os.link(src, dst)
            return
        except OSError as e:
            if not report.hardlink_fallback:
                report.warn(str(src.parent), f"hard links impossible ({e.strerror}); images copied instead")
            report.hardlink_fallback = True
    shutil.copy2(src, dst)


def write_output(images: list[SourceImage], records: list[dict], out: Path, opts: ConvertOptions,
                 report: ConversionReport) -> Path:
    """Writes ``out/annotations.json`` and puts the records' images into ``out/images``; returns the JSON path."""
    out.mkdir(parents=True, exist_ok=True)
    by_name = {im.name: im for im in images}
    for rec in records:
        place_image(by_name[rec["image"]].path, out / "images" / rec["image"], opts.link, report)
    path = out / "annotations.json"
    path.write_text(json.dumps(records, separators=(",", ":")))
    report.images_written = len(records)
    return path
