"""`make demo`: the whole pipeline on the embedded default (tiny Sa2VA, synthetic angiography, CPU workers).

    python jobs/demo.py --config configs/demo.yaml [dotted.key=value ...]

Synthetic data -> validation report -> patient split -> distributed training (Ray Train + DeepSpeed ZeRO-2)
-> verified export -> Ray Data evaluation of the untrained and the trained model -> summary table -> threshold
calibrated on the validation split and applied to a held-out synthetic test set -> the trained model on every run as
a video (eval.mode=sequence) beside frame by frame, per run.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sa2va_ray.cli import command_line, init_ray, job_main, parse_job_args  # noqa: E402
from sa2va_ray.config import save_config  # noqa: E402


def _banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 70 - len(text)), flush=True)


@job_main
def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_job_args(__doc__.splitlines()[0], argv)
    t0 = time.perf_counter()

    from sa2va_ray.data.prepare import ensure_data, prepare_splits
    from sa2va_ray.data.validate import validate_annotations

    _banner("1/5 synthetic angiography set")
    ensure_data(cfg)
    print(f"annotations: {cfg.data.annotations}\nimages:      {cfg.data.images_dir}")
    _banner("2/5 validation")
    print(validate_annotations(cfg.data.annotations, cfg.data.images_dir).format(), flush=True)
    from sa2va_ray.data.convert.roundtrip import labelme_roundtrip  # "your own data": the LabelMe path, checked

    print(labelme_roundtrip(cfg.data.annotations, cfg.data.images_dir, Path(cfg.output_dir) / "labelme").line())
    _banner("3/5 patient-level split")
    splits = prepare_splits(cfg)
    print(splits.summary() + f"\nsplit files: {Path(cfg.output_dir) / 'split'}", flush=True)

    init_ray()
    _banner("4/5 distributed training (Ray Train + DeepSpeed)")
    from sa2va_ray.train.driver import run_training_driver

    outcome = run_training_driver(cfg, splits)
    from sa2va_ray.export.exporter import export_outcome

    export_outcome(outcome, cfg.output_dir)
    print(f"model: {outcome.model_dir}\ncheckpoint: {outcome.checkpoint}", flush=True)

    _banner("5/5 evaluation (Ray Data) of the untrained and the trained model")
    from sa2va_ray.evaluate.pipeline import run_evaluation

    base = copy.deepcopy(cfg)
    base.model.path = ""  # the same tiny model, untrained (built from the config)
    untrained = run_evaluation(base, out_dir=Path(cfg.output_dir) / "eval_untrained").summary
    cfg.model.path = outcome.model_dir
    trained_result = run_evaluation(cfg, out_dir=Path(cfg.output_dir) / "eval")
    trained, frame_table = trained_result.summary, trained_result.table
    from sa2va_ray.evaluate.report import format_metric_table

    print(format_metric_table(trained), flush=True)
    d0 = untrained["metrics"]["dice"]["mean"]
    d1 = trained["metrics"]["dice"]["mean"]
    _banner("result")
    print(f"validation Dice, untrained tiny Sa2VA: {d0:.4f}")
    print(f"validation Dice, trained tiny Sa2VA:   {d1:.4f}   "
          f"(95% CI {trained['metrics']['dice']['ci_low']:.4f}..{trained['metrics']['dice']['ci_high']:.4f}, "
          f"{trained['n_ok']} samples of {trained.get('n_patients_ok')} patients; the CI resamples patients)")
    print(f"tables and overlays: {Path(cfg.output_dir) / 'eval'}  |  model: {outcome.model_dir}")

    _banner("threshold: calibrated on the validation split, applied to a held-out test set")
    print(_calibrate_and_test(cfg, trained_result), flush=True)

    _banner("runs as video: sequence mode beside frame mode (trained model)")
    seq_cfg = copy.deepcopy(cfg)
    seq_cfg.eval.mode = "sequence"
    sequence = run_evaluation(seq_cfg, out_dir=Path(cfg.output_dir) / "eval_sequence")
    print(_runs_side_by_side(frame_table, sequence.table), flush=True)
    print(f"per-run table: {Path(cfg.output_dir) / 'eval_sequence' / 'runs.csv'}")
    save_config(cfg, command=command_line())  # after the outputs it describes
    print(f"demo finished in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


def _calibrate_and_test(cfg, val_result) -> str:
    """Choose the threshold on the validation evaluation (its curve; no second pass), store it with the model, and
    score a held-out synthetic test set (new patients) with it: Dice at 0.5 against Dice at the calibrated one."""
    from sa2va_ray.data.synthetic import generate_synthetic_set
    from sa2va_ray.evaluate.calibration import calibrate_from_result, describe_choice
    from sa2va_ray.evaluate.pipeline import run_evaluation

    choice, path = calibrate_from_result(cfg, val_result)
    syn = cfg.data.synthetic
    test_dir = Path(syn.out).parent / (Path(syn.out).name + "_test")
    test_ann = test_dir / "annotations.json"
    if not test_ann.exists():
        generate_synthetic_set(test_dir, patients=4, frames=syn.frames, size=syn.size, seed=syn.seed + 1000)
    test_cfg = copy.deepcopy(cfg)
    test_cfg.data.val_annotations, test_cfg.data.images_dir = str(test_ann), str(test_dir / "images")
    test = run_evaluation(test_cfg, out_dir=Path(cfg.output_dir) / "eval_test")
    s, curve = test.summary, test.curve
    at_half = float(curve.loc[(curve["threshold"] - 0.5).abs() < 1e-9, "dice"].iloc[0]) if curve is not None else \
        float("nan")
    dice = s["metrics"]["dice"]
    return (f"calibrated {describe_choice(choice)}\nstored with the model: {path}; curve: "
            f"{val_result.out_dir / 'threshold_curve.png'}\n"
            f"held-out test set ({s['n_ok']} samples of {s.get('n_patients_ok')} new patients): Dice {at_half:.4f} at "
            f"0.50, {dice['mean']:.4f} at the calibrated {s['threshold']['value']:.2f} (95% CI "
            f"{dice['ci_low']:.4f}..{dice['ci_high']:.4f}); tables: {test.out_dir}")


def _runs_side_by_side(frame_table, sequence_table) -> str:
    """Per run: J frame by frame against J as a video, and the video's F and J&F."""
    from sa2va_ray.evaluate.compare import compare_runs, compare_tables
    from sa2va_ray.evaluate.sequence import run_table

    runs, stats = compare_runs(compare_tables(frame_table, sequence_table, n_boot=200))
    video = run_table(sequence_table).groupby("run_id")[["f", "jf"]].mean()
    lines = [f"{'run':44s} {'frames':>6s} {'J frame':>8s} {'J video':>8s} {'F video':>8s} {'J&F video':>9s}"]
    for r in runs.itertuples():
        f, jf = (video.loc[r.run, k] if r.run in video.index else float("nan") for k in ("f", "jf"))
        lines.append(f"{r.run[:44]:44s} {r.frames:6d} {r.j_a:8.4f} {r.j_b:8.4f} {f:8.4f} {jf:9.4f}")
    if stats is not None:
        lines.append(f"mean J over {len(runs)} runs: frame {stats['mean_a']:.4f}, video {stats['mean_b']:.4f} "
                     f"(video - frame {stats['mean_diff']:+.4f}, "
                     f"95% CI {stats['ci_low']:+.4f}..{stats['ci_high']:+.4f})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
