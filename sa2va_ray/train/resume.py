"""Make a run directory safe to resume before Ray Train opens it: committed, intact checkpoints only.

Re-running a run name resumes from the latest checkpoint in Ray Train's run snapshot
(``<storage>/<name>/checkpoint_manager_snapshot.json``). Two faults break that, and both are repaired here, on the
driver, before :meth:`TorchTrainer.fit`:

* a damaged committed checkpoint (a rank's shard missing or truncated, e.g. a full disk or a node lost while it was
  copied): every resume would load it and fail. It is moved to ``<name>/damaged/``, the reason (naming the file) is
  printed, and the snapshot is rewritten without it, so Ray resumes from the newest intact checkpoint. A checkpoint
  directory deleted by hand is dropped from the snapshot the same way (Ray itself refuses the run then);
* a ``checkpoint_*`` directory the snapshot does not name: written by workers, never committed by the driver (killed
  with ``kill -9`` in between). It is removed, so no later reader mistakes it for a result of the run.

Only local storage is inspected; ``storage_path`` URIs (``s3://`` ...) are left to Ray.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sa2va_ray.checkpoint.integrity import find_damage

log = logging.getLogger("sa2va_ray.train")

SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train V2's run snapshot
DAMAGED_DIR = "damaged"


@dataclass
class ResumeRepair:
    """What :func:`repair_run_dir` found and did."""

    damaged: dict[str, str] = field(default_factory=dict)  # checkpoint dir name -> reason (names the file)
    uncommitted: list[str] = field(default_factory=list)  # removed checkpoint dir names
    resume_from: str | None = None  # the checkpoint Ray will resume from (dir name), None: from scratch


def _dir_name(entry: dict[str, Any] | None) -> str | None:
    return entry.get("checkpoint_dir_name") if isinstance(entry, dict) else None


def repair_run_dir(run_dir: str | Path) -> ResumeRepair:
    """Remove uncommitted checkpoint dirs, set damaged ones aside and rewrite Ray's snapshot without them.

    Args:
        run_dir: ``<storage_path>/<run name>``; nothing happens when it does not exist.

    Returns:
        What was repaired (empty when the directory was already consistent).
    """
    run = Path(run_dir)
    out = ResumeRepair()
    if "://" in str(run_dir) or not run.is_dir():
        return out
    snapshot_path = run / SNAPSHOT_FILE
    snapshot: dict[str, Any] | None = None
    if snapshot_path.is_file():
        try:
            snapshot = json.loads(snapshot_path.read_text())
            results = snapshot["checkpoint_results"]
            indices = snapshot["checkpoint_report_indices"]
            assert isinstance(results, list) and len(results) == len(indices)
        except (ValueError, KeyError, AssertionError, TypeError):
            # Ray would refuse the run with CheckpointManagerInitializationError: set the snapshot aside and start
            # the run afresh (its checkpoints stay where they are, uncommitted, and are removed below).
            _set_aside(run, snapshot_path)
            print(f"[train] {snapshot_path}: unreadable run snapshot, moved to {run / DAMAGED_DIR}; "
                  "this run starts from scratch", flush=True)
            snapshot = None
    committed = [_dir_name(r) for r in snapshot["checkpoint_results"]] if snapshot else []

    for d in sorted(run.glob("checkpoint_*")):
        if d.is_dir() and d.name not in committed:
            shutil.rmtree(d, ignore_errors=True)
            out.uncommitted.append(d.name)
    if out.uncommitted:
        print(f"[train] removed {len(out.uncommitted)} checkpoint dir(s) Ray never committed (the driver stopped "
              f"while they were written): {', '.join(out.uncommitted)}", flush=True)
    if not snapshot:
        return out

    for name in committed:
        reason = find_damage(run / name, kind="checkpoint") if name else "no checkpoint_dir_name"
        if reason:
            out.damaged[str(name)] = reason
    if out.damaged:
        for name in out.damaged:
            if (run / name).exists():
                _set_aside(run, run / name)
        _drop_from_snapshot(snapshot, set(out.damaged))
        _write_atomically(snapshot_path, json.dumps(snapshot, indent=2))
    out.resume_from = _dir_name(snapshot.get("latest_checkpoint_result"))
    for name, reason in out.damaged.items():
        print(f"[train] damaged checkpoint {name}: {reason}; moved to {run / DAMAGED_DIR / name}", flush=True)
    if out.damaged:
        where = f"the newest intact checkpoint {out.resume_from}" if out.resume_from else "scratch (none is intact)"
        print(f"[train] resuming from {where}", flush=True)
    return out


def _drop_from_snapshot(snapshot: dict[str, Any], damaged: set[str]) -> None:
    """Remove every reference to ``damaged`` dirs; the latest checkpoint becomes the newest one left."""
    pairs = [(r, i) for r, i in zip(snapshot["checkpoint_results"], snapshot["checkpoint_report_indices"])
             if _dir_name(r) not in damaged]
    snapshot["checkpoint_results"] = [r for r, _ in pairs]
    snapshot["checkpoint_report_indices"] = [i for _, i in pairs]
    if _dir_name(snapshot.get("latest_checkpoint_result")) in damaged:
        snapshot["latest_checkpoint_result"] = max(pairs, key=lambda p: p[1])[0] if pairs else None
    pending = list(zip(snapshot.get("pending_training_results", []), snapshot.get("pending_validation_specs", [])))
    pending = [(r, v) for r, v in pending if _dir_name(r) not in damaged]
    snapshot["pending_training_results"] = [r for r, _ in pending]
    snapshot["pending_validation_specs"] = [v for _, v in pending]
    for key in ("validated_checkpoint_dir_names", "timed_out_validation_checkpoint_dir_names",
                "failed_validation_checkpoint_dir_names"):
        if key in snapshot:
            snapshot[key] = [n for n in snapshot[key] if n not in damaged]


def _set_aside(run: Path, path: Path) -> None:
    target = run / DAMAGED_DIR / path.name
    target.parent.mkdir(exist_ok=True)
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    path.rename(target)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
