"""The evaluate and compare jobs on a local Ray: a small synthetic split with bad records mixed in.

Bad records cover every way a row can fail: missing image, truncated image, unparseable texts (validation),
an image deleted after validation (decode in the Ray task), a text the model refuses (prediction, inside a batch
of good samples). One image has another size than the rest (variable-shaped arrays through Ray Data).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sa2va_ray.data.synthetic import generate_synthetic_set

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "demo.yaml"
PATIENT_ID = re.compile(r"\(\d{10}\)")
SALT = "evaluate-job-test-salt-0123456789"


def _load_job(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_job", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _scaled(mask, sx, sy):
    return [[[v * (sx if i % 2 == 0 else sy) for i, v in enumerate(poly)] for poly in m] for m in mask]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Synthetic set (3 patients x 2 frames, 64 px) + 7 extra records; two tiny models (seeds 0 and 1)."""
    from sa2va_ray.model import build_tiny_sa2va

    root = tmp_path_factory.mktemp("evaljob")
    ann = generate_synthetic_set(root / "data", patients=3, frames=2, size=64, seed=3)
    images = ann.parent / "images"
    recs = json.loads(ann.read_text())
    first = recs[0]
    broken = "Broken_File(0000000002)_1-1_1_0000000A_frame_000001.jpg"
    data = (images / first["image"]).read_bytes()
    (images / broken).write_bytes(data[: len(data) // 3])  # truncated JPEG
    resized = "Resized_One(0000000003)_1-1_1_0000000B_frame_000002.jpg"
    Image.open(images / recs[3]["image"]).resize((80, 48)).save(images / resized)
    doomed = "Deleted_Later(0000000004)_1-1_1_0000000C_frame_000003.jpg"
    shutil.copy(images / recs[4]["image"], images / doomed)
    two = recs[1]["mask"][0]
    recs += [
        {"image": "Ghost_Patient(0000000001)_1-1_1_00000009_frame_000001.jpg", "mask": first["mask"],
         "text": ["blood vessel"]},  # 6: missing image
        {"image": broken, "mask": first["mask"], "text": ["blood vessel"]},  # 7: truncated
        {"image": first["image"], "mask": first["mask"], "text": []},  # 8: no texts -> one row, text ""
        {"image": recs[1]["image"], "mask": [two, two], "text": ["blood vessel", "the coronary tree"]},  # 9: 2 rows
        {"image": recs[2]["image"], "mask": recs[2]["mask"], "text": ["[SEG] vessel"]},  # 10: reserved token
        {"image": resized, "mask": _scaled(recs[3]["mask"], 80 / 64, 48 / 64), "text": ["blood vessel"]},  # 11
        {"image": doomed, "mask": recs[4]["mask"], "text": ["blood vessel"]},  # 12: deleted after validation
    ]
    ann.write_text(json.dumps(recs))
    salt_file = root / "salt.txt"
    salt_file.write_text(SALT + "\n")
    build_tiny_sa2va(seed=0).save_pretrained(root / "model0")
    build_tiny_sa2va(seed=1).save_pretrained(root / "model1")
    overrides = [
        f"data.annotations={ann}", f"data.val_annotations={ann}", f"data.images_dir={images}",
        "data.pseudonymise=true", f"data.salt_file={salt_file}", "eval.num_actors=2", "eval.batch_size=4",
        "eval.num_overlays=1", "eval.n_boot=200",
    ]  # fmt: skip
    return {"root": root, "images": images, "doomed": doomed, "overrides": overrides}


@pytest.fixture(scope="module")
def evaluated(setup, ray_cluster):
    """Run the evaluate job once (strict, so it must exit 1 after writing everything)."""
    from sa2va_ray.evaluate import pipeline

    original = pipeline.collect_eval_inputs

    def collect_then_delete(cfg):  # the image changes after validation: decoding in the Ray task fails
        inputs = original(cfg)
        (setup["images"] / setup["doomed"]).unlink()
        return inputs

    pipeline.collect_eval_inputs = collect_then_delete
    try:
        out = setup["root"] / "run"
        with warnings.catch_warnings(record=True) as caught:  # every warning, also those shown once before
            warnings.simplefilter("always")
            rc = _load_job("evaluate").main(["--config", str(CONFIG), "--strict", f"output_dir={out}",
                                             f"model.path={setup['root'] / 'model0'}", *setup["overrides"]])
    finally:
        pipeline.collect_eval_inputs = original
    OUR_WARNINGS.extend(w for w in caught if _is_ours(w.filename))
    return rc, out / "eval"


OUR_WARNINGS: list[warnings.WarningMessage] = []
"""Warnings whose reported location is our code (a deprecated Ray knob is reported at the line that uses it)."""


def _is_ours(filename: str) -> bool:
    path = Path(filename).resolve()
    return path.is_relative_to(ROOT / "sa2va_ray") or path.parent == ROOT / "jobs"


def test_one_row_per_record_text_and_failures_marked(evaluated):
    rc, eval_dir = evaluated
    assert rc == 1  # --strict with failed samples
    df = pd.read_parquet(eval_dir / "samples.parquet")
    assert pd.read_csv(eval_dir / "samples.csv").shape[0] == len(df) == 14
    assert df["sample_id"].is_unique and sorted(df["record_index"].unique()) == list(range(13))
    codes = dict(zip(df["sample_id"], df["error_code"].fillna("")))
    assert codes["6:0"] == "missing_image" and codes["7:0"] == "unreadable_image" and codes["8:0"] == "empty_text"
    assert codes["10:0"] == "reserved_token" and codes["12:0"] == "decode_error"  # caught by validation
    assert df.set_index("sample_id").loc["8:0", "text"] == ""
    ok = df[df["status"] == "ok"]
    assert set(ok["sample_id"]) == {"0:0", "1:0", "2:0", "3:0", "4:0", "5:0", "9:0", "9:1", "11:0"}
    assert ok[["iou", "dice", "cldice", "betti0_error"]].notna().all().all() and ok["pred_hash"].str.len().eq(40).all()
    assert (ok.set_index("sample_id").loc["11:0", ["height", "width"]] == [48, 80]).all()  # own size kept
    assert df[df["status"] == "error"][["dice", "iou"]].isna().all().all()
    assert ok["model_fingerprint"].nunique() == 1


def test_summary_counts_and_files(evaluated, setup):
    _, eval_dir = evaluated
    s = json.loads((eval_dir / "summary.json").read_text())
    assert (s["n_records"], s["n_samples"], s["n_ok"], s["n_failed"], s["n_failed_records"]) == (13, 14, 9, 5, 5)
    assert s["errors_by_code"] == {"missing_image": 1, "unreadable_image": 1, "empty_text": 1, "reserved_token": 1,
                                   "decode_error": 1}
    fp = json.loads((setup["root"] / "model0" / "fingerprint.json").read_text())["model"] \
        if (setup["root"] / "model0" / "fingerprint.json").exists() else s["model_fingerprint"]
    assert s["model_fingerprint"] == fp and len(fp) == 64
    assert s["n_patients"] == 3 + 4  # the synthetic patients and the four extra ones (bad records included)
    for m in ("iou", "dice", "precision", "recall", "accuracy", "cldice", "hd95", "betti0_error", "betti1_error"):
        assert {"mean", "ci_low", "ci_high", "median", "n", "n_nan"} <= set(s["metrics"][m])
        assert s["metrics"][m]["n"] + s["metrics"][m]["n_nan"] == 9
    assert 0.0 <= s["giou"] <= 1.0 and 0.0 <= s["ciou"] <= 1.0
    assert sum(s["rows_per_worker"].values()) == 10  # every row that reached the actors (decode errors pass through)
    assert "| dice |" in (eval_dir / "summary.md").read_text()
    assert (eval_dir / "dice_hist.png").stat().st_size > 0
    overlays = sorted(p.name.split("_")[0] for p in (eval_dir / "overlays").glob("*.png"))
    assert overlays == ["best", "random", "worst"]


def test_patient_ids_are_pseudonymised_everywhere(evaluated):
    _, eval_dir = evaluated
    for f in (p for p in eval_dir.parent.rglob("*") if p.is_file()):  # the salt is never written
        assert SALT.encode() not in f.read_bytes(), f"the salt is in {f}"
    for name in ("samples.csv", "summary.md", "summary.json"):
        text = (eval_dir / name).read_text()
        assert not PATIENT_ID.search(text), f"patient id in {name}"
    assert not any(PATIENT_ID.search(p.name) for p in (eval_dir / "overlays").iterdir())
    df = pd.read_csv(eval_dir / "samples.csv")
    assert df["patient"].str.startswith("patient-").all() and df["image"].str.startswith("patient-").all()


def test_compare_same_evaluation_is_identical(evaluated, setup, capsys):
    _, eval_dir = evaluated
    out = setup["root"] / "cmp_same"
    rc = _load_job("compare").main(["--config", str(CONFIG), f"output_dir={out}", f"compare.a={eval_dir}",
                                    f"compare.b={eval_dir.parent}", *setup["overrides"]])
    verdict = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("verdict:")]
    assert rc == 0 and len(verdict) == 1 and "identical" in verdict[0] and "differ" not in verdict[0]


def test_compare_against_another_model_differs(evaluated, setup, capsys):
    _, eval_dir = evaluated
    out = setup["root"] / "cmp_other"
    rc = _load_job("compare").main(["--config", str(CONFIG), f"output_dir={out}", f"compare.a={eval_dir}",
                                    f"compare.b={setup['root'] / 'model1'}", *setup["overrides"],
                                    "eval.num_actors=1"])
    verdict = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("verdict:")]
    assert rc == 0 and len(verdict) == 1 and "differ" in verdict[0] and "identical" not in verdict[0]
    assert (out / "compare" / "b_eval" / "samples.parquet").is_file()  # model b evaluated on the same data
    paired = pd.read_csv(out / "compare" / "paired.csv")
    assert len(paired) == 14 and (paired["present"] == "both").all()
    assert "same fingerprint: **no**" in (out / "compare" / "summary.md").read_text()


