"""Choose the mask threshold of a model on the validation split and store it with the model (postprocess.json).

    python jobs/calibrate.py --config configs/demo.yaml model.path=outputs/demo/model [eval.calibrate_metric=dice]
    ray job submit --working-dir . -- python jobs/calibrate.py --config configs/demo.yaml model.path=/shared/model

Evaluates the set `jobs/evaluate.py` would (``data.val_annotations``, else the validation patients of the split),
scores thresholds 0.05-0.95, picks the best by ``eval.calibrate_metric`` and writes ``model.path/postprocess.json``.
From then on predict, evaluation and export use that threshold; an evaluation of this same set is scored at 0.5 and
shows the calibrated value flagged (``eval.same_set_threshold=true`` applies it). Outputs of the calibration run go to
``output_dir/calibration/`` (threshold_curve.csv/png, summary.md, samples.parquet).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sa2va_ray.checkpoint.integrity import check_model_path  # noqa: E402
from sa2va_ray.cli import check_data_paths, command_line, init_ray, job_main, parse_job_args  # noqa: E402
from sa2va_ray.config import ConfigError, save_config, with_overrides  # noqa: E402


@job_main
def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_job_args(__doc__.splitlines()[0], argv)
    if not cfg.model.path:
        raise ConfigError("model.path must name the model directory or training checkpoint to calibrate "
                          "(its postprocess.json is written there)")
    if cfg.eval.calibrate_metric == "cldice" and not cfg.eval.vessel_metrics:
        raise ConfigError("eval.calibrate_metric=cldice needs eval.vessel_metrics=true")
    if cfg.eval.mode == "sequence":
        raise ConfigError("calibrate with eval.mode=teacher_forced or generate (sequence mode has no threshold curve)")
    from sa2va_ray.evaluate.calibration import calibrate_from_result, describe_choice
    from sa2va_ray.evaluate.pipeline import run_evaluation
    from sa2va_ray.train.resources import check_gpus_exist

    check_model_path(cfg.model.path)
    check_data_paths(cfg)
    init_ray()
    check_gpus_exist(cfg, "calibration with scaling.use_gpu=true")
    run_cfg = with_overrides(cfg, {"eval.threshold": "0.5", "eval.num_overlays": 0})  # the curve needs no prior
    result = run_evaluation(run_cfg, out_dir=Path(cfg.output_dir) / "calibration")
    save_config(cfg, Path(cfg.output_dir) / "calibration" / "config.yaml", command=command_line())
    if result.curve is None:
        print(f"[calibrate] no sample was scored; see {result.out_dir / 'samples.csv'}", file=sys.stderr, flush=True)
        return 1
    choice, path = calibrate_from_result(cfg, result)
    print(f"\n[calibrate] {describe_choice(choice)}\n[calibrate] wrote {path}\n"
          f"[calibrate] curve: {result.out_dir / 'threshold_curve.png'}, {result.out_dir / 'threshold_curve.csv'}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
