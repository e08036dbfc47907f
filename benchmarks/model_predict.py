"""`Sa2VAModel.predict` throughput on the tiny model: teacher-forced at batch 8 vs greedy generation at batch 1.

Teacher-forced: one forward over prompt + "It is [SEG]." for 8 images at once. Generate: one image at a time,
a KV-cached greedy loop of up to `--max-new-tokens` steps (the official `predict_forward` way), then SAM2.
Both run on the same images; each side is timed `--repeats` times and the medians are printed.
Last line: ``ratio: X`` = teacher-forced images/s / generate images/s.

    python benchmarks/model_predict.py [--n 32] [--size 96] [--max-new-tokens 16] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image

from sa2va_ray.model import build_tiny_sa2va


def make_images(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    """Grayscale noise images of slightly varying sizes (as real frames differ)."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((size + i % 7, size)) * 255).astype(np.uint8)) for i in range(n)]


def time_images_per_second(fn, n_images: int, repeats: int) -> float:
    """Median images/s of `fn()` over `repeats` runs (after one warm-up)."""
    fn()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        rates.append(n_images / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="images per run")
    parser.add_argument("--size", type=int, default=96, help="image side in pixels")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest for tiny)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = build_tiny_sa2va(seed=0).eval()
    images = make_images(args.n, args.size)
    texts = ["blood vessel"] * args.n

    forced = time_images_per_second(lambda: model.predict(images, texts, batch_size=8), args.n, args.repeats)
    generate = time_images_per_second(
        lambda: model.predict(images, texts, mode="generate", max_new_tokens=args.max_new_tokens), args.n,
        args.repeats,
    )
    print(f"images: {args.n} of ~{args.size}px, tiny model, {args.threads} thread(s), median of {args.repeats}")
    print(f"teacher_forced batch 8: {forced:8.1f} images/s")
    print(f"generate batch 1:       {generate:8.1f} images/s (greedy, up to {args.max_new_tokens} new tokens; "
          "the random tiny model rarely stops early)")
    print(f"ratio: {forced / generate:.2f}")


if __name__ == "__main__":
    main()
