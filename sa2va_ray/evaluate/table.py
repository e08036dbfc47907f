"""The per-sample table of an evaluation (``eval/samples.parquet`` and ``eval/samples.csv``), owned in one place.

One row per record and text, with the columns :data:`OUTPUT_COLUMNS` (+ ``patient``); :func:`empty_row` and
:func:`mark_error` make every row, whoever fills it in. Rows come from three sources and are merged here: the
predictor actors (scored or failed samples), the records that failed validation (:func:`validation_error_rows`) and
samples the pipeline never returned (:func:`missing_rows`). :func:`finish_table` then adds the ``patient`` column,
pseudonymises when asked (:func:`pseudonymise_table`, the run's one
:class:`~sa2va_ray.data.pseudonymise.Pseudonymiser`) and orders rows and columns; :func:`write_sample_tables` writes
both files.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sa2va_ray.data.annotations import Problem, Sample
from sa2va_ray.data.pseudonymise import Pseudonymiser
from sa2va_ray.evaluate.metrics import OVERLAP_KEYS, VESSEL_KEYS

METRIC_COLUMNS = OVERLAP_KEYS + VESSEL_KEYS
"""Per-sample metric columns (float; NaN on error rows and where a metric is undefined, e.g. hd95)."""

ID_COLUMNS = ("sample_id", "record_index", "text_index", "image", "text", "status", "error_code", "error")
OUTPUT_COLUMNS = ID_COLUMNS + ("height", "width") + METRIC_COLUMNS + ("pred_hash", "model_fingerprint", "worker")
"""Columns of every row the predictor emits (the pipeline adds ``patient``; the driver drops ``pred_packed``)."""

CURVE_COLUMNS = ("curve_tp", "curve_pred", "curve_cldice")
"""Per-sample threshold-curve lists (:func:`sa2va_ray.evaluate.threshold.sample_curve`); the driver turns them
into ``threshold_curve.csv`` and drops them from the written tables."""

PACKED_COLUMN = "pred_packed"
"""Bit-packed prediction (``np.packbits`` of the flat (H, W) mask); only kept on the driver for overlays."""


def pack_mask(mask: np.ndarray) -> bytes:
    """Bit-pack a boolean (H, W) mask (8 pixels per byte)."""
    return np.packbits(np.asarray(mask, dtype=bool).ravel()).tobytes()


def unpack_mask(packed: bytes, height: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_mask`: the boolean (H, W) mask."""
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=height * width)
    return bits.astype(bool).reshape(height, width)


def hash_mask(mask: np.ndarray) -> str:
    """SHA-1 of a mask's shape and packed bits: equal hashes mean identical predictions."""
    m = np.asarray(mask, dtype=bool)
    return hashlib.sha1(f"{m.shape[0]}x{m.shape[1]}|".encode() + pack_mask(m)).hexdigest()


def empty_row(sample_id: str, record_index: int, text_index: int, image: str, text: str) -> dict[str, Any]:
    """A row with every output column, metrics NaN, status ``ok`` (callers fill in the rest)."""
    row: dict[str, Any] = {
        "sample_id": sample_id, "record_index": int(record_index), "text_index": int(text_index),
        "image": image, "text": text, "status": "ok", "error_code": "", "error": "", "height": 0, "width": 0,
        "pred_hash": "", "model_fingerprint": "", "worker": "",
    }  # fmt: skip
    row.update({k: float("nan") for k in METRIC_COLUMNS})
    return row


def mark_error(row: dict[str, Any], code: str, message: str) -> dict[str, Any]:
    """Turn a row into an error row (metrics NaN) and return it."""
    row.update({k: float("nan") for k in METRIC_COLUMNS})
    row.update(status="error", error_code=code, error=message, pred_hash="")
    return row


