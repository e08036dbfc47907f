"""Samples/s of our Ray Train job vs the same training launched the official way: `torchrun` + a plain DeepSpeed loop.

Both sides: the same tiny Sa2VA (`configs/demo.yaml`, LoRA policy applied by `prepare_for_training`), the same
synthetic data, the same DeepSpeed JSON (`build_deepspeed_config`: ZeRO-2 by default, AdamW + warmup-cosine), 2
processes on CPU with gloo, the same global batch (2 x micro-batch 4) and the same shuffled (record, text) stream.

- **torchrun** (`torchrun --nproc_per_node 2`, as the official Sa2VA recipe launches xtuner/DeepSpeed): each rank
  builds the model, `deepspeed.initialize`, then a `DataLoader` over its shard of the stream (decoding every image
  in `--loader-workers` background processes per rank, 1 by default: the counterpart of our decode thread; 0
  decodes in-line) and forward / `engine.backward` / `engine.step`. Nothing else.
- **ours**: the project's own train path, `run_training_driver` with 2 Ray Train workers (`scaling.cpus_per_worker
  =0.75`): Ray Data stream, decode thread, loss all-reduce, health monitor, progress log, final checkpoint.

Steady state only: the first `--warmup` steps (process start, DeepSpeed init, first calls) and the last step
(validation and checkpoint on the Ray side) are excluded on both sides, from per-step timestamps (rank 0's clock;
`train_log.csv` on the Ray side). Two estimates per side: the window's samples/s (all of it, stalls included) and
global batch / the median step time (robust to other processes taking the cores for a while on a shared machine).
torchrun runs once before and once after the Ray side and the ratios use their mean, so a slow patch of the machine
does not fall on one side only. A third measure does not depend on the machine's other load: CPU seconds per
sample of each side's whole process tree over the same window (sampled from /proc every 0.2 s: ranks and DataLoader
workers; or Ray's workers, raylet, GCS, dashboard and Ray Data's coordinator).

    python benchmarks/train_vs_torchrun.py [--steps 80 --warmup 10 --zero-stage 2]

Last line: `ratio: X.XX` = (ours samples/s) / (torchrun samples/s), over the whole steady-state window; the goal is
>= 0.95. The line before it gives the same ratio from the median step times.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sa2va_ray.config import Config, config_from_dict, config_to_dict, load_config  # noqa: E402


def build_bench_config(tmp: Path, steps: int, zero_stage: int) -> Config:
    """The demo config at benchmark size (the same overrides as `train_overhead.py`)."""
    return load_config(REPO / "configs/demo.yaml", [
        f"output_dir={tmp / 'ray'}", f"data.synthetic.out={tmp / 'synth'}",
        f"data.annotations={tmp / 'synth/annotations.json'}",
        f"data.images_dir={tmp / 'synth/images'}", "data.synthetic.patients=6", "data.synthetic.frames=4",
        f"train.max_steps={steps}", f"train.val_every={steps}", "train.val_max_samples=4",
        "train.log_every=1000", "scaling.num_workers=2", "scaling.cpus_per_worker=0.75",
        f"deepspeed.zero_stage={zero_stage}",
    ]).resolve_paths()


# ---------------------------------------------------------------- the torchrun side (runs on every rank)


def torchrun_per_rank(job: Path, loader_workers: int) -> None:
    """One rank of the plain DeepSpeed loop; rank 0 writes its step timestamps to ``job/torchrun_times.json``."""
    from sa2va_ray.train.console import quiet_known_warnings, select_deepspeed_accelerator

    cfg = config_from_dict(json.loads((job / "config.json").read_text()))
    select_deepspeed_accelerator(cfg.scaling.use_gpu)
    quiet_known_warnings()
    import deepspeed
    import torch
    import torch.distributed as dist

    from sa2va_ray.checkpoint.load import build_base_model, prepare_for_training
    from sa2va_ray.train.deepspeed_config import build_deepspeed_config
    from sa2va_ray.train.stream import decode_batch, plan_stream, stream_rows

    deepspeed.init_distributed(dist_backend="nccl" if cfg.scaling.use_gpu else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(cfg.train.seed)
    model = prepare_for_training(build_base_model(cfg), cfg, verbose=False)
    params = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params,
                                           config=build_deepspeed_config(cfg, world))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.deepspeed.precision)

    samples, images_dir = pickle.loads((job / "samples.pkl").read_bytes())
    plan = plan_stream(cfg, samples)
    rows = np.stack(stream_rows(samples, plan.epochs, cfg.train.seed), axis=1)[rank::world]  # (N, 2): sample, text

    class Shard(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int):
            decoded, errors = decode_batch({"sample": rows[i:i + 1, 0], "text": rows[i:i + 1, 1]}, samples, images_dir)
            if errors:
                raise RuntimeError(errors[0])
            return decoded[0]

    loader = torch.utils.data.DataLoader(Shard(), batch_size=cfg.train.micro_batch_size, shuffle=False,
                                         num_workers=loader_workers, drop_last=True,
                                         collate_fn=engine.module.processor.collate_train)
    times, micro = [], 0
    for batch in loader:
        batch = {k: (v.to(dtype) if dtype is not None and torch.is_tensor(v) and v.is_floating_point() else v)
                 for k, v in batch.items()}
        out = engine(**batch)
        engine.backward(out.loss)
        engine.step()
        micro += 1
        if micro % cfg.train.grad_accum == 0:
            times.append(time.perf_counter())
            if rank == 0:  # the step counter the CPU monitor reads (what our progress log is on the Ray side)
                with (job / "steps.txt").open("a") as f:
                    f.write(f"{len(times)}\n")
            if len(times) >= cfg.train.max_steps:
                break
    if rank == 0:
        (job / "torchrun_times.json").write_text(json.dumps({"times": times, "threads": torch.get_num_threads()}))
    dist.barrier()


def steady_rates(ends: dict[int, float], cfg: Config, steps: int, warmup: int) -> tuple[float, float]:
    """(window samples/s, samples/s at the median step time) of steps warmup+1 .. steps-1 from their end times.

    The last step is left out: on the Ray side it also validates and checkpoints.
    """
    per_step = cfg.train.micro_batch_size * cfg.train.grad_accum * cfg.scaling.num_workers
    last = steps - 1
    window = (last - warmup) * per_step / (ends[last] - ends[warmup])
    durations = [ends[s] - ends[s - 1] for s in range(warmup + 1, last + 1)]
    return window, per_step / float(np.median(durations))


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def _tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system, plus those of reaped children) of ``root`` and every live descendant."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        pid, ppid = int(entry.name), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        cpu[pid] = sum(int(x) for x in fields[11:15]) / tick  # utime, stime, cutime, cstime
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


class TreeCpuMonitor:
    """Samples (time, CPU seconds of a process tree, steps done) every ``period`` s in a background thread.

    CPU seconds per sample are robust to other work on a shared machine, unlike wall time: they count what this
    training costs (every process of it: ranks and DataLoader workers, or Ray's workers, raylet, GCS, dashboard and
    Ray Data's coordinator) whoever else holds the cores meanwhile.
    """

    def __init__(self, root: int, steps_file: Path, lines_per_step_offset: int = 0, period: float = 0.2):
        self.root, self.steps_file, self.offset, self.period = root, steps_file, lines_per_step_offset, period
        self.samples: list[tuple[float, float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        # Watching our own process tree (the Ray side), this thread's own reading of /proc is not the training's.
        own = self.root == os.getpid()
        while not self._stop.is_set():
            steps = max(0, _count_lines(self.steps_file) - self.offset)
            cpu = _tree_cpu_seconds(self.root) - (time.thread_time() if own else 0.0)
            self.samples.append((time.perf_counter(), cpu, steps))
            self._stop.wait(self.period)

    def __enter__(self) -> TreeCpuMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_seconds_per_sample(self, warmup: int, last: int, per_step: int) -> float:
        """Between the first sample at >= ``warmup`` steps and the last one at <= ``last`` steps."""
        inside = [s for s in self.samples if warmup <= s[2] <= last]
        (_, cpu_a, n_a), (_, cpu_b, n_b) = inside[0], inside[-1]
        if n_b - n_a < 5:
            raise RuntimeError(f"the CPU monitor saw only {n_b - n_a} steady-state steps")
        return (cpu_b - cpu_a) / ((n_b - n_a) * per_step)


def _per_step(cfg: Config) -> int:
    return cfg.train.micro_batch_size * cfg.train.grad_accum * cfg.scaling.num_workers


def run_torchrun(job: Path, cfg: Config, steps: int, warmup: int, loader_workers: int) -> tuple[float, float, float]:
    """Launch `torchrun --nproc_per_node <workers>` on this file; steady-state rates (see `steady_rates`) and CPU
    seconds per sample."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(cfg.scaling.num_workers), __file__, "--torchrun-rank-job", str(job),
           "--loader-workers", str(loader_workers)]
    (job / "steps.txt").unlink(missing_ok=True)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with TreeCpuMonitor(proc.pid, job / "steps.txt") as monitor:
        _, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"torchrun failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    times = json.loads((job / "torchrun_times.json").read_text())["times"]
    rates = steady_rates({i + 1: t for i, t in enumerate(times)}, cfg, steps, warmup)  # times[i]: end of step i+1
    return (*rates, monitor.cpu_seconds_per_sample(warmup, steps - 1, _per_step(cfg)))


