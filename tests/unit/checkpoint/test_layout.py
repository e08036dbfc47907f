"""One rule for what a model path is: loading, the jobs' pre-flight and evaluation agree (issue 14: a shards-only
checkpoint used to export but be refused by evaluation)."""

from __future__ import annotations

import json

import pytest

from sa2va_ray.checkpoint.integrity import IntegrityError, check_model_path
from sa2va_ray.checkpoint.layout import (
    CONFIG_FILE,
    STATE_FILE,
    TRAINABLE_FILE,
    is_training_checkpoint,
    model_path_kind,
    read_train_state,
)
from sa2va_ray.config import Config
from sa2va_ray.evaluate.inputs import check_model_path as check_eval_model_path
from tests.unit.checkpoint.test_integrity import make_checkpoint, make_model_dir


def _shards_only(path):
    d = make_checkpoint(path)
    (d / TRAINABLE_FILE).unlink()
    (d / STATE_FILE).unlink()  # only the run's config and the DeepSpeed shards are left
    return d


def test_every_reader_takes_a_shards_only_checkpoint(tmp_path):
    d = _shards_only(tmp_path / "ckpt")
    assert (d / CONFIG_FILE).is_file() and is_training_checkpoint(d) and model_path_kind(d) == "checkpoint"
    check_model_path(str(d))  # the jobs' pre-flight
    cfg = Config()
    cfg.model.path = str(d)
    check_eval_model_path(cfg)  # evaluation's


def test_kinds_and_refusals(tmp_path):
    assert model_path_kind(make_model_dir(tmp_path / "model")) == "model"
    assert model_path_kind(make_checkpoint(tmp_path / "ckpt", step=7)) == "checkpoint"
    assert read_train_state(tmp_path / "ckpt")["step"] == 7 and read_train_state(tmp_path) == {}
    (tmp_path / "empty").mkdir()
    for path, why in ((tmp_path / "empty", "neither a model directory"), (tmp_path / "nowhere", "does not exist")):
        assert model_path_kind(path) is None
        with pytest.raises(IntegrityError, match=why):
            check_model_path(str(path))
        cfg = Config()
        cfg.model.path = str(path)
        with pytest.raises(FileNotFoundError, match=why):
            check_eval_model_path(cfg)
    (tmp_path / "empty" / CONFIG_FILE).write_text(json.dumps({}))  # a run config without shards is no checkpoint
    assert model_path_kind(tmp_path / "empty") is None
