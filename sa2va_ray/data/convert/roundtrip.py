"""Writers of the other formats, as their tools write them, and the round trip the demo and the tests run.

:func:`write_labelme_files`, :func:`write_coco_file` and :func:`write_mask_folder` write an official-format set
(e.g. the synthetic one) as LabelMe JSON files, a COCO file (polygons, or RLE compressed/uncompressed as
``pycocotools.mask.encode`` writes it) or mask PNGs; :func:`compare_annotations` rasterises two annotation files
with the project's rasteriser and returns the IoU of every (image, text) mask; :func:`labelme_roundtrip` does
both for LabelMe and reports the smallest IoU.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sa2va_ray.data.annotations import Sample, load_samples, rasterize_polygons
from sa2va_ray.data.convert.common import ConvertOptions, image_size
from sa2va_ray.data.convert.trace import mask_iou

LABELME_VERSION = "5.5.0"


def _samples(annotations: str | Path) -> list[Sample]:
    samples, _ = load_samples(annotations)
    return samples


def text_masks(annotations: str | Path, images_dir: str | Path) -> dict[tuple[str, str], np.ndarray]:
    """``{(image, text): mask}`` of every valid record, rasterised at the image's size (union over records)."""
    out: dict[tuple[str, str], np.ndarray] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for s in _samples(annotations):
        if s.image not in sizes:
            sizes[s.image] = image_size(Path(images_dir) / s.image)
        w, h = sizes[s.image]
        for text, polys in zip(s.texts, s.masks):
            m = rasterize_polygons(polys, h, w)
            key = (s.image, text)
            out[key] = out[key] | m if key in out else m
    return out


def write_labelme_files(annotations: str | Path, images_dir: str | Path, out_dir: str | Path,
                        label_of: dict[str, str] | None = None, record_size: tuple[int, int] | None = None,
                        image_data: str | None = None) -> list[Path]:
    """Writes one LabelMe JSON per image, as LabelMe 5 saves it (one polygon shape per polygon).

    Args:
        annotations: Official-format file.
        images_dir: Its images.
        out_dir: Where the JSON files go (``imagePath`` is relative to it, as LabelMe writes it).
        label_of: Text -> LabelMe label (default: the text itself).
        record_size: Record this ``(width, height)`` and scale the points to it (a LabelMe file made for another
            resolution); default: the real size.
        image_data: The ``imageData`` value (LabelMe writes base64 or null); it must never be decoded.

    Returns:
        The written files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for s in _samples(annotations):
        image = Path(images_dir) / s.image
        w, h = image_size(image)
        rw, rh = record_size or (w, h)
        shapes = []
        for text, polys in zip(s.texts, s.masks):
            for poly in polys:
                xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2) * (rw / w, rh / h)
                shapes.append({"label": (label_of or {}).get(text, text), "points": xy.tolist(), "group_id": None,
                               "description": "", "shape_type": "polygon", "flags": {}, "mask": None})
        doc = {"version": LABELME_VERSION, "flags": {}, "shapes": shapes,
               "imagePath": os.path.relpath(image, out_dir), "imageData": image_data,
               "imageHeight": rh, "imageWidth": rw}
        path = out_dir / f"{Path(s.image).stem}.json"
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        files.append(path)
    return files


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a mask: run lengths in column-major order, starting with a run of zeros."""
    flat = np.asarray(mask, dtype=bool).reshape(-1, order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


def write_coco_file(annotations: str | Path, images_dir: str | Path, path: str | Path,
                    rle: str | None = None) -> Path:
    """Writes a COCO instances file: one annotation per (image, text) mask, one category per text.

    Args:
        annotations: Official-format file.
        images_dir: Its images.
        path: The COCO JSON to write.
        rle: None (polygon segmentations), ``"compressed"`` (``pycocotools.mask.encode``, counts as a string) or
            ``"uncompressed"`` (counts as a list, ``iscrowd=1``).
    """
    from pycocotools import mask as mask_utils

    masks = text_masks(annotations, images_dir)
    samples = _samples(annotations)
    texts = list(dict.fromkeys(t for s in samples for t in s.texts))
    cats = [{"id": i + 1, "name": t, "supercategory": "vessel"} for i, t in enumerate(texts)]
    images, anns, ids = [], [], {}
    for s in samples:
        if s.image not in ids:
            w, h = image_size(Path(images_dir) / s.image)
            ids[s.image] = len(ids) + 1
            images.append({"id": ids[s.image], "file_name": s.image, "width": w, "height": h})
        for text, polys in zip(s.texts, s.masks):
            m = masks[(s.image, text)]
            enc = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            ann = {"id": len(anns) + 1, "image_id": ids[s.image], "category_id": texts.index(text) + 1,
                   "area": float(mask_utils.area(enc)), "bbox": [float(v) for v in mask_utils.toBbox(enc)],
                   "iscrowd": 0}
            if rle is None:
                ann["segmentation"] = [list(map(float, p)) for p in polys]
            elif rle == "compressed":
                ann["segmentation"] = {"size": enc["size"], "counts": enc["counts"].decode("ascii")}
                ann["iscrowd"] = 1
            else:
                ann["segmentation"] = uncompressed_rle(m)
                ann["iscrowd"] = 1
            anns.append(ann)
    doc = {"info": {"description": "sa2va-ray"}, "licenses": [], "images": images, "annotations": anns,
           "categories": cats}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc))
    return Path(path)


