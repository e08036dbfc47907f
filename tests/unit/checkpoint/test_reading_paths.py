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
    from sa2va_ray.export.checkpoint_io import read_trained
    from sa2va_ray.export.diagnose import main as diagnose_main
    from sa2va_ray.export.exporter import export_checkpoint
    from sa2va_ray.export.zero_io import deepspeed_info

    out, _ = attempts
    ckpt = out / kind
    for read in (lambda: deepspeed_info(ckpt), lambda: read_trained(ckpt, "deepspeed"),
                 lambda: export_checkpoint(ckpt, tmp_path / "model", source="auto")):
        with pytest.raises(UnsafeCheckpointError, match=_refused(kind, out)):
            read()
    assert diagnose_main([str(ckpt), "--source", "deepspeed"]) == 2
    assert not (tmp_path / "model").exists() and not list(out.glob("ran_*"))


@pytest.mark.parametrize("kind", ["zip_nested", "legacy_torch"])
def test_model_loader_and_training_preflight_refuse(kind, attempts, tmp_path):
    """Evaluation and prediction load ``model.path`` through ``load_model``; a resumed run passes ``build_trainer``."""
    from sa2va_ray.build import load_model
    from sa2va_ray.config import load_config
    from sa2va_ray.datasets import Splits
    from sa2va_ray.train.driver import build_trainer

    out, _ = attempts
    with pytest.raises(UnsafeCheckpointError, match=_refused(kind, out)):
        load_model(out / kind)
    cfg = load_config(DEMO, [f"output_dir={tmp_path / 'run'}", f"storage_path={tmp_path / 'ray'}"])
    shutil.copytree(out / kind, tmp_path / "ray" / cfg.name / "checkpoint_2026-01-01_00-00-00.000000")
    with pytest.raises(UnsafeCheckpointError, match="checkpoint_2026-01-01_00-00-00.000000/deepspeed/"):
        build_trainer(cfg, Splits([], [], ""))
    assert not list(out.glob("ran_*"))


def test_deepspeeds_own_checkpoint_still_reads_everywhere(attempts, tmp_path):
    from safetensors.torch import load_file

    from sa2va_ray.build import load_model
    from sa2va_ray.export.checkpoint_io import read_trained
    from sa2va_ray.export.diagnose import main as diagnose_main
    from sa2va_ray.export.exporter import export_checkpoint

    genuine = attempts[0] / "genuine"
    from_shards, saved = read_trained(genuine, "deepspeed"), load_file(str(genuine / "trainable.safetensors"))
    assert set(from_shards) == set(saved) and all(torch.equal(from_shards[k], saved[k]) for k in saved)
    assert (export_checkpoint(genuine, tmp_path / "model", source="deepspeed") / "model.safetensors").exists()
    assert diagnose_main([str(genuine), "--source", "deepspeed"]) == 0
    assert load_model(genuine) is not None
