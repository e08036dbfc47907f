"""Masks for a folder of unlabeled images (or one run) with one text, through the evaluation's Ray Data pipeline.

    python jobs/predict.py --config configs/demo.yaml model.path=outputs/demo/model predict.images=DIR \
        predict.text="blood vessel" [predict.run=RUN] [eval.save_masks=coco] [--strict]
    ray job submit --working-dir . -- python jobs/predict.py --config configs/demo.yaml model.path=/shared/model \
        predict.images=/shared/new_runs predict.text="blood vessel"

Writes ``output_dir/predict/`` (or ``predict.out``): ``masks/<image stem>.png`` (0/255, each image's own size),
or ``coco_results.json`` with ``eval.save_masks=coco``, and ``predictions.csv`` (one row per image: status, mask
area, score, threshold). The threshold is the model's calibrated one (``postprocess.json``) unless
``eval.threshold`` says otherwise. Unusable files are rows with their reason; ``--strict`` stops before any work.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sa2va_ray.checkpoint.integrity import check_model_path  # noqa: E402
from sa2va_ray.cli import command_line, init_ray, job_main, parse_job_args  # noqa: E402
from sa2va_ray.config import save_config  # noqa: E402


@job_main
def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_job_args(__doc__.splitlines()[0], argv)
    from sa2va_ray.evaluate.predict_folder import collect_folder, describe_failures, run_prediction
    from sa2va_ray.train.resources import check_gpus_exist

    check_model_path(cfg.model.path)
    inputs = collect_folder(cfg)
    if inputs.failed_rows and (cfg.data.strict or cfg.eval.strict):
        for line in describe_failures(inputs):
            print(f"error: {line}", file=sys.stderr, flush=True)
        print(f"[predict] strict: {len(inputs.failed_rows)} of {inputs.n_records} file(s) cannot be used; nothing was "
              "predicted", file=sys.stderr, flush=True)
        return 2
    init_ray()
    check_gpus_exist(cfg, "prediction with scaling.use_gpu=true")
    out = Path(cfg.predict.out) if cfg.predict.out else Path(cfg.output_dir) / "predict"
    run_prediction(cfg, inputs, out)
    save_config(cfg, out / "config.yaml", command=command_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
