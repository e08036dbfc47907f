"""Data throughput: Ray Data source vs a single-process loop, same records, same work.

Work per record: decode the 512 x 512 JPEG, rasterise its polygons at the target size, resize to 448 and
normalise (ImageNet mean/std, float32 CHW). The loop calls ``decode_rows`` + normalise in this process; the
Ray side runs ``build_ray_dataset(..., size=448).map_batches(normalise)`` on a local Ray with ``--cpus`` CPUs and
iterates the batches on the driver, as a trainer's ingest would. Ray start-up and a warm-up pass are excluded. The
sides alternate ``--repeats`` times (a change of machine load hits both alike) and medians are compared; Ray's
workers run at the loop's priority (``RAY_worker_niceness=0``; Ray's default, nice 15, hands a shared machine's cores
to every other process).

    python benchmarks/data_throughput.py [--patients 12] [--frames 16] [--cpus 2] [--repeats 3]

The last line is ``ratio: X`` = (Ray records/s) / (loop records/s), medians; higher is better.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from sa2va_ray.data.decode import decode_rows
from sa2va_ray.data.synthetic import generate_synthetic_set
from sa2va_ray.data.validate import load_valid_samples

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255.0
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255.0


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W), ImageNet-normalised."""
    x = (images.astype(np.float32) - MEAN) / STD
    return np.moveaxis(x, -1, -3)


def normalise_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray ``map_batches`` step: replaces ``image`` by the normalised tensor (B, 3, H, W), one image at a time as the
    loop does (the temporaries of a whole block at once are tens of MB: slower, for the same work)."""
    images = batch["image"]  # (B, H, W, 3)
    out = np.empty((len(images), 3, *images.shape[1:3]), dtype=np.float32)  # (B, 3, H, W)
    for i, im in enumerate(images):
        out[i] = normalise(im)
    batch["image"] = out
    return batch


def run_loop(samples, images_dir: Path, size: int) -> tuple[int, float]:
    """Single-process loop; returns (rows, seconds)."""
    t0 = time.perf_counter()
    n = 0
    for s in samples:
        for row in decode_rows(s, images_dir, size=size):
            normalise(row["image"])  # (3, H, W), same work as the Ray side
            n += 1
    return n, time.perf_counter() - t0


def run_ray(samples, images_dir: Path, size: int) -> tuple[int, float]:
    """Ray Data pipeline consumed on the driver; returns (rows, seconds)."""
    from sa2va_ray.data.ray_source import build_ray_dataset

    t0 = time.perf_counter()
    # batch_size=None (whole blocks) lets Ray fuse normalising into the decoding tasks: no extra object-store hop.
    ds = build_ray_dataset(samples, images_dir, size=size).map_batches(
        normalise_batch, batch_size=None, zero_copy_batch=True
    )
    n = 0
    for batch in ds.iter_batches(batch_size=16, batch_format="numpy"):
        n += len(batch["sample_id"])
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=12)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--size", type=int, default=448, help="preprocessed size")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_worker_niceness", "0")
    with tempfile.TemporaryDirectory() as tmp:
        ann = generate_synthetic_set(Path(tmp), args.patients, args.frames, args.image_size, seed=0)
        images = ann.parent / "images"
        samples, _ = load_valid_samples(ann, images, strict=True)
        import ray

        ray.init(
            address="local",
            num_cpus=args.cpus,
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        run_ray(samples[: 2 * args.cpus], images, args.size)  # warm-up: start the workers
        loop_rates, ray_rates = [], []
        for r in range(args.repeats):
            n_loop, t_loop = run_loop(samples, images, args.size)
            n_ray, t_ray = run_ray(samples, images, args.size)
            assert n_loop == n_ray == len(samples), (n_loop, n_ray, len(samples))
            loop_rates.append(n_loop / t_loop)
            ray_rates.append(n_ray / t_ray)
            print(f"run {r + 1}: loop {loop_rates[-1]:.1f} records/s, ray data {ray_rates[-1]:.1f} records/s "
                  f"({ray_rates[-1] / loop_rates[-1]:.2f})", flush=True)
        ray.shutdown()
    loop_rate, ray_rate = statistics.median(loop_rates), statistics.median(ray_rates)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"records: {len(samples)} at {args.image_size}x{args.image_size} -> {args.size}x{args.size}")
    print(f"machine: {os.cpu_count()} CPUs, load average {load} (other processes slow both sides)")
    print(f"loop (1 process):     {loop_rate:8.1f} records/s  (median of {args.repeats})")
    print(f"ray data ({args.cpus} CPUs):    {ray_rate:8.1f} records/s  (median of {args.repeats})")
    print(f"ratio: {ray_rate / loop_rate:.2f}")


if __name__ == "__main__":
    main()