def write_mask_folder(annotations: str | Path, images_dir: str | Path, masks_dir: str | Path,
                      pattern: str = "{stem}_mask.png", values: dict[str, int] | None = None) -> list[Path]:
    """Writes one 8-bit PNG mask per image: binary 0/255 by default, or ``values[text]`` per text (label mask)."""
    masks_dir = Path(masks_dir)
    masks_dir.mkdir(parents=True, exist_ok=True)
    by_image: dict[str, np.ndarray] = {}
    for (image, text), m in text_masks(annotations, images_dir).items():
        canvas = by_image.setdefault(image, np.zeros(m.shape, np.uint8))
        canvas[m] = values[text] if values else 255
    files = []
    for image, canvas in by_image.items():
        p = Path(image)
        path = masks_dir / pattern.format(stem=p.stem, name=p.name, suffix=p.suffix)
        Image.fromarray(canvas, mode="L").save(path)
        files.append(path)
    return files


def compare_annotations(a: str | Path, a_images: str | Path, b: str | Path,
                        b_images: str | Path) -> dict[tuple[str, str], float]:
    """IoU of every (image, text) mask of ``a`` with the same mask of ``b`` (0 when ``b`` lacks it)."""
    ma, mb = text_masks(a, a_images), text_masks(b, b_images)
    return {k: mask_iou(m, mb[k]) if k in mb else 0.0 for k, m in ma.items()}


@dataclass
class RoundTrip:
    """Outcome of :func:`labelme_roundtrip`."""

    objects: int
    min_iou: float
    mean_iou: float
    dropped: int
    seconds: float
    annotations: Path

    def line(self) -> str:
        """One readable line."""
        return (f"LabelMe round trip: {self.objects} masks written as LabelMe files and converted back, IoU with "
                f"the originals min {self.min_iou:.4f} mean {self.mean_iou:.4f}, {self.dropped} dropped, "
                f"{self.seconds:.1f} s ({self.annotations})")


def labelme_roundtrip(annotations: str | Path, images_dir: str | Path, out_dir: str | Path) -> RoundTrip:
    """Writes a set as LabelMe files (``out_dir/labelme``), converts them back (``out_dir/converted``) with the
    LabelMe converter and compares the masks of both with the project's rasteriser."""
    from sa2va_ray.data.convert.pipeline import convert_annotations

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    write_labelme_files(annotations, images_dir, out_dir / "labelme")
    result = convert_annotations("labelme", out_dir / "labelme", out_dir / "converted", images_dir,
                                 ConvertOptions(link="hardlink"))
    ious = list(compare_annotations(annotations, images_dir, result.annotations, result.images_dir).values())
    return RoundTrip(objects=len(ious), min_iou=min(ious), mean_iou=float(np.mean(ious)),
                     dropped=result.report.dropped, seconds=time.perf_counter() - t0, annotations=result.annotations)
