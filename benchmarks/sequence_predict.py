"""Sequence mode against per-frame prediction on the tiny model, over the same synthetic cine runs.

Sequence (`predict_sequence`): the LLM sees k frames of a run once, SAM2 is prompted on them and its memory carries
the mask through the run. Per frame (`predict`, teacher-forced, batch 8): the LLM and SAM2 on every frame. Both are
timed `--repeats` times over all runs (after a warm-up); medians are printed with J, F and J&F against the synthetic
ground truth (per run, then averaged). The tiny model is random, so these say nothing about quality, only that
both ran on the same frames. Two variants of sequence mode are timed beside it: ``offload`` (the memory bank in CPU
memory, `eval.sequence_offload`; its masks must equal sequence mode's, which is checked) and, with ``--chunk C``, the
runs split as ``eval.sequence_chunk=C eval.sequence_overlap=--overlap`` splits them (each chunk its own LLM call;
overlap frames from the earlier chunk). Last line: ``ratio: X`` = sequence frames/s / per-frame frames/s.

    python benchmarks/sequence_predict.py [--patients 2] [--frames 16] [--size 128] [--k 5] [--repeats 3]
                                          [--chunk 8 --overlap 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sa2va_ray.data.annotations import load_samples, rasterize_polygons
from sa2va_ray.data.runs import discover_runs
from sa2va_ray.evaluate.metrics import run_metrics
from sa2va_ray.evaluate.sequence import chunk_bounds
from sa2va_ray.model import build_tiny_sa2va


def load_runs(root: Path) -> list[tuple[list[Image.Image], list[np.ndarray], str]]:
    """(frames, ground-truth masks, text) of every run of a synthetic set, frames in order."""
    records = json.loads((root / "annotations.json").read_text())
    samples, _ = load_samples(root / "annotations.json")
    by_image = {s.image: s for s in samples}
    out = []
    for run in discover_runs(records):
        frames, masks, text = [], [], by_image[run.frames[0]].texts[0]
        for i in run.record_indices:
            sample = by_image[records[i]["image"]]
            image = Image.open(root / "images" / sample.image).convert("RGB")
            frames.append(image)
            masks.append(rasterize_polygons(sample.masks[0], image.height, image.width))
        out.append((frames, masks, text))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=2)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=0, help="also time runs split into chunks of this many frames")
    ap.add_argument("--overlap", type=int, default=2, help="frames shared by consecutive chunks (with --chunk)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "sa2va_ray.data.synthetic", "--out", tmp, "--patients",
                        str(args.patients), "--frames", str(args.frames), "--size", str(args.size), "--seed", "0"],
                       check=True, capture_output=True)
        runs = load_runs(Path(tmp))
    model = build_tiny_sa2va(seed=0).eval()
    n_frames = sum(len(f) for f, _, _ in runs)

    def sequence():
        return [model.predict_sequence(frames, text, k=args.k).masks for frames, _, text in runs]

    def per_frame():
        return [model.predict(frames, [text] * len(frames), batch_size=8) for frames, _, text in runs]

    def offloaded():
        return [model.predict_sequence(frames, text, k=args.k, offload=True).masks for frames, _, text in runs]

    def chunked():
        out = []
        for frames, _, text in runs:
            masks = []
            for start, end, own in chunk_bounds(len(frames), args.chunk, args.overlap):
                masks += model.predict_sequence(frames[start:end], text, k=args.k).masks[own:]
            out.append(masks)
        return out

    variants = [("sequence", sequence), ("per-frame", per_frame), ("offload", offloaded)]
    if args.chunk:
        variants.append((f"chunks {args.chunk}/{args.overlap}", chunked))
    results, rates = {}, {}
    for name, fn in variants:
        results[name] = fn()  # warm-up, and the masks scored below
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        rates[name] = n_frames / statistics.median(times)
    same = all(np.array_equal(a, b) for x, y in zip(results["sequence"], results["offload"]) for a, b in zip(x, y))
    for name in rates:
        per_run = [run_metrics(masks, gts) for masks, (_, gts, _) in zip(results[name], runs)]
        j, f = (float(np.mean([r[key] for r in per_run])) for key in ("j", "f"))
        print(f"{name:12s} {rates[name]:8.2f} frames/s (median of {args.repeats}), J {j:.3f}  F {f:.3f}  "
              f"J&F {(j + f) / 2:.3f} (mean over runs)")
    print(f"{len(runs)} runs, {n_frames} frames, k={args.k}; offload masks identical to sequence mode: {same}")
    print(f"ratio: {rates['sequence'] / rates['per-frame']:.2f}")


if __name__ == "__main__":
    main()
