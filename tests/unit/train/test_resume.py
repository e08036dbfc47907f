"""Run-directory repair before a resume: damaged checkpoints set aside, uncommitted ones removed, and the snapshot
loaded afterwards by Ray Train's own CheckpointManager (no cluster needed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sa2va_ray.train.resume import DAMAGED_DIR, SNAPSHOT_FILE, repair_run_dir
from tests.unit.checkpoint.test_integrity import make_checkpoint

NAMES = [f"checkpoint_2026-01-01_00-00-0{i}.000000" for i in range(3)]


def make_run(tmp_path: Path, pending_last: bool = False) -> Path:
    """A run dir with three committed checkpoints (steps 2, 4, 6) and Ray's snapshot naming them."""
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import (
        _CheckpointManagerState,
        _TrainingResultState,
    )

    run = tmp_path / "ray" / "run"
    results = []
    for i, name in enumerate(NAMES):
        make_checkpoint(run / name, step=2 * (i + 1))
        results.append(_TrainingResultState(checkpoint_dir_name=name, metrics={"step": 2 * (i + 1)}))
    pending = results[-1:] if pending_last else []
    state = _CheckpointManagerState(
        checkpoint_results=results, checkpoint_report_indices=[1, 3, 5], latest_checkpoint_result=results[-1],
        pending_training_results=pending, pending_validation_specs=[False] * len(pending), current_report_index=6,
        validated_checkpoint_dir_names=NAMES[:1], timed_out_validation_checkpoint_dir_names=[],
        failed_validation_checkpoint_dir_names=[],
    )
    (run / SNAPSHOT_FILE).write_text(state.json())
    return run


def ray_latest(run: Path) -> str | None:
    """The checkpoint Ray Train would hand to ``get_checkpoint()`` on resume (its real loading code)."""
    from ray.train import CheckpointConfig
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import CheckpointManager
    from ray.train.v2._internal.execution.storage import StorageContext

    manager = CheckpointManager(CheckpointConfig(num_to_keep=2),
                                StorageContext(storage_path=str(run.parent), experiment_dir_name=run.name))
    latest = manager.latest_checkpoint_result
    return Path(latest.checkpoint.path).name if latest else None


def test_consistent_run_is_left_alone(tmp_path):
    run = make_run(tmp_path)
    before = (run / SNAPSHOT_FILE).read_text()
    repair = repair_run_dir(run)
    assert not repair.damaged and not repair.uncommitted and repair.resume_from == NAMES[-1]
    assert (run / SNAPSHOT_FILE).read_text() == before
    assert ray_latest(run) == NAMES[-1]


@pytest.mark.parametrize("victim", ["deepspeed/zero_pp_rank_1_mp_rank_00_optim_states.pt", "trainable.safetensors"])
@pytest.mark.parametrize("how", ["missing", "truncated"])
def test_damaged_latest_resumes_from_newest_intact(tmp_path, capsys, victim, how):
    run = make_run(tmp_path, pending_last=True)
    f = run / NAMES[-1] / victim
    if how == "missing":
        f.unlink()
    else:
        f.write_bytes(f.read_bytes()[:-100])
    repair = repair_run_dir(run)
    assert list(repair.damaged) == [NAMES[-1]] and repair.resume_from == NAMES[1]
    out = capsys.readouterr().out
    assert Path(victim).name in out and f"resuming from the newest intact checkpoint {NAMES[1]}" in out
    assert (run / DAMAGED_DIR / NAMES[-1]).is_dir() and not (run / NAMES[-1]).exists()
    snapshot = json.loads((run / SNAPSHOT_FILE).read_text())
    assert [r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"]] == NAMES[:2]
    assert snapshot["pending_training_results"] == [] and snapshot["current_report_index"] == 6
    assert ray_latest(run) == NAMES[1]
    assert not repair_run_dir(run).damaged  # idempotent


def test_deleted_checkpoint_dir_no_longer_blocks_the_run(tmp_path):
    run = make_run(tmp_path)
    shutil.rmtree(run / NAMES[-1])  # what a user does with a damaged checkpoint; Ray would refuse the run
    repair = repair_run_dir(run)
    assert "missing" in repair.damaged[NAMES[-1]]
    assert ray_latest(run) == NAMES[1]


def test_every_checkpoint_damaged_starts_from_scratch(tmp_path, capsys):
    run = make_run(tmp_path)
    for name in NAMES:
        (run / name / "train_state.json").write_text("{")
    assert repair_run_dir(run).resume_from is None
    assert "resuming from scratch" in capsys.readouterr().out
    assert ray_latest(run) is None


def test_uncommitted_checkpoint_dirs_are_removed(tmp_path):
    run = make_run(tmp_path)
    stray = make_checkpoint(run / "checkpoint_2026-01-01_00-00-09.000000", step=8)  # killed before the commit
    repair = repair_run_dir(run)
    assert repair.uncommitted == [stray.name] and not stray.exists()
    assert all((run / n).is_dir() for n in NAMES) and ray_latest(run) == NAMES[-1]


def test_no_snapshot_means_every_checkpoint_dir_is_uncommitted(tmp_path):
    run = tmp_path / "ray" / "run"
    make_checkpoint(run / NAMES[0])
    assert repair_run_dir(run).uncommitted == [NAMES[0]]
    assert repair_run_dir(tmp_path / "nowhere").resume_from is None


def test_unreadable_snapshot_is_set_aside(tmp_path, capsys):
    run = make_run(tmp_path)
    (run / SNAPSHOT_FILE).write_text('{"ray_version": "2.60.0", "checkpoint_res')  # killed mid-write
    repair = repair_run_dir(run)
    assert (run / DAMAGED_DIR / SNAPSHOT_FILE).is_file() and not (run / SNAPSHOT_FILE).exists()
    assert sorted(repair.uncommitted) == NAMES
    assert "unreadable run snapshot" in capsys.readouterr().out
    assert ray_latest(run) is None
