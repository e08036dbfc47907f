"""benchmarks/train_vs_torchrun.py: its steady-state arithmetic and the process-tree CPU monitor (the full benchmark
starts Ray and torchrun and takes minutes; it is run by hand, see the README)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from sa2va_ray.config import load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_vs_torchrun", ROOT / "benchmarks" / "train_vs_torchrun.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_both_sides_get_the_same_config(bench, tmp_path):
    cfg = bench.build_bench_config(tmp_path, steps=40, zero_stage=2)
    assert (cfg.scaling.num_workers, cfg.train.micro_batch_size, cfg.train.grad_accum) == (2, 4, 1)
    assert cfg.deepspeed.zero_stage == 2 and cfg.model.preset == "tiny"
    assert cfg.train.max_steps == 40 and str(tmp_path) in cfg.output_dir


def test_steady_rates_leave_out_warmup_and_the_last_step(bench, tmp_path):
    cfg = load_config(ROOT / "configs" / "demo.yaml", ["scaling.num_workers=2", "train.micro_batch_size=4"])
    # steps 1..10 end every 0.1 s, except a slow step 6 (0.5 s) and the last one (validation, 9 s)
    ends, t = {}, 0.0
    for step in range(1, 11):
        t += {6: 0.5, 10: 9.0}.get(step, 0.1)
        ends[step] = t
    window, median = bench.steady_rates(ends, cfg, steps=10, warmup=2)
    assert window == pytest.approx(7 * 8 / (ends[9] - ends[2]))  # steps 3..9, stall included, last step excluded
    assert median == pytest.approx(8 / 0.1)


def test_cpu_monitor_counts_a_child_process(bench, tmp_path):
    steps = tmp_path / "steps.txt"
    script = (f"import time\nfrom pathlib import Path\np = Path({str(steps)!r})\n"
              "for i in range(12):\n"
              "    t = time.process_time()\n"
              "    while time.process_time() - t < 0.05: pass\n"
              "    with p.open('a') as f: f.write(f'{i + 1}\\n')\n")
    proc = subprocess.Popen([sys.executable, "-c", script])
    with bench.TreeCpuMonitor(proc.pid, steps, period=0.02) as monitor:
        proc.wait()
    assert proc.returncode == 0
    per_sample = monitor.cpu_seconds_per_sample(warmup=2, last=11, per_step=1)
    assert 0.02 < per_sample < 0.5  # ~0.05 CPU-s per step; clock ticks are 10 ms
