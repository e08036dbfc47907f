"""Every path that reads a training checkpoint refuses crafted pickles and still reads what DeepSpeed itself wrote.

One subprocess trains a tiny model 3 steps under a real DeepSpeed ZeRO-2 engine, writes its checkpoint, plants each
crafted kind (:mod:`malicious`) in a copy, and resumes the engine from each (the Ray Train worker's path). The copies
then go through the driver's pre-flight, export, diagnose and the model loader evaluation/prediction use.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sa2va_ray.checkpoint.safety import UnsafeCheckpointError

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
DEMO = REPO / "configs" / "demo.yaml"
_spec = importlib.util.spec_from_file_location("malicious", HERE / "malicious.py")
malicious = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(malicious)
KINDS = sorted(malicious.CODE_RUNNING)


@pytest.fixture(autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def attempts(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    out = tmp_path_factory.mktemp("resume")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(HERE / "resume_attempts.py"), str(out), str(port), str(DEMO),
                           str(HERE / "malicious.py")], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


def _refused(kind: str, out: Path) -> str:
    name = "mp_rank_00_model_states.pt" if kind == "zip_eval" else "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    return f"{out / kind / 'deepspeed' / name}: "


def test_worker_resume_refuses_every_kind_and_loads_deepspeeds_own(attempts):
    out, results = attempts
    assert results.pop("genuine") == "loaded step 3"
    for kind in KINDS:
        assert results[kind].startswith("refused: " + _refused(kind, out)), (kind, results[kind])
        assert results[kind].endswith("refusing to load (only tensors and DeepSpeed's own classes are allowed)")
    assert not list(out.glob("ran_*")), "a payload ran"


@pytest.mark.parametrize("kind", KINDS)
def test_export_and_forensics_refuse(kind, attempts, tmp_path):
    from sa2va_ray.checkpoint.trained import deepspeed_info, read_trained
    from sa2va_ray.export.diagnose import main as diagnose_main
    from sa2va_ray.export.exporter import export_checkpoint

    out, _ = attempts
    ckpt = out / kind
    for read in (lambda: deepspeed_info(ckpt), lambda: read_trained(ckpt, "deepspeed"),
                 lambda: export_checkpoint(ckpt, tmp_path / "model", source="auto")):
        with pytest.raises(UnsafeCheckpointError, match=_refused(kind, out)):
            read()
    assert diagnose_main([str(ckpt), "--source", "deepspeed"]) == 2
    assert not (tmp_path / "model").exists() and not list(out.glob("ran_*"))


def _committed_run(storage: Path, name: str, ckpt: Path) -> Path:
    """``storage/name`` holding ``ckpt`` as a checkpoint Ray committed (named in its run snapshot)."""
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import (
        _CheckpointManagerState,
        _TrainingResultState,
    )

    from sa2va_ray.train.resume import SNAPSHOT_FILE

    run, dir_name = storage / name, "checkpoint_2026-01-01_00-00-00.000000"
    shutil.copytree(ckpt, run / dir_name)
    result = _TrainingResultState(checkpoint_dir_name=dir_name, metrics={"step": 3})
    state = _CheckpointManagerState(
        checkpoint_results=[result], checkpoint_report_indices=[1], latest_checkpoint_result=result,
        pending_training_results=[], pending_validation_specs=[], current_report_index=1,
        validated_checkpoint_dir_names=[], timed_out_validation_checkpoint_dir_names=[],
        failed_validation_checkpoint_dir_names=[],
    )
    (run / SNAPSHOT_FILE).write_text(state.json())
    return run / dir_name


@pytest.mark.parametrize("kind", ["zip_nested", "zip_eval"])
def test_model_loader_and_training_preflight_refuse(kind, attempts, tmp_path):
    """Evaluation and prediction load ``model.path`` through ``load_model``; a resumed run passes ``build_trainer``
    (Tune trials too) before any Ray work."""
    from sa2va_ray.checkpoint.integrity import check_model_path
    from sa2va_ray.checkpoint.load import load_model
    from sa2va_ray.config import load_config
    from sa2va_ray.data.prepare import Splits
    from sa2va_ray.train.driver import build_trainer

    out, _ = attempts
    for load in (lambda: load_model(out / kind), lambda: check_model_path(str(out / kind))):
        with pytest.raises(UnsafeCheckpointError, match=_refused(kind, out)):
            load()
    cfg = load_config(DEMO, [f"output_dir={tmp_path / 'run'}", f"storage_path={tmp_path / 'ray'}"])
    planted = _committed_run(tmp_path / "ray", cfg.name, out / kind)
    with pytest.raises(UnsafeCheckpointError, match=f"{planted}/deepspeed/"):
        build_trainer(cfg, Splits([], [], ""))
    assert not list(out.glob("ran_*"))


def test_legacy_pickle_in_a_committed_checkpoint_is_never_resumed_from(attempts, tmp_path):
    """The resume repair sets a non-zip shard aside as damaged (it reads zip directories only); were it kept, the
    pickle check refuses it."""
    from sa2va_ray.checkpoint.safety import check_checkpoint_files
    from sa2va_ray.train.resume import repair_run_dir

    out, _ = attempts
    planted = _committed_run(tmp_path / "ray", "run", out / "legacy_torch")
    with pytest.raises(UnsafeCheckpointError, match="not in torch's zip format|pickle references posix.system"):
        check_checkpoint_files(planted.parent, "checkpoint_*/**/*.pt", skip_unreadable=True)
    repair = repair_run_dir(planted.parent)
    assert planted.name in repair.damaged and repair.resume_from is None and not planted.exists()


def test_deepspeeds_own_checkpoint_still_reads_everywhere(attempts, tmp_path):
    from safetensors.torch import load_file

    from sa2va_ray.checkpoint.load import load_model
    from sa2va_ray.checkpoint.trained import read_trained
    from sa2va_ray.export.diagnose import main as diagnose_main
    from sa2va_ray.export.exporter import export_checkpoint

    genuine = attempts[0] / "genuine"
    from_shards, saved = read_trained(genuine, "deepspeed"), load_file(str(genuine / "trainable.safetensors"))
    assert set(from_shards) == set(saved) and all(torch.equal(from_shards[k], saved[k]) for k in saved)
    assert (export_checkpoint(genuine, tmp_path / "model", source="deepspeed") / "model.safetensors").exists()
    assert diagnose_main([str(genuine), "--source", "deepspeed"]) == 0
    assert load_model(genuine) is not None