def test_evaluation_leaves_the_process_wide_data_context_alone(evaluated):
    import ray.data

    from sa2va_ray.evaluate.pipeline import ACTOR_START_TIMEOUT_S

    ctx = ray.data.DataContext.get_current()  # the job ran in this process; its settings stay on its own dataset
    assert ctx.wait_for_min_actors_s != ACTOR_START_TIMEOUT_S


def test_no_deprecation_warning_raised_from_our_code(evaluated):
    """No deprecated Ray Data knob (``ray_remote_args``, ``actor_locality_enabled``, ...) in the evaluate path."""
    deprecations = [w for w in OUR_WARNINGS if issubclass(w.category, DeprecationWarning)]
    assert not deprecations, [f"{w.filename}:{w.lineno}: {w.message}" for w in deprecations]


def test_sequence_mode_scores_runs(evaluated, setup, ray_cluster):
    """eval.mode=sequence on the same records: one row per record-text still, plus run_id/frame and runs.parquet;
    run ids are pseudonymised like image names."""
    out = setup["root"] / "sequence"
    rc = _load_job("evaluate").main(["--config", str(CONFIG), f"output_dir={out}", "eval.mode=sequence",
                                     "eval.sequence_k=2", f"model.path={setup['root'] / 'model0'}",
                                     *setup["overrides"]])
    assert rc == 0
    eval_dir = out / "eval"
    frame_rows = pd.read_parquet(evaluated[1] / "samples.parquet")
    rows = pd.read_parquet(eval_dir / "samples.parquet")
    assert sorted(rows["sample_id"]) == sorted(frame_rows["sample_id"])
    ok = rows[rows["status"] == "ok"]
    assert ok["run_id"].notna().all() and ok["frame"].notna().all() and ok["boundary_f"].between(0, 1).all()
    runs = pd.read_parquet(eval_dir / "runs.parquet")
    assert len(runs) >= 3 and set(runs["run_id"]) <= set(ok["run_id"])
    assert runs["jf"].between(0, 1).all() and (runs["frames"] >= 1).all()
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["runs"]["n_runs"] == runs["run_id"].nunique()
    assert "## Runs (eval.mode=sequence)" in (eval_dir / "summary.md").read_text()
    for name in ("runs.csv", "samples.csv", "summary.md"):
        assert not PATIENT_ID.search((eval_dir / name).read_text()), f"patient id in {name}"


