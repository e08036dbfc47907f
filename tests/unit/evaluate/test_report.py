"""Tests of the evaluation report layer: the predictor's rows, summaries, overlay selection and pictures."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sa2va_ray.evaluate.overlays import OVERLAY_COLOURS, OverlaySelector, compose_overlay, write_overlays
from sa2va_ray.evaluate.predictor import Sa2VAPredictor
from sa2va_ray.evaluate.report import (
    format_summary_markdown,
    plot_dice_histogram,
    summarise_samples,
    write_summary_json,
)
from sa2va_ray.evaluate.table import (
    OUTPUT_COLUMNS,
    PACKED_COLUMN,
    empty_row,
    hash_mask,
    mark_error,
    order_columns,
    pack_mask,
    unpack_mask,
    write_sample_tables,
)

# ------------------------------------------------------------------------------------------------ predictor rows


class ThresholdModel(torch.nn.Module):
    """Predicts pixels brighter than a threshold; raises for the text 'boom' (to exercise the per-sample retry)."""

    def __init__(self, threshold: float = 128.0):
        super().__init__()
        self.threshold = torch.nn.Parameter(torch.tensor([threshold]))
        self.calls: list[int] = []

    def predict(self, images, texts, mode="teacher_forced", batch_size=8, threshold=None, return_probs=False):
        self.calls.append(len(images))
        if "boom" in texts:
            raise RuntimeError("cannot segment 'boom'")
        # probability > 0.5 exactly where the grey value > self.threshold (as a real model's results carry it)
        probs = [(np.asarray(im.convert("L"), np.float32) - float(self.threshold) + 127.5) / 255 for im in images]
        return [SimpleNamespace(prob=p, mask=p > (threshold or 0.5)) for p in probs] if return_probs else \
            [p > 0.5 for p in probs]


def _batch(sizes, texts, errors=None):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    masks = [np.asarray(Image.fromarray(im).convert("L")) > 100 for im in images]
    n = len(sizes)
    return {
        "sample_id": np.array([f"{i}:0" for i in range(n)]),
        "record_index": np.arange(n),
        "text_index": np.zeros(n, int),
        "image_name": np.array([f"P({i:03d})_frame.jpg" for i in range(n)]),
        "text": np.array(texts),
        "image": np.array(images + [None], dtype=object)[:n],  # variable-shaped, as Ray Data hands them over
        "mask": np.array(masks + [None], dtype=object)[:n],
        "error": np.array(errors or [""] * n),
    }, images, masks


def test_predictor_rows_metrics_and_per_sample_retry():
    model = ThresholdModel()
    pred = Sa2VAPredictor(model=model, vessel_metrics=True)
    batch, images, masks = _batch([(20, 30), (16, 16), (24, 12), (8, 8)], ["vessel", "boom", "vessel", "vessel"],
                                  errors=["", "", "", "record 3 (x.jpg): cannot decode: OSError: truncated"])
    out = pred(batch)
    assert list(out["sample_id"]) == ["0:0", "1:0", "2:0", "3:0"]  # one row per input row, in order
    assert set(OUTPUT_COLUMNS) <= set(out.columns)
    assert list(out["status"]) == ["ok", "error", "ok", "error"]
    assert list(out["error_code"]) == ["", "predict_error", "", "decode_error"]
    assert "cannot segment 'boom'" in out.loc[1, "error"]
    assert model.calls == [3, 1, 1, 1]  # the decode error is never predicted; the failed batch is retried 1 by 1
    # metrics of row 0 are those of the threshold prediction against its mask
    p0 = np.asarray(Image.fromarray(images[0]).convert("L")) > 128
    inter, union = (p0 & masks[0]).sum(), (p0 | masks[0]).sum()
    assert out.loc[0, "iou"] == pytest.approx(inter / union)
    assert out.loc[0, "intersection"] == inter and (out.loc[0, "height"], out.loc[0, "width"]) == (20, 30)
    assert out.loc[0, "pred_hash"] == hash_mask(p0)
    assert np.array_equal(unpack_mask(out.loc[0, PACKED_COLUMN], 20, 30), p0)
    assert math.isnan(out.loc[1, "dice"]) and out.loc[1, "pred_hash"] == "" and out.loc[3, PACKED_COLUMN] == b""
    assert not math.isnan(out.loc[2, "cldice"])
    assert out["model_fingerprint"].nunique() == 1 and len(out.loc[0, "model_fingerprint"]) == 64


def test_pack_and_hash_masks():
    rng = np.random.default_rng(1)
    m = rng.random((13, 7)) > 0.5  # 91 pixels: not a multiple of 8
    assert np.array_equal(unpack_mask(pack_mask(m), 13, 7), m)
    assert hash_mask(m) == hash_mask(m.copy())
    flipped = m.copy()
    flipped[12, 6] = ~flipped[12, 6]
    assert hash_mask(flipped) != hash_mask(m)
    assert hash_mask(np.zeros((7, 13), bool)) != hash_mask(np.zeros((13, 7), bool))  # shape is part of the hash


# ------------------------------------------------------------------------------------------------------ summaries


def _table():
    rows = []
    dice = [0.9, 0.5, 0.7, 0.1]
    for i, d in enumerate(dice):
        r = empty_row(f"{i}:0", i, 0, f"Name({i % 2:04d})_frame_{i}.jpg", "blood vessel")
        r.update(dice=d, iou=d / (2 - d), precision=d, recall=d, accuracy=0.9, intersection=10 * (i + 1),
                 union=20 * (i + 1), cldice=d, hd95=float("nan") if i == 3 else 2.0, betti0_error=1.0,
                 betti1_error=0.0, patient=f"{i % 2:04d}")
        rows.append(r)
    bad = mark_error(empty_row("4:0", 4, 0, "Name(0009)_x.jpg", "blood vessel"), "missing_image", "missing_image: gone")
    bad2 = mark_error(empty_row("4:1", 4, 1, "Name(0009)_x.jpg", "aorta"), "missing_image", "missing_image: gone")
    rows += [dict(bad, patient="0009"), dict(bad2, patient="0009")]
    return pd.DataFrame(rows)


def test_summary_counts_means_and_json(tmp_path):
    df = _table()
    s = summarise_samples(df, n_boot=200, model_fingerprint="abc")
    assert (s["n_records"], s["n_samples"], s["n_ok"], s["n_failed"], s["n_failed_records"]) == (5, 6, 4, 2, 1)
    assert s["n_patients"] == 3 and s["errors_by_code"] == {"missing_image": 2}
    d = s["metrics"]["dice"]
    assert d["mean"] == pytest.approx(0.55) and d["median"] == pytest.approx(0.6) and d["n"] == 4
    assert d["ci_low"] <= d["mean"] <= d["ci_high"]
    assert s["metrics"]["hd95"]["n_nan"] == 1 and s["metrics"]["hd95"]["mean"] == pytest.approx(2.0)
    assert s["ciou"] == pytest.approx(100 / 200) and s["giou"] == pytest.approx(0.5)
    path = write_summary_json(dict(s, extra=float("nan")), tmp_path / "summary.json")
    loaded = json.loads(path.read_text())  # strict JSON: NaN became null
    assert loaded["extra"] is None and loaded["model_fingerprint"] == "abc"
    md = format_summary_markdown(s, df[df["status"] != "ok"])
    assert "| dice | 0.5500 |" in md and "| hd95 (↓) |" in md and "missing_image: gone" in md


def test_tables_keep_one_row_per_sample_in_order(tmp_path):
    df = _table().sample(frac=1.0, random_state=0)
    df[PACKED_COLUMN] = b"x"
    pq, csv = write_sample_tables(df, tmp_path)
    back = pd.read_parquet(pq)
    assert list(back["sample_id"]) == ["0:0", "1:0", "2:0", "3:0", "4:0", "4:1"]
    assert PACKED_COLUMN not in back.columns and list(back.columns[:5]) == ["sample_id", "record_index", "text_index",
                                                                          "image", "patient"]
    assert len(pd.read_csv(csv)) == 6 and list(order_columns(df)["sample_id"]) == list(back["sample_id"])


# ---------------------------------------------------------------------------------------------- overlays, plots


def _stream(dices, start=0):
    rows = []
    for i, d in enumerate(dices, start):
        m = np.zeros((4, 5), bool)
        m.flat[i % 20] = True
        rows.append({"sample_id": f"{i:03d}:0", "status": "ok", "dice": d, "height": 4, "width": 5,
                     PACKED_COLUMN: pack_mask(m)})
    rows.append({"sample_id": "999:0", "status": "error", "dice": float("nan"), "height": 0, "width": 0,
                 PACKED_COLUMN: b""})
    return pd.DataFrame(rows)


def test_overlay_selector_keeps_worst_best_random_independent_of_order():
    rng = np.random.default_rng(3)
    dice = rng.random(40)
    batches = [_stream(dice[i : i + 8], i) for i in range(0, 40, 8)]
    picks = []
    for order in (range(5), reversed(range(5))):
        sel = OverlaySelector(k=3, seed=1)
        for b in order:
            sel.update(batches[b])
            assert len(sel._cand) <= 9  # bounded memory
        picks.append({k: [s for s, _, _ in v] for k, v in sel.selection().items()})
    assert picks[0] == picks[1]
    assert picks[0]["worst"] == [f"{i:03d}:0" for i in np.argsort(dice)[:3]]
    assert picks[0]["best"] == [f"{i:03d}:0" for i in np.argsort(-dice)[:3]]
    assert len(set(picks[0]["random"])) == 3 and "999:0" not in sum(picks[0].values(), [])
    sid, d, mask = sel.selection()["worst"][0]
    i = int(sid.split(":")[0])
    assert d == dice[i] and mask.shape == (4, 5) and mask.flat[i % 20] and mask.sum() == 1


def test_compose_overlay_colours():
    img = np.full((2, 3), 100, np.uint8)
    gt = np.array([[1, 1, 0], [0, 0, 0]], bool)
    pred = np.array([[1, 0, 1], [0, 0, 0]], bool)
    pic = np.asarray(compose_overlay(img, gt, pred, "t", min_height=2))  # panels at scale 1, header 40 px
    w, gap, head = 3, 4, 40
    x4 = 3 * (w + gap)
    assert tuple(pic[head, x4]) == OVERLAY_COLOURS["tp"]
    assert tuple(pic[head, x4 + 1]) == OVERLAY_COLOURS["fn"]
    assert tuple(pic[head, x4 + 2]) == OVERLAY_COLOURS["fp"]
    assert tuple(pic[head + 1, x4]) == (50, 50, 50)  # background dimmed
    assert tuple(pic[head, w + gap]) == (255, 255, 255) and tuple(pic[head, w + gap + 2]) == (0, 0, 0)  # GT panel


def test_write_overlays_and_histogram(tmp_path):
    mask = np.eye(6, dtype=bool)
    selection = {"worst": [("1:0", 0.1, mask)], "best": [("2:0", 0.9, mask), ("3:0", 0.8, mask)]}

    def load(sample_id):
        if sample_id == "3:0":
            raise OSError("image vanished")
        return np.zeros((6, 6, 3), np.uint8), mask, "patient-abc_frame_1.jpg"

    paths, problems = write_overlays(selection, load, tmp_path / "overlays")
    names = sorted(p.name for p in paths)
    assert names == ["best_01_2-0_patient-abc_frame_1.png", "worst_01_1-0_patient-abc_frame_1.png"]
    assert len(problems) == 1 and "3:0" in problems[0] and "image vanished" in problems[0]
    assert Image.open(paths[0]).size[1] == 6 * 43 + 40  # enlarged to >= 256 px
    hist = plot_dice_histogram(np.array([0.1, 0.5, np.nan, 0.9]), tmp_path / "dice_hist.png")
    assert Image.open(hist).format == "PNG"


# ------------------------------------------------------------------------- which records an evaluation covers


def test_invalid_records_get_rows_in_the_split_of_their_patient(tmp_path):
    from sa2va_ray.config import load_config
    from sa2va_ray.data.patients import group_id
    from sa2va_ray.data.synthetic import generate_synthetic_set
    from sa2va_ray.evaluate.pipeline import collect_eval_inputs

    ann = generate_synthetic_set(tmp_path / "data", patients=4, frames=2, size=32, seed=5)
    recs = json.loads(ann.read_text())
    ids = [group_id(r["image"]) for r in recs]
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", f"data.annotations={ann}", "data.val_fraction=0.5",
                             f"data.images_dir={ann.parent / 'images'}"])
    val_ids = {group_id(s.image) for s in collect_eval_inputs(cfg).samples}
    train_id = next(i for i in ids if i not in val_ids)
    val_id = next(iter(val_ids))
    bad = {"mask": recs[0]["mask"] * 2, "text": ["blood vessel", "aorta"]}
    recs += [
        dict(bad, image=f"Val_Patient({val_id})_x_frame_000001.jpg"),  # missing image, patient in val
        dict(bad, image=f"Train_Patient({train_id})_x_frame_000001.jpg"),  # patient in train: not evaluated here
        dict(bad, image="Only_Bad(0000000077)_x_frame_000001.jpg"),  # patient without any valid record
        {"image": recs[0]["image"], "mask": recs[0]["mask"], "text": "blood vessel"},  # text not a list
    ]
    ann.write_text(json.dumps(recs))
    inputs = collect_eval_inputs(cfg)
    assert {group_id(s.image) for s in inputs.samples} == val_ids  # the split itself is unchanged
    rows = pd.DataFrame(inputs.failed_rows)
    n = len(recs)
    assert list(rows["sample_id"]) == [f"{n - 4}:0", f"{n - 4}:1", f"{n - 2}:0", f"{n - 2}:1"] + (
        [f"{n - 1}:0"] if group_id(recs[0]["image"]) in val_ids else [])
    assert set(rows["error_code"]) <= {"missing_image", "invalid_record"} and (rows["status"] == "error").all()
    assert rows["error"].str.contains("missing_image: ").sum() == 4
    assert inputs.n_records == len(inputs.samples) + rows["record_index"].nunique()
