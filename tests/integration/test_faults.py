"""Faults a careless user or a dying machine causes, on real processes: each fails fast with one line or recovers.

* a stale ``ray_current_cluster`` file (its head is dead) does not stop a job from starting a local Ray;
* a request the cluster can never hold fails at once, saying what is needed against what the cluster has;
* bad keys, unwritable output dirs and damaged model files are one line and exit code 2, before any Ray work;
* an interrupted evaluation leaves the previous ``eval/`` and ``config.yaml`` as they were.

(A damaged latest checkpoint is in ``test_train_job.py``, beside the run it damages.)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import _stop_cluster
from tests.integration.conftest import job_overrides

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "demo.yaml")
DEAD = "127.0.0.1:1"  # nothing listens on port 1: a job that reaches ray.init would fail naming RAY_ADDRESS


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: a GCS address nobody answers


def test_stale_cluster_file_still_starts_a_local_ray(ray_auth_token):
    tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths must fit 107 characters
    stale = f"127.0.0.1:{_dead_port()}"
    Path(tmp, "ray").mkdir()
    Path(tmp, "ray", "ray_current_cluster").write_text(stale)  # what a killed head leaves behind
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=tmp, PYTHONPATH=str(REPO))
    code = ("import ray; from sa2va_ray.cli import init_ray; init_ray(num_cpus=1); "
            "print('gcs', ray.get_runtime_context().gcs_address); ray.shutdown()")
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    finally:
        _stop_cluster(tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gcs = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("gcs ")]
    assert gcs and gcs[0] != stale


def _job(name: str, *argv: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_ADDRESS=DEAD, PYTHONPATH=str(REPO), **(env_extra or {}))
    return subprocess.run([sys.executable, str(REPO / "jobs" / f"{name}.py"), "--config", CONFIG, *argv],
                          env=env, capture_output=True, text=True, timeout=300)


def _one_line_exit_2(proc: subprocess.CompletedProcess, *words: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "WARNING" not in line]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    for w in words:
        assert w in lines[0], lines[0]
    assert "RAY_ADDRESS" not in lines[0]  # failed before connecting to Ray


def test_bad_keys_and_outputs_are_one_line_before_ray(synthetic_set, tmp_path):
    base = job_overrides(synthetic_set, tmp_path / "out")
    _one_line_exit_2(_job("train", *base, "train.epochs=0"), "train.epochs")
    _one_line_exit_2(_job("train", *base, "train.log_every=0"), "train.log_every")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    _one_line_exit_2(_job("train", *base, f"output_dir={blocker}/run"), "output_dir", "not writable")
    _one_line_exit_2(_job("evaluate", *base, f"data.images_dir={tmp_path}/no_images"), "data.images_dir")
    _one_line_exit_2(_job("train", *base, f"data.annotations={tmp_path}/none.json"), "data.annotations")
    # data that validation can judge on the driver: judged before Ray is reached (RAY_ADDRESS points nowhere)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    _one_line_exit_2(_job("train", *base, f"data.annotations={empty}"), str(empty))
    all_bad = tmp_path / "all_bad.json"
    all_bad.write_text(json.dumps([{"image": "gone_frame_000001.jpg", "mask": [[1, 1, 9, 1, 9, 9]], "text": ["v"]}]))
    _one_line_exit_2(_job("train", *base, f"data.annotations={all_bad}"), str(all_bad))
    _one_line_exit_2(_job("tune", *base, f"data.annotations={all_bad}"), str(all_bad))


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from sa2va_ray.model import build_tiny_sa2va

    d = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_sa2va(seed=0).save_pretrained(str(d))
    return d


@pytest.mark.parametrize("damage", ["truncated_weights", "garbage_config"])
def test_damaged_model_is_named_before_ray(synthetic_set, tiny_model_dir, tmp_path, damage):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    if damage == "truncated_weights":
        f = model / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    else:
        f = model / "config.json"
        f.write_text("{ this is not json")
    argv = [*job_overrides(synthetic_set, tmp_path / "out"), f"model.path={model}"]
    _one_line_exit_2(_job("evaluate", *argv), str(f))


def test_damaged_checkpoint_is_named_before_export(synthetic_set, tmp_path):
    from tests.unit.checkpoint.test_integrity import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "checkpoint")
    shard = ckpt / "deepspeed" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.unlink()  # a rank's shard never arrived
    _one_line_exit_2(_job("export", f"output_dir={tmp_path / 'out'}", f"model.path={ckpt}"), str(shard), "missing")


def test_unsatisfiable_workers_fail_at_once_with_what_is_needed(ray_cluster, synthetic_set, tmp_path, capsys):
    sys.path.insert(0, str(REPO / "jobs"))
    import train  # jobs/train.py

    rc = train.main(["--config", CONFIG, *job_overrides(synthetic_set, tmp_path, "scaling.num_workers=99",
                                                         "scaling.cpus_per_worker=1")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "scaling.num_workers=99" in err and "needs 99 CPU in total" in err and "the cluster has 2 CPU" in err
    assert not list((tmp_path / "ray").rglob("checkpoint_*"))  # no run was started


def test_interrupted_evaluation_keeps_the_previous_outputs(ray_cluster, synthetic_set, tiny_model_dir, tmp_path,
                                                           monkeypatch):
    from sa2va_ray.evaluate import pipeline
    from sa2va_ray.evaluate.table import empty_row, mark_error

    sys.path.insert(0, str(REPO / "jobs"))
    import evaluate  # jobs/evaluate.py

    def fake_predictions(cfg, inputs, selector=None, **kwargs):  # the Ray Data part is not what this test is about
        rows = [mark_error(empty_row(s.sample_id(t), s.index, t, s.image, text), "test", "not predicted")
                for s in inputs.samples for t, text in enumerate(s.texts)]
        return pd.DataFrame(rows)

    out = tmp_path / "out"
    argv = ["--config", CONFIG, *job_overrides(synthetic_set, out, f"model.path={tiny_model_dir}", "eval.n_boot=10")]
    monkeypatch.setattr(pipeline, "run_eval_pipeline", fake_predictions)
    assert evaluate.main(argv) == 0
    first = (out / "eval" / "summary.json").read_text()
    config = (out / "config.yaml").read_text()
    other = tmp_path / "other_model"
    shutil.copytree(tiny_model_dir, other)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C after the tables of the new run were written

    monkeypatch.setattr(pipeline, "write_overlays", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate.main([*argv[:-2], f"model.path={other}", "eval.n_boot=10"])
    assert (out / "eval" / "summary.json").read_text() == first
    assert (out / "config.yaml").read_text() == config and str(other) not in config
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".eval")) == []
    assert json.loads(first)["model_path"] == str(tiny_model_dir)
