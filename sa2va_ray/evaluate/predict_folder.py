"""Prediction without labels (``jobs/predict.py``): a folder of images (or one run of it) and one text, through the
evaluation's Ray Data pipeline, to mask PNGs (or COCO results) and ``predictions.csv``.

Every file the glob selects gets a row: images that cannot be used (not an image, unreadable, a symlink leading out of
the folder, too many pixels) are ``status=error`` rows named in the console and the table, never dropped; with
``--strict`` any of them stops the job before the model is loaded. The text is checked once, like training text
(reserved tokens, length for the model). The threshold is the model's calibrated one when it has ``postprocess.json``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from sa2va_ray.config import Config, ConfigError
from sa2va_ray.data.annotations import Sample
from sa2va_ray.evaluate.calibration import resolve_threshold
from sa2va_ray.evaluate.inputs import EvalInputs, absolute_path
from sa2va_ray.evaluate.mask_outputs import MaskWriter, mask_file_name
from sa2va_ray.evaluate.table import empty_row, finish_table, mark_error

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
PREDICTION_COLUMNS = ("image", "patient", "text", "status", "error_code", "error", "height", "width", "pred_area",
                      "score", "threshold", "mask_file")


def collect_folder(cfg: Config) -> EvalInputs:
    """The folder's images as samples with one text and no masks; unusable files as error rows.

    Raises:
        ConfigError: no folder or text, a folder that does not exist, nothing selected, or a text the model refuses.
    """
    from sa2va_ray.data.images import open_image_header, resolve_image_path
    from sa2va_ray.data.patients import DEFAULT_GROUP_REGEX
    from sa2va_ray.data.prepare import start_pseudonymising
    from sa2va_ray.data.runs import parse_run
    from sa2va_ray.data.text_rules import text_rules_for_config

    p = cfg.predict
    if not p.images or not p.text.strip():
        raise ConfigError("predict.images (a folder) and predict.text (what to segment) must be set")
    folder = Path(p.images)
    if not folder.is_dir():
        raise ConfigError(f"predict.images={p.images} is not a folder")
    names = sorted(f.name for f in folder.glob(p.glob) if f.suffix.lower() in IMAGE_SUFFIXES and not f.is_dir())
    regex = cfg.data.run_regex or None
    if p.run:
        frames = [(parse_run(n, regex), n) for n in names]
        names = [n for r, n in sorted((r, n) for r, n in frames if r and r[0] == p.run)]
    if not names:
        what = f" of run {p.run!r}" if p.run else ""
        raise ConfigError(f"predict.images={p.images}: no image files{what} match predict.glob={p.glob!r}")
    rules = text_rules_for_config(cfg)
    samples, failed = [], []
    for i, name in enumerate(names):
        try:
            path = resolve_image_path(folder, name, allow_symlinks_outside=cfg.data.allow_symlinks_outside)
            with open_image_header(path) as im:
                w, h = im.size
            problems = rules.check([p.text], h, w)
            if problems:
                raise ConfigError(f"predict.text: {problems[0][1]}")
        except ConfigError:
            raise
        except Exception as e:  # one line per unusable file, kept as its row
            failed.append(mark_error(empty_row(f"{i}:0", i, 0, name, p.text), "unreadable_image",
                                     f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
            continue
        samples.append(Sample(index=i, image=name, texts=[p.text], masks=[[]], record={}))
    inputs = EvalInputs(samples, failed, absolute_path(str(folder)), f"(folder {folder})", len(names),
                        cfg.data.group_regex or DEFAULT_GROUP_REGEX)
    inputs.pseudonymiser = start_pseudonymising(cfg, inputs.group_regex, names)
    return inputs


def run_prediction(cfg: Config, inputs: EvalInputs, out_dir: str | Path) -> pd.DataFrame:
    """Predict every sample of ``inputs`` (Ray must be initialised); write masks and ``predictions.csv``.

    Returns:
        The predictions table as written.
    """
    from sa2va_ray.evaluate.pipeline import run_eval_pipeline

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    use = resolve_threshold(cfg.eval.threshold, cfg.model.path, "", False)
    fmt = cfg.eval.save_masks if cfg.eval.save_masks != "none" else "png"
    print(f"[predict] {len(inputs.samples)} image(s) of {inputs.images_dir}, text {cfg.predict.text!r}, "
          f"threshold {use.value:.2f} ({use.source}), masks as {fmt}", flush=True)
    writer = MaskWriter(out, fmt, inputs.display_name, inputs.samples)
    predicted = run_eval_pipeline(cfg, inputs, None, threshold=use.value, mask_writer=writer, ground_truth=False) \
        if inputs.samples else pd.DataFrame()
    ok = predicted[predicted["status"] == "ok"] if len(predicted) else predicted
    writer.finish({int(r.record_index): (int(r.height), int(r.width)) for r in ok.itertuples()})
    table = finish_table([predicted, pd.DataFrame(inputs.failed_rows)], inputs.patient_of, inputs.pseudonymiser)
    table["mask_file"] = [mask_file_name(n, t) if s == "ok" and fmt == "png" else ""
                          for n, t, s in zip(table["image"], table["text_index"], table["status"])]
    table = table[[c for c in PREDICTION_COLUMNS if c in table.columns]]
    table.to_csv(out / "predictions.csv", index=False)
    n_err = int((table["status"] != "ok").sum())
    print(f"[predict] {len(table) - n_err} mask(s) written to {out / ('masks' if fmt == 'png' else '')}, {n_err} "
          f"failed, in {time.perf_counter() - t0:.0f} s; table: {out / 'predictions.csv'}", flush=True)
    for r in table[table["status"] != "ok"].head(20).itertuples():
        print(f"[predict] failed: {r.error}", flush=True)
    return table


def describe_failures(inputs: EvalInputs) -> list[str]:
    """One line per file that cannot be used (for ``--strict``)."""
    return [inputs.hide(str(r["error"])) for r in inputs.failed_rows]

