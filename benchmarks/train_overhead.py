"""Samples/s of Ray Train + DeepSpeed ZeRO-2 (2 CPU workers) vs a plain single-process PyTorch loop.

Same tiny Sa2VA, same LoRA policy, same global batch (2 workers x micro 4 = one plain step of 8). Steady state
only: the first `--warmup` steps (process start, DeepSpeed init, first-call overheads) and the final validation are
excluded on both sides, using the step timestamps the training loop writes to `train_log.csv`.

    python benchmarks/train_overhead.py [--steps 80 --warmup 10]

Last line: `ratio: X` = (Ray Train + DeepSpeed samples/s) / (plain loop samples/s, the mean of a run before and
one after the Ray side), both decoding every image from disk every time it is used (the Ray side in each worker's
decode thread, fed by the run's Ray Data stream); higher is better. The line before compares with a loop whose
images were decoded into memory once (an upper bound that skips the decoding work).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sa2va_ray.config import load_config  # noqa: E402


def plain_loop(cfg, samples, steps: int, warmup: int, global_batch: int, load=lambda s: s) -> float:
    """Single process, torch AdamW, one step = global_batch samples; returns steady-state samples/s.

    ``load`` turns an item of ``samples`` into a model sample (decoding it from disk, or nothing when pre-decoded).
    """
    from sa2va_ray.checkpoint.load import build_base_model, prepare_for_training

    torch.manual_seed(0)
    model = prepare_for_training(build_base_model(cfg), cfg, verbose=False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)
    t0 = None
    for step in range(steps):
        if step == warmup:
            t0 = time.perf_counter()
        batch = [load(samples[(step * global_batch + i) % len(samples)]) for i in range(global_batch)]
        out = model(**model.processor.collate_train(batch))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (steps - warmup) * global_batch / (time.perf_counter() - t0)


def ray_train(cfg, steps: int, warmup: int) -> float:
    """The real training job's driver; steady-state samples/s from its step log."""
    from sa2va_ray.cli import init_ray
    from sa2va_ray.train.driver import run_training_driver

    init_ray()
    run_training_driver(cfg)
    rows = list(csv.DictReader((Path(cfg.output_dir) / "train_log.csv").open()))
    t = {int(r["step"]): float(r["time_s"]) for r in rows}
    last = steps - 1  # the last step also validates and checkpoints
    per_step = cfg.train.micro_batch_size * cfg.scaling.num_workers
    return (last - warmup) * per_step / (t[last] - t[warmup])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--zero-stage", type=int, default=2, help="DeepSpeed ZeRO stage of the Ray side (0-3)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    cfg = load_config(REPO / "configs/demo.yaml", [
        f"output_dir={tmp / 'ray'}", f"data.synthetic.out={tmp / 'synth'}",
        f"data.annotations={tmp / 'synth/annotations.json'}",
        f"data.images_dir={tmp / 'synth/images'}", "data.synthetic.patients=6", "data.synthetic.frames=4",
        f"train.max_steps={args.steps}", f"train.val_every={args.steps}", "train.val_max_samples=4",
        "train.log_every=1000", "scaling.num_workers=2", "scaling.cpus_per_worker=0.75",
        f"deepspeed.zero_stage={args.zero_stage}",
    ]).resolve_paths()
    from sa2va_ray.data.decode import decode_rows
    from sa2va_ray.data.prepare import prepare_splits

    splits = prepare_splits(cfg)
    def to_sample(r):
        return {"image": r["image"], "masks": [np.asarray(r["mask"], bool)], "texts": [r["text"]]}

    # The Ray side decodes every image from disk every time (in its workers); the fair plain loop does the same
    # work in-line. The pre-decoded loop (images in memory once) is printed beside it as an upper bound.
    items = [(s, t) for s in splits.train for t in range(len(s.texts))]
    predecoded = [to_sample(r) for s in splits.train for r in decode_rows(s, splits.images_dir)]
    global_batch = cfg.train.micro_batch_size * cfg.scaling.num_workers
    torch.set_num_threads(2)
    upper = plain_loop(cfg, predecoded, args.steps, args.warmup, global_batch)
    print(f"plain loop, images pre-decoded in memory (1 process, 2 threads): {upper:.2f} samples/s", flush=True)
    def plain_decoding() -> float:
        return plain_loop(cfg, items, args.steps, args.warmup, global_batch,
                          load=lambda it: to_sample(decode_rows(it[0], splits.images_dir)[it[1]]))

    # The decoding plain loop runs before and after the Ray side (whose local Ray is shut down first), and the
    # ratio uses their mean, so a slow patch of this shared machine does not fall on one side only.
    before = plain_decoding()
    print(f"plain loop, decoding from disk every step (1 process, 2 threads): {before:.2f} samples/s", flush=True)
    distributed = ray_train(cfg, args.steps, args.warmup)
    print(f"Ray Train + DeepSpeed ZeRO-{args.zero_stage} (2 workers x 0.75 CPU): {distributed:.2f} samples/s",
          flush=True)
    import ray

    ray.shutdown()
    after = plain_decoding()
    print(f"plain loop, decoding from disk every step, again after the Ray run: {after:.2f} samples/s", flush=True)
    plain = (before + after) / 2
    print(f"global batch {global_batch}, {args.steps - args.warmup} steady-state steps each")
    print(f"ratio vs the pre-decoded loop: {distributed / upper:.3f}")
    print(f"ratio: {distributed / plain:.3f}")


if __name__ == "__main__":
    main()
