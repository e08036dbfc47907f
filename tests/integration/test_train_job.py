"""jobs/train.py on the session's Ray cluster: ZeRO-2/3, resume, fault recovery, health failure, ray job submit."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import job_overrides

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "jobs"))


def _train(argv: list[str]) -> int:
    import train  # jobs/train.py

    return train.main(["--config", str(REPO / "configs/demo.yaml"), *argv])


def _log(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "train_log.csv").open()))


def _checkpoints(out: Path) -> list[Path]:
    return sorted(p.parent for p in (out / "ray").rglob("trainable.safetensors"))


@pytest.fixture(scope="module")
def zero2_run(ray_cluster, synthetic_set, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zero2")
    assert _train(job_overrides(synthetic_set, out, "deepspeed.zero_stage=2")) == 0
    return out


def test_zero2_trains_checkpoints_and_exports(zero2_run):
    rows = _log(zero2_run)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["train/loss"]) < float(rows[0]["train/loss"])
    assert "val/dice" in rows[1] and rows[1]["val/dice"] != ""
    assert json.loads((zero2_run / "deepspeed_config.json").read_text())["zero_optimization"]["stage"] == 2
    ckpts = _checkpoints(zero2_run)
    assert ckpts, "no checkpoint written"
    assert any((c / "deepspeed").is_dir() for c in ckpts)
    model = zero2_run / "model"
    assert (model / "config.json").exists() and (model / "fingerprint.json").exists()
    assert list(model.glob("*.safetensors"))
    assert (zero2_run / "config.yaml").read_text().startswith("# python")


def test_resume_continues_step_count(zero2_run, synthetic_set):
    assert _train(job_overrides(synthetic_set, zero2_run, "train.max_steps=6")) == 0
    steps = [int(r["step"]) for r in _log(zero2_run)]
    assert steps == [1, 2, 3, 4, 5, 6], steps  # steps 1-4 kept, 5-6 new: resumed, not restarted
    lr = [float(r["health/lr"]) for r in _log(zero2_run)]
    assert lr[3] == 0.0 and lr[4] > 0.0  # the cosine follows the new max_steps, not the finished 4-step schedule
    states = [json.loads((c / "train_state.json").read_text())["step"] for c in _checkpoints(zero2_run)]
    assert max(states) == 6


def test_damaged_latest_checkpoint_resumes_from_newest_intact(zero2_run, synthetic_set, capsys):
    run = zero2_run / "ray" / zero2_run.name
    snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
    committed = {r["checkpoint_dir_name"]: int(r["metrics"]["step"]) for r in snapshot["checkpoint_results"]}
    latest = snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]
    intact = max(step for name, step in committed.items() if name != latest)  # num_to_keep=2: one more is kept
    shard = run / latest / "deepspeed" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a rank's copy cut short
    stray = run / "checkpoint_2099-01-01_00-00-00.000000"  # a killed driver's checkpoint, never committed
    shutil.copytree(run / [n for n in committed if n != latest][0], stray)
    rows = _log(zero2_run)
    with (zero2_run / "train_log.csv").open("w", newline="") as f:  # mark the old rows: a resume keeps those before it
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "time_s": "-1"} for r in rows)
    end = committed[latest] + 2
    assert _train(job_overrides(synthetic_set, zero2_run, f"train.max_steps={end}")) == 0
    out = capsys.readouterr().out
    assert f"{shard.relative_to(run)}: truncated" in out and "resuming from the newest intact checkpoint" in out
    rows = _log(zero2_run)
    assert [int(r["step"]) for r in rows] == list(range(1, end + 1))
    kept = [int(r["step"]) for r in rows if r["time_s"] == "-1"]
    assert kept == list(range(1, intact + 1)), kept  # resumed at the intact checkpoint: not the damaged, not step 0
    assert not stray.exists() and (run / "damaged" / latest).is_dir()


def test_zero3_trains_on_images_and_clips(ray_cluster, synthetic_set, tmp_path, capsys):
    """ZeRO-3, with clips of 2 frames mixed into the image rows (train.clip_frames): the same loop trains both."""
    assert _train(job_overrides(synthetic_set, tmp_path, "deepspeed.zero_stage=3", "train.clip_frames=2")) == 0
    assert re.search(r"\[data\] [1-9]\d* clips of 2 frames join the training stream", capsys.readouterr().out)
    rows = _log(tmp_path)
    assert float(rows[-1]["train/loss"]) < float(rows[0]["train/loss"])
    assert json.loads((tmp_path / "deepspeed_config.json").read_text())["zero_optimization"]["stage"] == 3
    assert _checkpoints(tmp_path)


def test_worker_failure_recovers_from_checkpoint(ray_cluster, synthetic_set, tmp_path):
    argv = job_overrides(synthetic_set, tmp_path, "train.fail_at_step=3", "scaling.max_failures=1")
    assert _train(argv) == 0
    assert (tmp_path / ".fault_drill_done").exists()  # the drill did kill a worker
    rows = _log(tmp_path)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]  # recovered from the step-2 checkpoint, finished


def test_lr_zero_fails_the_health_check(ray_cluster, synthetic_set, tmp_path):
    argv = job_overrides(synthetic_set, tmp_path, "train.lr=0.0", "scaling.max_failures=0")
    with pytest.raises(Exception, match="equal the initial ones"):
        _train(argv)


def test_ray_job_submit(ray_cluster, synthetic_set, tmp_path):
    argv = job_overrides(synthetic_set, tmp_path, "train.max_steps=3")
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", ray_cluster.dashboard,
           "--working-dir", str(REPO), "--", "python", "jobs/train.py", "--config", "configs/demo.yaml", *argv]
    for _ in range(3):  # the job agent may still be starting: it answers 'No available agent' then
        proc = subprocess.run(cmd, env=ray_cluster.env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in proc.stdout + proc.stderr:
            break
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SUCCEEDED" in proc.stdout or "succeeded" in proc.stdout
    assert (tmp_path / "model" / "fingerprint.json").exists()


def test_image_gone_after_validation_is_left_out_and_counted(ray_cluster, synthetic_set, tmp_path, monkeypatch):
    import shutil

    from sa2va_ray.data import prepare

    data = tmp_path / "data"
    shutil.copytree(synthetic_set, data)
    validate = prepare.prepare_splits  # the job validates and splits before Ray starts

    def validate_then_delete(cfg):  # the image changes after validation: the workers cannot decode it
        splits = validate(cfg)
        (data / "images" / splits.train[0].image).unlink()
        return splits

    monkeypatch.setattr(prepare, "prepare_splits", validate_then_delete)
    assert _train(job_overrides(data, tmp_path / "run", "train.val_every=4")) == 0
    rows = _log(tmp_path / "run")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]  # the run went on
    assert int(rows[-1]["data/decode_errors"]) >= 1
