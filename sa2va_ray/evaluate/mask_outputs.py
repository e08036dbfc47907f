"""Predicted masks as files: PNGs at each image's own size and name, or a COCO results file that COCO tools score.

``eval.save_masks=png`` writes ``masks/<image stem>.png`` (0/255, the image's own height and width; a record's
second text gets ``<stem>__text1.png``), ``eval.save_masks=coco`` writes ``coco_results.json`` (one result per
record-text: ``image_id``, ``category_id``, ``segmentation`` as compressed RLE from ``pycocotools.mask.encode``,
``score`` = the mean probability inside the mask) beside ``coco_gt.json``, the evaluated set as COCO ground truth
(one category per text, polygons as annotated), so that::

    from pycocotools.coco import COCO; from pycocotools.cocoeval import COCOeval
    gt = COCO("eval/coco_gt.json"); dt = gt.loadRes("eval/coco_results.json")
    e = COCOeval(gt, dt, "segm"); e.evaluate(); e.accumulate(); e.summarize()

Masks arrive on the driver bit-packed with each output batch and are written at once (never all held). With
``data.pseudonymise`` every file name and ``file_name`` is the image's pseudonym.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sa2va_ray.evaluate.table import PACKED_COLUMN, unpack_mask

FORMATS = ("none", "png", "coco")


def mask_file_name(display_name: str, text_index: int) -> str:
    """``<stem>.png`` for a record's first text, ``<stem>__text<k>.png`` for the others."""
    stem = Path(display_name).stem
    return f"{stem}.png" if int(text_index) == 0 else f"{stem}__text{int(text_index)}.png"


class MaskWriter:
    """Receives the pipeline's output batches (with :data:`PACKED_COLUMN`) and writes masks in ``fmt``.

    Args:
        out_dir: the evaluation directory.
        fmt: ``png`` or ``coco``.
        display_name: raw image name -> the name outputs show (pseudonym when asked).
        samples: the evaluated samples (COCO ground truth and ids).
    """

    def __init__(self, out_dir: str | Path, fmt: str, display_name: Callable[[str], str], samples=()):
        if fmt not in FORMATS[1:]:
            raise ValueError(f"save_masks must be one of {FORMATS}, got {fmt!r}")
        self.out, self.fmt, self.display_name = Path(out_dir), fmt, display_name
        self.samples = list(samples)
        self.results: list[dict[str, Any]] = []
        self.written = 0
        if fmt == "png":
            (self.out / "masks").mkdir(parents=True, exist_ok=True)
        texts = sorted({t for s in self.samples for t in s.texts})
        self.category = {t: i + 1 for i, t in enumerate(texts)}

    def update(self, batch: pd.DataFrame) -> None:
        """Write the masks of the batch's ok rows."""
        if PACKED_COLUMN not in batch.columns:
            return
        for r in batch[batch["status"] == "ok"].itertuples(index=False):
            packed = getattr(r, PACKED_COLUMN)
            if not isinstance(packed, (bytes, bytearray)) or not r.height:
                continue
            mask = unpack_mask(packed, int(r.height), int(r.width))
            if self.fmt == "png":
                from PIL import Image

                name = mask_file_name(self.display_name(str(r.image)), r.text_index)
                Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(self.out / "masks" / name)
            else:
                from pycocotools import mask as mask_utils

                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                score = float(getattr(r, "score", 1.0))
                self.results.append({"image_id": int(r.record_index) + 1,
                                     "category_id": self.category.get(str(r.text), 0),
                                     "segmentation": rle, "score": score if np.isfinite(score) else 0.0})
            self.written += 1

    def finish(self, sizes: dict[int, tuple[int, int]]) -> list[Path]:
        """Write the COCO files (``sizes``: record index -> (height, width) of the evaluated images); return the
        paths written."""
        if self.fmt == "png":
            return [self.out / "masks"]
        gt = coco_ground_truth(self.samples, self.category, self.display_name, sizes)
        (self.out / "coco_gt.json").write_text(json.dumps(gt))
        (self.out / "coco_results.json").write_text(json.dumps(self.results))
        return [self.out / "coco_gt.json", self.out / "coco_results.json"]


def coco_ground_truth(samples, category: dict[str, int], display_name: Callable[[str], str],
                      sizes: dict[int, tuple[int, int]]) -> dict[str, Any]:
    """The evaluated records as a COCO ground-truth dict: image id = record index + 1, one annotation per text whose
    segmentation is the RLE of the very mask the metrics used (the project's rasteriser, not COCO's polygon fill,
    so COCO's IoU of a result equals the table's ``iou``)."""
    from pycocotools import mask as mask_utils

    from sa2va_ray.data.annotations import rasterize_polygons

    images, annotations = [], []
    for s in samples:
        if s.index not in sizes:
            continue  # never scored (an error row): no image entry, so COCO tools do not count it as missed
        h, w = sizes[s.index]
        images.append({"id": s.index + 1, "file_name": display_name(s.image), "height": h, "width": w})
        for text, polygons in zip(s.texts, s.masks):
            gt = rasterize_polygons(polygons, h, w)
            rle = mask_utils.encode(np.asfortranarray(gt.astype(np.uint8)))
            annotations.append({"id": len(annotations) + 1, "image_id": s.index + 1, "category_id": category[text],
                                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                                "area": float(mask_utils.area(rle)),
                                "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": t} for t, i in category.items()]}
