"""Evaluation throughput: the Ray Data pipeline vs a sequential per-image ``predict`` loop (how the user evaluated).

Same tiny model (saved once, loaded from disk by both sides), same synthetic images, same work per image: the
probability map, overlap + vessel metrics, the mask hash and the threshold curve with clDice per threshold (what the
predictor actors compute for ``threshold_curve.csv``).

* Sequential: a fresh Python process (what ``python my_eval.py`` costs) imports the model code, loads the model and
  loops: read an image, ``model.predict([image], [text])``, score it, one image at a time.
* Pipeline: :func:`sa2va_ray.evaluate.pipeline.run_eval_pipeline` on an already running Ray (a cluster is
  running before ``ray job submit``): decode tasks, predictor actors that import the model code and load the
  model, batched prediction and metrics in the actors, rows back on the driver.

Both are timed end to end (start-up included) and in steady state (the loop alone; for the pipeline, from the first
result batch on the driver to the last). The sides alternate ``--repeats`` times (load changes hit both alike);
medians are reported.
Last line: ``ratio: X`` = end-to-end pipeline images/s over end-to-end sequential images/s.

    python benchmarks/eval_throughput.py [--images 256] [--size 128] [--actors 2] [--batch-size 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sa2va_ray.config import load_config  # noqa: E402


def run_sequential_worker(model_dir: str, annotations: str, images_dir: str, n: int) -> None:
    """Body of the sequential process: import, load, loop; prints the loop seconds as JSON.

    Per image it does what a predictor actor does per row: probabilities at the model's threshold, the overlap and
    vessel metrics, the mask hash and the threshold curve with clDice per threshold (``threshold_curve.csv``).
    """
    import numpy as np
    from PIL import Image

    from sa2va_ray.data.annotations import load_image, rasterize_polygons
    from sa2va_ray.data.validate import load_valid_samples
    from sa2va_ray.evaluate.metrics import compute_sample_metrics
    from sa2va_ray.evaluate.table import hash_mask
    from sa2va_ray.evaluate.threshold import sample_curve
    from sa2va_ray.model import Sa2VAModel
    from sa2va_ray.model.postprocess import model_threshold

    samples, _ = load_valid_samples(annotations, images_dir)
    model = Sa2VAModel.from_pretrained(model_dir).eval()
    threshold = model_threshold(model)
    t0 = time.perf_counter()
    for s in samples[:n]:
        image = load_image(Path(images_dir) / s.image)
        gt = rasterize_polygons(s.masks[0], image.height, image.width)
        prob = model.predict([Image.fromarray(np.asarray(image))], [s.texts[0]], threshold=threshold,
                             return_probs=True)[0].prob
        pred = prob > threshold
        compute_sample_metrics(pred[None], gt[None], vessel=True)
        hash_mask(pred)
        sample_curve(prob, gt, with_cldice=True)
    print(json.dumps({"loop_seconds": time.perf_counter() - t0}))


def run_sequential(model_dir: Path, annotations: Path, images_dir: Path, n: int) -> tuple[float, float]:
    """(end-to-end seconds of a fresh process, seconds of its loop alone)."""
    cmd = [sys.executable, __file__, "--sequential-worker", str(model_dir), str(annotations), str(images_dir), str(n)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    total = time.perf_counter() - t0
    return total, json.loads(out.stdout.strip().splitlines()[-1])["loop_seconds"]


class BatchClock:
    """Stands in for the overlay selector: records when each output batch reaches the driver."""

    def __init__(self):
        self.times: list[tuple[float, int]] = []

    def update(self, batch) -> None:
        self.times.append((time.perf_counter(), len(batch)))


def run_pipeline(cfg, inputs) -> tuple[float, float, int]:
    """(end-to-end seconds, steady-state images/s after the first result batch, number of ok rows)."""
    from sa2va_ray.evaluate.pipeline import run_eval_pipeline

    clock = BatchClock()
    t0 = time.perf_counter()
    table = run_eval_pipeline(cfg, inputs, selector=clock)
    total = time.perf_counter() - t0
    (t_first, n_first), (t_last, _) = clock.times[0], clock.times[-1]
    steady = (len(table) - n_first) / (t_last - t_first) if t_last > t_first else float("nan")
    return total, steady, int((table["status"] == "ok").sum())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--sequential-worker"]:
        run_sequential_worker(argv[1], argv[2], argv[3], int(argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Idle OpenMP threads sleep instead of spinning, on both sides (set before Ray starts, so its workers inherit it).
    # On a shared machine whose load exceeds its cores, a spinning torch thread pool makes the sequential side (two
    # threads) 20-30x slower while the actors (one thread each) barely notice: the ratio would measure the load.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Ray starts its workers at nice 15 (RAY_worker_niceness) so its control plane stays responsive; the sequential
    # process runs at nice 0. Alone on a machine that changes nothing, but on a shared one the actors then lose the
    # cores to every other process while the sequential side keeps them. Both sides at the same priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    import ray

    from sa2va_ray.data.synthetic import generate_synthetic_set
    from sa2va_ray.evaluate.pipeline import collect_eval_inputs
    from sa2va_ray.model import build_tiny_sa2va

    tmp = Path(tempfile.mkdtemp(prefix="eval_bench_"))
    frames = 4
    ann = generate_synthetic_set(tmp / "data", patients=math.ceil(args.images / frames), frames=frames,
                                 size=args.size, seed=0)
    images_dir = ann.parent / "images"
    build_tiny_sa2va(seed=0).save_pretrained(tmp / "model")
    cfg = load_config(None, [
        f"output_dir={tmp / 'run'}", f"data.annotations={ann}", f"data.val_annotations={ann}",
        f"data.images_dir={images_dir}", f"model.path={tmp / 'model'}", f"eval.num_actors={args.actors}",
        f"eval.batch_size={args.batch_size}", "eval.vessel_metrics=true", "eval.num_overlays=0",
    ])  # fmt: skip
    inputs = collect_eval_inputs(cfg)
    inputs.samples = inputs.samples[: args.images]
    n = len(inputs.samples)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{n} images of {args.size}x{args.size}, tiny Sa2VA, {os.cpu_count()} CPU cores (load average {load}), "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, RAY_worker_niceness={os.environ['RAY_worker_niceness']}",
          flush=True)

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)  # its own Ray
    ray.data.DataContext.get_current().enable_progress_bars = False
    seq, seq_loop, pipe, steady = [], [], [], []
    for r in range(args.repeats):  # interleaved, so that a change of machine load hits both sides alike
        total, loop = run_sequential(tmp / "model", ann, images_dir, n)
        seq.append(total)
        seq_loop.append(loop)
        print(f"sequential run {r + 1}: {total:.1f} s end to end ({n / total:.2f} images/s), loop {loop:.1f} s "
              f"({n / loop:.2f} images/s)", flush=True)
        seconds, rate, ok = run_pipeline(cfg, inputs)
        if ok != n:
            raise SystemExit(f"pipeline scored {ok} of {n} images")
        pipe.append(seconds)
        steady.append(rate)
        print(f"pipeline run {r + 1}:   {seconds:.1f} s end to end ({n / seconds:.2f} images/s; {args.actors} actors, "
              f"batch {args.batch_size}), {rate:.2f} images/s once the first batch is out", flush=True)
    ray.shutdown()

    seq_ips, seq_steady = n / statistics.median(seq), n / statistics.median(seq_loop)
    pipe_ips, pipe_steady = n / statistics.median(pipe), statistics.median(steady)
    print(f"steady state:  sequential {seq_steady:.2f} images/s, pipeline {pipe_steady:.2f} images/s "
          f"(ratio {pipe_steady / seq_steady:.2f})")
    print(f"start-up:      sequential {statistics.median(seq) - statistics.median(seq_loop):.1f} s, "
          f"pipeline {statistics.median(pipe) - n / pipe_steady:.1f} s (imports and model load in each actor)")
    print(f"end to end:    sequential {seq_ips:.2f} images/s, pipeline {pipe_ips:.2f} images/s (medians of "
          f"{args.repeats})")
    print(f"ratio: {pipe_ips / seq_ips:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
