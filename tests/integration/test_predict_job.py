"""jobs/predict.py: a folder of unlabeled images (one unusable) and one text, through the Ray Data pipeline, to mask
PNGs at each image's size with the model's calibrated threshold; --strict and a bad text stop before any work."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sa2va_ray.data.synthetic import generate_synthetic_set

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "demo.yaml"


def _job():
    spec = importlib.util.spec_from_file_location("predict_job", ROOT / "jobs" / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from sa2va_ray.model import build_tiny_sa2va

    root = tmp_path_factory.mktemp("predict")
    ann = generate_synthetic_set(root / "data", patients=1, frames=3, size=64, seed=5)
    images = root / "new_images"
    shutil.copytree(ann.parent / "images", images)
    first = sorted(images.iterdir())[0]
    Image.open(first).resize((80, 48)).save(images / "other_size.png")
    (images / "broken.jpg").write_bytes(b"not an image at all")
    (images / "notes.txt").write_text("not selected: not an image file")
    build_tiny_sa2va(seed=0).save_pretrained(root / "model")
    (root / "model" / "postprocess.json").write_text(json.dumps({"threshold": 0.3, "metric": "dice"}))
    return root


def test_masks_for_every_image_with_the_calibrated_threshold(folder, ray_cluster, capsys):
    out = folder / "out"
    rc = _job().main(["--config", str(CONFIG), f"output_dir={out}", f"model.path={folder / 'model'}",
                      f"predict.images={folder / 'new_images'}", "predict.text=blood vessel", "eval.num_actors=1"])
    assert rc == 0
    table = pd.read_csv(out / "predict" / "predictions.csv", keep_default_na=False)
    assert len(table) == 5 and sorted(table["status"]) == ["error"] + ["ok"] * 4  # nothing dropped
    bad = table[table["status"] == "error"].iloc[0]
    assert bad["image"] == "broken.jpg" and "broken.jpg" in bad["error"]
    ok = table[table["status"] == "ok"]
    assert (ok["threshold"].astype(float) == 0.3).all()
    for r in ok.itertuples():
        mask = np.asarray(Image.open(out / "predict" / "masks" / r.mask_file))
        with Image.open(folder / "new_images" / r.image) as im:
            assert mask.shape == (im.height, im.width)
        assert int((mask > 0).sum()) == int(float(r.pred_area))
    assert "threshold 0.30 (postprocess.json)" in capsys.readouterr().out


def test_one_run_and_coco_output(folder, ray_cluster):
    from sa2va_ray.data.runs import parse_run

    names = sorted(p.name for p in (folder / "new_images").glob("*.jpg") if parse_run(p.name))
    run = parse_run(names[0])[0]
    out = folder / "out_run"
    rc = _job().main(["--config", str(CONFIG), f"output_dir={out}", f"model.path={folder / 'model'}",
                      f"predict.images={folder / 'new_images'}", "predict.text=blood vessel", f"predict.run={run}",
                      "eval.save_masks=coco", "eval.num_actors=1"])
    assert rc == 0
    table = pd.read_csv(out / "predict" / "predictions.csv")
    assert list(table["image"]) == names and (table["status"] == "ok").all()  # frame order
    results = json.loads((out / "predict" / "coco_results.json").read_text())
    assert len(results) == 3 and all(set(r) == {"image_id", "category_id", "segmentation", "score"} for r in results)


def test_strict_and_bad_text_stop_before_any_work(folder, capsys):
    base = ["--config", str(CONFIG), f"output_dir={folder / 'never'}", f"model.path={folder / 'model'}",
            f"predict.images={folder / 'new_images'}"]
    assert _job().main([*base, "predict.text=blood vessel", "--strict"]) == 2
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "nothing was predicted" in err
    assert _job().main([*base, "predict.text=the [SEG] vessel"]) == 2
    assert re.search(r"predict.text: .*reserved token", capsys.readouterr().err)
    assert _job().main([*base[:-1], f"predict.images={folder / 'nowhere'}", "predict.text=x"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert not (folder / "never" / "predict").exists()
