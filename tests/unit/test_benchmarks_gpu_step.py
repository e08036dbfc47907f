"""benchmarks/gpu_step.py: the CPU run at tiny dimensions prints, per config, every measurement beside the planner's
with its relative error; the meta-device builder it uses for the 8B model trains; on a GPU machine the real run."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_step.py"
ROW = re.compile(r"^  (.+?)\s+(\S+) (\S+)\s+planner\s+(\S+) \S+\s+planner_error: ([+-]\S+)")
ROWS_PER_CONFIG = 5  # memory, s/step, samples/s, eval teacher-forced, eval generate


def _load_module():
    spec = importlib.util.spec_from_file_location("gpu_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parse(stdout: str) -> dict[str, list[tuple[str, float, float, float]]]:
    out: dict[str, list] = {}
    current = None
    for line in stdout.splitlines():
        if line.startswith("== "):
            current = line[3:].split(":", 1)[0]
            out[current] = []
        elif (m := ROW.match(line)) and current:
            out[current].append((m.group(1), float(m.group(2)), float(m.group(4)), float(m.group(5))))
    return out


def test_tiny_run_prints_every_measurement_beside_the_planner():
    # ZeRO-2 with 1 tile, ZeRO-3 with 6 tiles + thumbnail
    configs = ["configs/demo.yaml", "configs/vessel_internvl3_8b_lora_zero3_offload.yaml"]
    env = {k: v for k, v in os.environ.items() if k != "MASTER_PORT"}  # the script picks a free port
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--steps", "2", "--warmup", "1", "--eval-repeats",
                           "1", "--new-tokens", "2", "--configs", *configs],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = _parse(proc.stdout)
    assert list(reports) == configs
    for config, rows in reports.items():
        assert len(rows) == ROWS_PER_CONFIG, (config, proc.stdout)
        for name, measured, planned, error in rows:
            assert measured > 0 and planned > 0 and math.isfinite(error), (config, name)
            assert error == pytest.approx((planned - measured) / measured, rel=0.02, abs=0.01), (config, name)
    assert "7 tile(s) (planner 7)" in proc.stdout  # the synthetic images hit the planner's worst case
    assert re.fullmatch(r"ratio: \d+\.\d\d", proc.stdout.strip().splitlines()[-1])


def test_the_meta_device_builder_of_the_8b_run_trains():
    """The path the 8B run takes (meta device -> LoRA -> allocated on the device -> random init, buffers kept),
    exercised at tiny dimensions on CPU: a training step runs and the computed buffers survive."""
    from sa2va_ray.config import load_config
    from sa2va_ray.model import build_tiny_sa2va
    from sa2va_ray.model.config import tiny_config
    from sa2va_ray.model.tokenizer import build_tokenizer, special_token_ids

    gpu_step = _load_module()
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    tokenizer = build_tokenizer()
    config = tiny_config(len(tokenizer), special_token_ids(tokenizer))
    model = gpu_step.materialise_model(config, tokenizer, cfg, torch.device("cpu"), torch.float32)
    reference = dict(build_tiny_sa2va().named_buffers())
    assert set(dict(model.named_buffers())) == set(reference)
    for name, buffer in model.named_buffers():  # computed in __init__, not left as the allocator's garbage
        assert bool(torch.isfinite(buffer.float()).all()), name
        if name.endswith("inv_freq"):  # deterministic tables equal a normal build's
            assert torch.equal(buffer, reference[name]), name
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert any("lora_" in n and p.requires_grad for n, p in model.named_parameters())
    batch = model.processor.collate_train(gpu_step.synthetic_samples(cfg, model.config.tile_size, 2))
    out = model(**batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and bool(torch.any(g != 0)) for g in grads)


def test_synthetic_images_cut_into_exactly_max_tiles():
    from sa2va_ray.config import load_config
    from sa2va_ray.model import build_tiny_sa2va

    gpu_step = _load_module()
    for tiles in (1, 3, 6):
        cfg = load_config(ROOT / "configs" / "demo.yaml", [f"model.max_tiles={tiles}"])
        model = build_tiny_sa2va(max_tiles=tiles)
        batch = model.processor.collate_train(gpu_step.synthetic_samples(cfg, model.config.tile_size, 2))
        assert batch["pixel_values"].shape[0] == 2 * (tiles + (tiles > 1))
        assert np.isfinite(batch["pixel_values"].numpy()).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_dimensions_on_a_gpu_node():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--configs", "configs/vessel_internvl3_8b_lora.yaml",
                           "--steps", "3", "--warmup", "1"], cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rows,) = _parse(proc.stdout).values()
    assert len(rows) == ROWS_PER_CONFIG
