"""jobs/tune.py: a 4-trial sweep with ASHA on the session cluster, its leaderboard and best.yaml, and restore."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
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
# Dice at the first rung is the lowest and ASHA stops it. Trials run one at a time here: the first always finishes
# (ASHA has nothing to compare it with), the order of results is fixed, and a 2-CPU CI machine is never asked to hold
# two trials' workers and decode tasks at once. `derive_max_concurrent` (the default) is unit-tested.
SWEEP = [
    "tune.search=grid", "tune.num_samples=1", "tune.max_concurrent_trials=1", "tune.grace_period=1",
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


def _run_sweep(ray_cluster, argv: list[str], log: Path, timeout: float) -> subprocess.CompletedProcess:
    """`python jobs/tune.py ...` as its own Ray driver: if it hangs it is killed, and Ray frees every trial, actor
    and placement group it owned, so a stuck sweep cannot starve the tests after it."""
    cmd = [sys.executable, str(REPO / "jobs/tune.py"), *argv]
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, env=ray_cluster.env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"the sweep did not finish in {timeout:.0f} s; its output:\n{log.read_text()[-6000:]}")
    return subprocess.CompletedProcess(cmd, rc, log.read_text(), "")


@pytest.fixture(scope="module")
def sweep(ray_cluster, synthetic_set, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    proc = _run_sweep(ray_cluster, _tune_argv(synthetic_set, out), out / "sweep.log", timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:]
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


@pytest.mark.slow  # two sweeps, one killed: ~4 min on 2 cores; `make test-all` runs it
def _recorded_as_finished(sweep_dir: Path, trial_id: str) -> bool:
    """Tune saves its experiment state every few seconds; a trial is finished for a restore once that file says so."""
    for f in sweep_dir.glob("experiment_state-*.json"):
        try:
            trials = [json.loads(t[0]) for t in json.loads(f.read_text())["trial_data"]]
        except (ValueError, KeyError, IndexError):  # being rewritten
            continue
        if any(t["trial_id"] == trial_id and t["status"] == "TERMINATED" for t in trials):
            return True
    return False


def test_interrupted_sweep_resumes_without_redoing_finished_trials(ray_cluster, synthetic_set, tmp_path):
    cmd = [sys.executable, str(REPO / "jobs/tune.py"), *_tune_argv(synthetic_set, tmp_path)]
    first = subprocess.Popen(cmd, env=ray_cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in first.stdout], daemon=True).start()  # keep the pipe open
    finished, deadline = "", time.time() + 600
    while not finished:  # wait until one trial has finished ...
        line = lines.get(timeout=max(1.0, deadline - time.time()))
        if "[tune]" in line and ("finished after" in line or "stopped early" in line):
            finished = line.split()[1]
    sweep_dir = tmp_path / "ray" / f"{tmp_path.name}_tune"
    while not _recorded_as_finished(sweep_dir, finished):  # ... and Tune has saved that, then kill the driver
        assert time.time() < deadline + 120, f"Tune never recorded {finished} as finished in {sweep_dir}"
        time.sleep(1.0)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    second = _run_sweep(ray_cluster, cmd[2:], tmp_path / "second.log", timeout=900)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "resuming the sweep" in second.stdout
    assert f"{finished} started" not in second.stdout  # the finished trial was not run again
    assert len(pd.read_csv(tmp_path / "tune" / "leaderboard.csv")) == 4