def test_default_threshold_is_never_chosen_on_the_reported_set(evaluated):
    """No calibration: the numbers are at 0.5 whatever the curve of this set says; the curve agrees with them."""
    _, eval_dir = evaluated
    s = json.loads((eval_dir / "summary.json").read_text())
    assert (s["threshold"]["value"], s["threshold"]["source"]) == (0.5, "default")
    curve = pd.read_csv(eval_dir / "threshold_curve.csv")
    assert len(curve) == 19 and (curve["n"] == s["n_ok"]).all()
    at_half = curve.loc[(curve["threshold"] - 0.5).abs() < 1e-9].iloc[0]
    assert at_half["dice"] == pytest.approx(s["metrics"]["dice"]["mean"], abs=1e-12)
    assert at_half["cldice"] == pytest.approx(s["metrics"]["cldice"]["mean"], abs=1e-12)
    assert s["threshold_curve"]["dice_at_threshold"] == pytest.approx(s["metrics"]["dice"]["mean"], abs=1e-12)
    assert (eval_dir / "threshold_curve.png").stat().st_size > 0
    assert "no calibrated threshold" in (eval_dir / "summary.md").read_text()


def test_calibrate_on_validation_then_evaluate_a_held_out_set(setup, ray_cluster):
    """calibrate writes postprocess.json from the validation records; a held-out set is scored at that threshold;
    the validation set itself is scored at 0.5 with the calibrated value flagged; probability maps are written."""
    root = setup["root"]
    recs = json.loads((root / "data" / "annotations.json").read_text())
    (root / "val.json").write_text(json.dumps(recs[:4]))
    (root / "test.json").write_text(json.dumps(recs[4:6]))
    model = root / "model_cal"
    shutil.copytree(root / "model0", model)
    base = [a for a in setup["overrides"] if not a.startswith(("data.annotations", "data.val_annotations"))]
    base += [f"data.annotations={root / 'val.json'}", f"model.path={model}"]
    out = root / "calibrated"
    assert _load_job("calibrate").main(["--config", str(CONFIG), f"output_dir={out}",
                                        f"data.val_annotations={root / 'val.json'}", *base]) == 0
    pp = json.loads((model / "postprocess.json").read_text())
    curve = pd.read_csv(out / "calibration" / "threshold_curve.csv")
    assert pp["value"] == pytest.approx(curve["dice"].max()) and pp["metric"] == "dice"
    assert pp["chosen_on"]["n_samples"] == 4 and pp["chosen_on"]["split"] == "val_annotations"
    pp["threshold"] = 0.3  # a value the test can tell apart from 0.5 whatever this untrained model's curve is
    (model / "postprocess.json").write_text(json.dumps(pp))

    rc = _load_job("evaluate").main(["--config", str(CONFIG), f"output_dir={out / 'test'}", "eval.save_probs=true",
                                     "eval.save_masks=png", f"data.val_annotations={root / 'test.json'}", *base])
    assert rc == 0
    s = json.loads((out / "test" / "eval" / "summary.json").read_text())
    t = s["threshold"]
    assert (t["value"], t["source"], t["same_set"], t["calibrated"]) == (0.3, "postprocess.json", False, None)
    rows = pd.read_parquet(out / "test" / "eval" / "samples.parquet")
    assert (rows["threshold"] == 0.3).all()
    held_out = pd.read_csv(out / "test" / "eval" / "threshold_curve.csv")
    at = held_out.loc[(held_out["threshold"] - 0.3).abs() < 1e-9, "dice"].iloc[0]
    assert s["metrics"]["dice"]["mean"] == pytest.approx(at, abs=1e-12)  # the numbers are those at 0.3
    index = pd.read_csv(out / "test" / "eval" / "probs" / "index.csv")
    assert len(index) == 2 and not PATIENT_ID.search((out / "test" / "eval" / "probs" / "index.csv").read_text())
    for name in index["prob_file"]:
        prob = np.load(out / "test" / "eval" / "probs" / name)["prob"]
        assert prob.dtype == np.float16 and prob.shape == (64, 64)
    pngs = sorted((out / "test" / "eval" / "masks").glob("*.png"))  # named by the pseudonymised image name
    assert len(pngs) == 2 and not any(PATIENT_ID.search(p.name) for p in pngs)
    by_image = rows.set_index("image")
    for p in pngs:
        mask = np.asarray(Image.open(p)) > 0
        row = by_image.loc[p.stem + ".jpg"]
        assert mask.shape == (64, 64) and mask.sum() == row["pred_area"]

    rc = _load_job("evaluate").main(["--config", str(CONFIG), f"output_dir={out / 'val'}", "eval.save_masks=coco",
                                     f"data.val_annotations={root / 'val.json'}", *base])
    s = json.loads((out / "val" / "eval" / "summary.json").read_text())
    assert rc == 0 and (s["threshold"]["value"], s["threshold"]["calibrated"]) == (0.5, 0.3)
    assert "this same set" in (out / "val" / "eval" / "summary.md").read_text()
    from pycocotools.coco import COCO

    gt = COCO(str(out / "val" / "eval" / "coco_gt.json"))
    dt = gt.loadRes(str(out / "val" / "eval" / "coco_results.json"))
    assert len(dt.getAnnIds()) == 4 and len(gt.getImgIds()) == 4