def run_ours(cfg: Config, steps: int, warmup: int) -> tuple[float, float, float]:
    """Our train job's driver (the `ray_train` of `train_overhead.py`); steady-state rates from its step log and
    CPU seconds per sample of this process's tree (the driver started the local Ray: all of Ray is below it)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_overhead import ray_train

    log = Path(cfg.output_dir) / "train_log.csv"
    with TreeCpuMonitor(os.getpid(), log, lines_per_step_offset=1) as monitor:  # the CSV header
        ray_train(cfg, steps, warmup)
    rows = csv.DictReader(log.open())
    rates = steady_rates({int(r["step"]): float(r["time_s"]) for r in rows}, cfg, steps, warmup)
    return (*rates, monitor.cpu_seconds_per_sample(warmup, steps - 1, _per_step(cfg)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--zero-stage", type=int, default=2, help="DeepSpeed ZeRO stage of both sides (0-3)")
    ap.add_argument("--loader-workers", type=int, default=1, help="DataLoader processes per torchrun rank")
    ap.add_argument("--torchrun-rank-job", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torchrun_rank_job is not None:
        torchrun_per_rank(args.torchrun_rank_job, args.loader_workers)
        return
    if not 1 <= args.warmup < args.steps - 1:
        ap.error("need 1 <= --warmup < --steps - 1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    tmp = Path(tempfile.mkdtemp(prefix="bench_torchrun_"))
    cfg = build_bench_config(tmp, args.steps, args.zero_stage)
    from sa2va_ray.data.prepare import prepare_splits

    splits = prepare_splits(cfg)
    job = tmp / "torchrun"
    job.mkdir()
    (job / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    (job / "samples.pkl").write_bytes(pickle.dumps((splits.train, splits.images_dir)))
    workers, mb = cfg.scaling.num_workers, cfg.train.micro_batch_size
    print(f"tiny Sa2VA, ZeRO-{args.zero_stage}, {workers} processes x micro-batch {mb} (global batch {workers * mb}),"
          f" {args.steps - args.warmup - 1} steady-state steps each", flush=True)
    def show(label: str, rates: tuple[float, float, float]) -> None:
        print(f"{label}: {rates[0]:.2f} samples/s (at the median step time: {rates[1]:.2f}; "
              f"{1000 * rates[2]:.1f} CPU-ms per sample)", flush=True)

    before = run_torchrun(job, cfg, args.steps, args.warmup, args.loader_workers)
    threads = json.loads((job / "torchrun_times.json").read_text())["threads"]
    show(f"torchrun + plain DeepSpeed loop ({workers} ranks, {threads} torch thread(s) and {args.loader_workers} "
         "DataLoader process(es) each)", before)
    ours = run_ours(cfg, args.steps, args.warmup)
    show(f"ours: Ray Train + DeepSpeed ({workers} workers x {cfg.scaling.cpus_per_worker} CPU)", ours)
    import ray

    ray.shutdown()
    after = run_torchrun(job, cfg, args.steps, args.warmup, args.loader_workers)
    show("torchrun again after the Ray run", after)
    print(f"ratio of CPU time per sample (torchrun over ours; 1.0: no overhead): "
          f"{((before[2] + after[2]) / 2) / ours[2]:.2f}")
    print(f"ratio at the median step time: {ours[1] / ((before[1] + after[1]) / 2):.2f}")
    print(f"ratio: {ours[0] / ((before[0] + after[0]) / 2):.2f}")


if __name__ == "__main__":
    main()
