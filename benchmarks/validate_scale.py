"""Validation scale: records/s of ``validate_annotations`` at 100k records against 10k (linear means ratio ~1).

The records are the case that used to be quadratic: they share a few images and have the same text and mask
shape, differing only in their coordinates, with 1% exact duplicates. Each run validates a freshly written
annotations file in its own process (file loading included, interpreter start-up excluded), so its peak memory
(max RSS, which includes the ~0.4 GB of importing torch through the package) is measured alone. Wall time is
what counts; CPU time is printed beside it because other processes on a shared machine stretch the wall time.

    python benchmarks/validate_scale.py [--small 10000] [--large 100000] [--images 20] [--repeats 3]

Goal: 100k records in under 60 s and under 2 GB. The last line is ``ratio: X`` = (records/s at ``--large``) /
(records/s at ``--small``), medians of ``--repeats`` runs; higher is better (goal >= 0.8).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_images(directory: Path, n: int, size: int = 128) -> list[str]:
    """``n`` small grayscale PNGs; returns their names."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        name = f"Patient_{i % 7}({1000 + i % 7})_1-3_1_ABC_frame_{i:06d}.png"
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(directory / name)
        names.append(name)
    return names


def write_records(path: Path, names: list[str], n: int, size: int = 128, seed: int = 0) -> None:
    """``n`` records over ``names``: one text, one 12-point polygon each, 1% repeats of an earlier record."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        if i and rng.random() < 0.01:
            records.append(records[rng.randrange(i)])
            continue
        cx, cy, r = rng.uniform(40, size - 40), rng.uniform(40, size - 40), rng.uniform(10, 30)
        poly = []
        for k in range(12):
            a = 2 * np.pi * k / 12
            poly += [round(cx + r * np.cos(a), 2), round(cy + r * np.sin(a), 2)]
        records.append({"image": names[i % len(names)], "mask": [[poly]], "text": ["blood vessel"]})
    path.write_text(json.dumps(records))


def run_worker(annotations: str, images: str) -> None:
    """Child process: validate once, print ``seconds records valid max_rss_mb``."""
    import resource

    from sa2va_ray.data.validate import validate_annotations

    start, cpu = time.perf_counter(), time.process_time()
    report = validate_annotations(annotations, images)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{seconds} {report.records} {report.valid} {rss_mb} {cpu}")


def measure(annotations: Path, images: Path) -> tuple[float, int, int, float, float]:
    """One validation in a fresh process; returns (seconds, records, valid, max RSS MB, CPU seconds)."""
    out = subprocess.run([sys.executable, __file__, "--worker", str(annotations), str(images)],
                         check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), int(out[1]), int(out[2]), float(out[3]), float(out[4])


def main() -> None:
    """Write both sets, validate each ``--repeats`` times, print medians and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--large", type=int, default=100_000)
    ap.add_argument("--images", type=int, default=20, help="distinct images the records share")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        run_worker(*args.worker)
        return
    rates = {}
    sizes = (args.small, args.large)
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        names = write_images(images, args.images)
        files = {n: Path(tmp) / f"annotations_{n}.json" for n in sizes}
        for n, ann in files.items():
            write_records(ann, names, n)
        results = {n: [] for n in sizes}
        for _ in range(args.repeats):  # interleaved, so that both sizes see the same machine load
            for n in sizes:
                results[n].append(measure(files[n], images))
        for n, runs in results.items():
            seconds, cpu = statistics.median(r[0] for r in runs), statistics.median(r[4] for r in runs)
            rss = max(r[3] for r in runs)
            rates[n] = n / seconds
            print(f"{n:>7} records ({runs[0][2]} valid): median {seconds:6.2f} s of "
                  f"{', '.join(f'{r[0]:.2f}' for r in runs)} (CPU {cpu:.2f} s)  {rates[n]:8.0f} records/s  "
                  f"max RSS {rss:.0f} MB", flush=True)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load}; {args.images} shared images")
    print(f"ratio: {rates[args.large] / rates[args.small]:.2f}")


if __name__ == "__main__":
    main()
