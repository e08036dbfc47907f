"""Predicted masks out: PNGs at the image's own size and name; COCO results that pycocotools scores, with COCO's IoU
equal to the table's."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sa2va_ray.data.annotations import Sample, rasterize_polygons
from sa2va_ray.evaluate.mask_outputs import MaskWriter, mask_file_name
from sa2va_ray.evaluate.metrics import binary_metrics
from sa2va_ray.evaluate.table import PACKED_COLUMN, pack_mask

SAMPLES = [
    Sample(index=0, image="Wang_Li(0000012345)_1-1_1_0A_frame_000001.jpg", texts=["blood vessel", "catheter"],
           masks=[[[2, 2, 30, 2, 30, 12, 2, 12]], [[5, 15, 25, 15, 25, 19]]], record={}),
    Sample(index=1, image="b.png", texts=["blood vessel"], masks=[[[0, 0, 10, 0, 10, 20, 0, 20]]], record={}),
]
SIZES = {0: (24, 40), 1: (30, 16)}


def _batch():
    rows = []
    rng = np.random.default_rng(0)
    for s in SAMPLES:
        h, w = SIZES[s.index]
        for t, (text, polys) in enumerate(zip(s.texts, s.masks)):
            gt = rasterize_polygons(polys, h, w)
            pred = gt.copy()
            pred[rng.random((h, w)) > 0.9] ^= True  # some errors, so IoU < 1
            m = binary_metrics(pred, gt)
            rows.append({"sample_id": s.sample_id(t), "record_index": s.index, "text_index": t, "image": s.image,
                         "text": text, "status": "ok", "height": h, "width": w, "iou": float(m["iou"][0]),
                         "score": 0.8, PACKED_COLUMN: pack_mask(pred), "_pred": pred})
    rows.append({"sample_id": "9:0", "record_index": 9, "text_index": 0, "image": "gone.jpg", "text": "blood vessel",
                 "status": "error", "height": 0, "width": 0, "iou": float("nan"), "score": float("nan"),
                 PACKED_COLUMN: b"", "_pred": None})
    return pd.DataFrame(rows)


def test_png_masks_have_the_image_size_and_name(tmp_path):
    batch = _batch()
    w = MaskWriter(tmp_path, "png", lambda n: n.replace("Wang_Li(0000012345)", "P-1f2e"), SAMPLES)
    w.update(batch.drop(columns="_pred"))
    assert w.written == 3
    w.finish(SIZES)
    names = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert names == ["P-1f2e_1-1_1_0A_frame_000001.png", "P-1f2e_1-1_1_0A_frame_000001__text1.png", "b.png"]
    for r in batch[batch["status"] == "ok"].itertuples():
        name = mask_file_name(r.image.replace("Wang_Li(0000012345)", "P-1f2e"), r.text_index)
        png = np.asarray(Image.open(tmp_path / "masks" / name))
        assert png.shape == (r.height, r.width) and set(np.unique(png)) <= {0, 255}
        assert np.array_equal(png > 0, batch.loc[r.Index, "_pred"])


def test_coco_results_score_in_cocoeval_with_the_tables_iou(tmp_path):
    batch = _batch()
    w = MaskWriter(tmp_path, "coco", lambda n: n, SAMPLES)
    w.update(batch.drop(columns="_pred"))
    w.finish(SIZES)
    gt = COCO(str(tmp_path / "coco_gt.json"))
    results = json.loads((tmp_path / "coco_results.json").read_text())
    assert len(results) == 3 and {c["name"] for c in gt.loadCats(gt.getCatIds())} == {"blood vessel", "catheter"}
    dt = gt.loadRes(str(tmp_path / "coco_results.json"))
    ok = batch[batch["status"] == "ok"].reset_index(drop=True)
    for res, r in zip(results, ok.itertuples()):
        (ann,) = gt.loadAnns(gt.getAnnIds(imgIds=res["image_id"], catIds=res["category_id"]))
        iou = mask_utils.iou([res["segmentation"]], [gt.annToRLE(ann)], [0])[0, 0]
        assert iou == pytest.approx(r.iou, abs=1e-9)
    e = COCOeval(gt, dt, "segm")
    e.evaluate()
    e.accumulate()
    e.summarize()
    assert 0.0 <= e.stats[0] <= 1.0  # COCO tools read and score the file
    with pytest.raises(ValueError, match="save_masks"):
        MaskWriter(tmp_path, "tiff", lambda n: n)
