"""postprocess.json (the calibrated threshold) travels: checkpoint → loaded model → export (+ adapter) → official
layout → loaded again, and every loaded model predicts with it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sa2va_ray.checkpoint.load import build_checkpoint_model, load_checkpoint_config
from sa2va_ray.export.exporter import export_checkpoint
from sa2va_ray.model.postprocess import POSTPROCESS_FILE, PostprocessError, read_postprocess, write_postprocess
from tests.unit.export.test_export_unit import make_checkpoint, one_torch_thread  # noqa: F401 (autouse fixture)

CHOICE = {"threshold": 0.35, "metric": "dice", "value": 0.8, "value_at_default": 0.7,
          "chosen_on": {"split": "val", "samples_sha": "abc"}}


def test_threshold_travels_through_checkpoint_export_adapter_and_official(tmp_path):
    from sa2va_ray.checkpoint.load import build_base_model
    from sa2va_ray.export.adapter import load_adapter
    from sa2va_ray.export.exporter import export_official
    from sa2va_ray.export.verify import probe_batch
    from sa2va_ray.model import Sa2VAModel

    ckpt = make_checkpoint(tmp_path / "checkpoint_000004")
    write_postprocess(ckpt, CHOICE)
    model, _ = build_checkpoint_model(ckpt)
    assert model.postprocess["threshold"] == 0.35

    exported = export_checkpoint(ckpt, tmp_path / "model", adapter=True)
    for d in (exported, exported / "adapter"):
        assert json.loads((d / POSTPROCESS_FILE).read_text())["chosen_on"] == CHOICE["chosen_on"]
    loaded = Sa2VAModel.from_pretrained(str(exported)).eval()
    assert loaded.postprocess["threshold"] == 0.35
    assert load_adapter(build_base_model(load_checkpoint_config(ckpt)), exported / "adapter").postprocess == \
        loaded.postprocess

    official = export_official(exported, tmp_path / "official", code_from=None)
    assert read_postprocess(official)["threshold"] == 0.35
    assert Sa2VAModel.from_pretrained(str(official)).postprocess["threshold"] == 0.35

    # predict() uses it: the default masks are the probabilities above 0.35, not above 0.5
    images, texts = probe_batch()
    results = loaded.predict(images, texts, return_probs=True)
    for r, mask in zip(results, loaded.predict(images, texts)):
        assert np.array_equal(mask, r.prob > 0.35) and np.array_equal(r.mask, mask)
    loaded.postprocess = None
    assert all(np.array_equal(m, r.prob > 0.5) for m, r in zip(loaded.predict(images, texts), results))


def test_bad_postprocess_files_are_one_line_errors(tmp_path):
    assert read_postprocess(tmp_path) is None and read_postprocess("") is None
    (tmp_path / POSTPROCESS_FILE).write_text("{not json")
    with pytest.raises(PostprocessError, match="postprocess.json: not readable JSON"):
        read_postprocess(tmp_path)
    for bad in ({"threshold": 1.5}, {"threshold": "0.3"}, {"threshold": float("nan")}, [0.3], {"metric": "dice"}):
        (tmp_path / POSTPROCESS_FILE).write_text(json.dumps(bad))
        with pytest.raises(PostprocessError) as e:
            read_postprocess(tmp_path)
        assert "\n" not in str(e.value) and POSTPROCESS_FILE in str(e.value)
    with pytest.raises(PostprocessError):
        write_postprocess(tmp_path, {"threshold": 0})