def validation_error_rows(raw: list[Any], problems: list[Problem], indices: set[int]) -> list[dict[str, Any]]:
    """Error rows for invalid records: one per text, or one with an empty text when the texts do not parse.

    Args:
        raw: the annotation file's raw records.
        problems: validation problems (several per record possible).
        indices: record indices to produce rows for.
    """
    by_record: dict[int, list[Problem]] = defaultdict(list)
    for p in problems:
        if p.index in indices:
            by_record[p.index].append(p)
    rows = []
    for index in sorted(by_record):
        probs = by_record[index]
        rec = raw[index] if 0 <= index < len(raw) else None
        texts = rec.get("text") if isinstance(rec, dict) else None
        if not (isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts)):
            texts = [""]
        image = rec.get("image") if isinstance(rec, dict) and isinstance(rec.get("image"), str) else ""
        message = "; ".join(f"{p.problem}: {p.message}" for p in probs)
        for t, text in enumerate(texts):
            row = empty_row(f"{index}:{t}", index, t, image, text)
            rows.append(mark_error(row, probs[0].problem, message))
    return rows


def missing_rows(table: pd.DataFrame, samples: Iterable[Sample]) -> tuple[pd.DataFrame, list[str]]:
    """Exactly one row per expected sample: duplicates dropped, missing ones added as ``pipeline_error`` rows.

    Returns:
        (the table, the ids of the samples that were missing).
    """
    expected = {s.sample_id(t): (s, t) for s in samples for t in range(len(s.texts))}
    if len(table):
        table = table.drop_duplicates("sample_id", keep="first")
    seen = set(table["sample_id"]) if len(table) else set()
    missing = [sid for sid in expected if sid not in seen]
    if missing:
        rows = [mark_error(empty_row(sid, s.index, t, s.image, s.texts[t]), "pipeline_error",
                           "no result came back from the pipeline") for sid, (s, t) in
                ((sid, expected[sid]) for sid in missing)]
        table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True) if len(table) else pd.DataFrame(rows)
    return table, missing


def finish_table(
    parts: Iterable[pd.DataFrame], patient_of: Callable[[str], str], pseudonymiser: Pseudonymiser | None = None
) -> pd.DataFrame:
    """The table as written: the parts concatenated, ``patient`` added, pseudonymised when asked, ordered.

    Args:
        parts: row frames (predicted rows, validation error rows).
        patient_of: raw image name -> patient id (the run's one rule, :func:`sa2va_ray.data.patients.group_id`).
        pseudonymiser: with ``data.pseudonymise``, the run's pseudonymiser.
    """
    table = pd.concat([p for p in parts if len(p)], ignore_index=True)
    table["patient"] = [patient_of(n) if n else "" for n in table["image"]]
    if pseudonymiser is not None:
        table = pseudonymise_table(table, pseudonymiser)
    return order_columns(table)


def pseudonymise_table(df: pd.DataFrame, pseudonymiser: Pseudonymiser) -> pd.DataFrame:
    """Replace patient names/ids in ``image``, ``patient``, ``error`` (and ``run_id``) by their salted pseudonyms."""
    out = df.copy()
    out["image"] = [pseudonymiser.name(n) if isinstance(n, str) and n else n for n in out["image"]]
    out["patient"] = [pseudonymiser.patient(p) if p else p for p in out["patient"]]
    out["error"] = [pseudonymiser.text(m) if isinstance(m, str) and m else m for m in out["error"]]
    if "run_id" in out.columns:  # a run id is an image name without its frame part: the same patient fields
        out["run_id"] = [pseudonymiser.name(r) if isinstance(r, str) and r else r for r in out["run_id"]]
    return out


def order_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by record and text, the contract columns first (``patient`` after ``image``)."""
    df = df.sort_values(["record_index", "text_index"], kind="stable").reset_index(drop=True)
    first = [c for c in OUTPUT_COLUMNS if c in df.columns]
    if "patient" in df.columns:
        first.insert(first.index("image") + 1, "patient")
    return df[first + [c for c in df.columns if c not in first and c != PACKED_COLUMN]]


def write_sample_tables(df: pd.DataFrame, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``samples.parquet`` and ``samples.csv`` (one row per record-text) and return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = order_columns(df)
    df.to_parquet(out / "samples.parquet", index=False)
    df.to_csv(out / "samples.csv", index=False)
    return out / "samples.parquet", out / "samples.csv"
