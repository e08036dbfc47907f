"""Topology-aware training on the synthetic set: baseline vs the soft clDice loss vs hard-sample mining.

Each variant is trained with configs/demo.yaml's training settings (the demo budget: 200 steps, 2 Ray Train workers,
DeepSpeed ZeRO-2, the tiny Sa2VA) for several seeds (``train.seed`` = ``model.seed``), and scored by the run's
final in-training validation on the whole validation split (val/dice, val/cldice, val/betti0_error, ...). Each
finished run is appended to ``--out``/runs.jsonl, so an interrupted benchmark keeps its numbers and a re-run skips
the runs already there.

    python benchmarks/topology_losses.py [--seeds 0 1 2] [--cldice-weight 0.25 1.0] [--mining-threshold 0.75]
        [--steps 200] [--out DIR]

Prints one row per variant (medians over seeds, per-seed values in brackets). Last line: ``ratio: X`` = median
val/cldice with the clDice loss (the first ``--cldice-weight``) / median val/cldice of the baseline (higher is
better).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sa2va_ray.config import load_config  # noqa: E402

METRICS = ("val/dice", "val/cldice", "val/betti0_error", "val/recall", "val/dice_at_best_threshold")
SHOWN = 4  # metrics in the printed table (all of METRICS are in runs.jsonl)


def variants(cldice_weights: list[float], mining_thresholds: list[float]) -> dict[str, list[str]]:
    """Variant name -> config overrides on top of configs/demo.yaml (``hard_mining``: the default threshold)."""
    out: dict[str, list[str]] = {"baseline": []}
    out.update({f"cldice_weight={w:g}": [f"loss.cldice_weight={w}"] for w in cldice_weights})
    default = load_config(REPO / "configs/demo.yaml").train.hard_mining_threshold
    for t in mining_thresholds:
        name = "hard_mining" if t == default else f"hard_mining@{t:g}"
        out[name] = ["train.hard_mining=true", f"train.hard_mining_threshold={t}"]
    return out


def run_one(name: str, overrides: list[str], seed: int, steps: int, out: Path, data: Path) -> dict:
    """Train one variant with one seed through the real training driver; its final validation metrics."""
    from sa2va_ray.data.prepare import prepare_splits
    from sa2va_ray.train.driver import run_training_driver

    run_dir = out / "runs" / f"{name.replace('=', '_')}_seed{seed}"
    cfg = load_config(REPO / "configs/demo.yaml", [
        f"output_dir={run_dir}", f"data.synthetic.out={data}", f"data.annotations={data / 'annotations.json'}",
        f"data.images_dir={data / 'images'}", f"train.seed={seed}", f"model.seed={seed}",
        f"train.max_steps={steps}", "train.export_best=false", *overrides,
    ]).resolve_paths()
    splits = prepare_splits(cfg)
    t0 = time.perf_counter()
    outcome = run_training_driver(cfg, splits)
    metrics = {k: float(outcome.metrics[k]) for k in METRICS if k in outcome.metrics}
    return {"variant": name, "seed": seed, "steps": steps, "seconds": round(time.perf_counter() - t0, 1), **metrics}


def table(rows: list[dict], names: list[str]) -> list[str]:
    """One line per variant: the median of each metric over seeds, the per-seed values in brackets."""
    lines = [f"{'variant':<20}" + "".join(f"{m:>31}" for m in METRICS[:SHOWN]) + f"{'runs':>5}"]
    for name in names:
        mine = sorted((r for r in rows if r["variant"] == name), key=lambda r: r["seed"])
        cells = []
        for m in METRICS[:SHOWN]:
            values = [r[m] for r in mine if m in r]
            each = ", ".join(f"{v:.3f}" for v in values)
            cells.append(f"{statistics.median(values):.4f} [{each}]" if values else "n/a")
        lines.append(f"{name:<20}" + "".join(f"{c:>31}" for c in cells) + f"{len(mine):>5}")
    return lines


def median_of(rows: list[dict], name: str, metric: str) -> float:
    values = [r[metric] for r in rows if r["variant"] == name and metric in r]
    return statistics.median(values) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cldice-weight", type=float, nargs="+", default=[0.25, 1.0])
    ap.add_argument("--mining-threshold", type=float, nargs="+", default=[0.75],
                    help="train.hard_mining_threshold of each hard-mining variant")
    ap.add_argument("--steps", type=int, default=0, help="0: configs/demo.yaml's train.max_steps")
    ap.add_argument("--out", default=str(REPO / "outputs" / "bench_topology"))
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    steps = args.steps or load_config(REPO / "configs/demo.yaml").train.max_steps
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    todo = variants(args.cldice_weight, args.mining_threshold)
    from sa2va_ray.cli import init_ray

    init_ray()
    # Seed-major order: an interrupted benchmark has every variant at the same number of seeds.
    for seed in args.seeds:
        for name, overrides in todo.items():
            if any(r["variant"] == name and r["seed"] == seed and r["steps"] == steps for r in rows):
                continue
            row = run_one(name, overrides, seed, steps, out, out / "synthetic")
            rows.append(row)
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"[bench] {json.dumps(row)}", flush=True)
    rows = [r for r in rows if r["steps"] == steps]
    names = list(todo)
    print(f"\nmedians over seeds {args.seeds}, {steps} steps (demo budget), final validation on the whole val split")
    print("\n".join(table(rows, names)))
    base, cl = median_of(rows, names[0], "val/cldice"), median_of(rows, names[1], "val/cldice")
    mined = median_of(rows, names[1 + len(args.cldice_weight)], "val/cldice")
    print(f"hard mining vs baseline, val/cldice: {mined / base:.3f}")
    print(f"ratio: {cl / base:.3f}")


if __name__ == "__main__":
    main()
