"""jobs/tune.py: a 4-trial sweep with ASHA on the session cluster, its leaderboard and best.yaml, and restore."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from sa2va_ray.config import load_config
from tests.integration.conftest import job_overrides

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "jobs"))

# Trial 3 trains BCE only (dice weight 0): its masks collapse to background within a couple of steps, so its val
# Dice at the first rung is the lowest and ASHA stops it (it starts last: at most 2 trials run at once).
SWEEP = [
    "tune.search=grid", "tune.num_samples=1", "tune.max_concurrent_trials=2", "tune.grace_period=1",
    "tune.reduction_factor=2", "tune.export_best=true",
    "loss.mask_weight=1.0", "train.max_steps=6", "train.val_every=2", "train.lr=3e-3", "train.val_max_samples=6",
    "scaling.cpus_per_worker=0.25",
]


def _tune_argv(synthetic_set: Path, out: Path) -> list[str]:
    """The demo sweep with its space replaced by a 4-point grid on the Dice weight."""
    from omegaconf import OmegaConf

    raw = OmegaConf.load(REPO / "configs/tune_demo.yaml")
    raw.tune.space = {"loss.dice_weight": {"type": "grid", "values": [2.0, 2.0, 1.5, 0.0]}}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sweep.yaml"
    path.write_text("# python jobs/tune.py --config sweep.yaml\n" + OmegaConf.to_yaml(raw))
    return ["--config", str(path), *job_overrides(synthetic_set, out), *SWEEP]


@pytest.fixture(scope="module")
def sweep(ray_cluster, synthetic_set, tmp_path_factory) -> Path:
    import tune  # jobs/tune.py

    out = tmp_path_factory.mktemp("sweep")
    assert tune.main(_tune_argv(synthetic_set, out)) == 0
    return out


def test_leaderboard_has_every_trial_sorted_by_val_dice(sweep):
    board = pd.read_csv(sweep / "tune" / "leaderboard.csv")
    assert len(board) == 4
    assert (board["status"] == "ok").all()
    scores = board["best_val/dice"].tolist()
    assert scores == sorted(scores, reverse=True)
    assert "final_train_loss" in board and (sweep / "tune" / "leaderboard.md").exists()


def test_asha_stopped_a_trial_early(sweep):
    board = pd.read_csv(sweep / "tune" / "leaderboard.csv")
    assert board["reports"].max() == 3  # 6 steps, validation every 2
    assert (board["reports"] < 3).sum() >= 1, board[["trial_id", "loss.dice_weight", "reports"]]


def test_best_yaml_loads_and_trains(sweep, synthetic_set, tmp_path):
    import train  # jobs/train.py

    best = sweep / "tune" / "best.yaml"
    cfg = load_config(best)
    assert cfg.loss.dice_weight > 0  # the BCE-only trial cannot be the best
    assert (sweep / "tune" / "best_model" / "fingerprint.json").exists()
    argv = ["--config", str(best), f"output_dir={tmp_path}", "train.max_steps=3", "train.warmup_steps=0"]
    assert train.main(argv) == 0


@pytest.mark.slow  # two sweeps, one killed: ~10 min on 2 cores; `make test-all` runs it
def test_interrupted_sweep_resumes_without_redoing_finished_trials(ray_cluster, synthetic_set, tmp_path):
    cmd = [sys.executable, str(REPO / "jobs/tune.py"), *_tune_argv(synthetic_set, tmp_path),
           "tune.max_concurrent_trials=1"]
    first = subprocess.Popen(cmd, env=ray_cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    finished: list[str] = []
    deadline = time.time() + 600
    for line in first.stdout:  # wait until one trial has finished, then kill the driver
        if "[tune]" in line and ("finished after" in line or "stopped early" in line):
            finished.append(line.split()[1])
            break
        assert time.time() < deadline, "no trial finished in time"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert finished
    second = subprocess.run(cmd, env=ray_cluster.env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "resuming the sweep" in second.stdout
    assert f"{finished[0]} started" not in second.stdout  # the finished trial was not run again
    assert len(pd.read_csv(tmp_path / "tune" / "leaderboard.csv")) == 4
