"""Batch evaluation of a Sa2VA model over a whole validation split with Ray Data.

    python jobs/evaluate.py --config configs/demo.yaml [--strict] [model.path=outputs/demo/model] [eval.num_actors=4]
    ray job submit --working-dir . -- python jobs/evaluate.py --config configs/demo.yaml model.path=/shared/model

Writes ``output_dir/eval/``: samples.parquet, samples.csv, summary.json, summary.md, dice_hist.png, overlays/.
Exit code 1 with ``--strict`` (or ``eval.strict=true``) when any sample failed; the tables are written first.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sa2va_ray.checkpoint.integrity import check_model_path  # noqa: E402
from sa2va_ray.cli import check_data_paths, command_line, init_ray, job_main, parse_job_args  # noqa: E402
from sa2va_ray.config import save_config  # noqa: E402


@job_main
def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_job_args(__doc__.splitlines()[0], argv)
    from sa2va_ray.evaluate.pipeline import run_evaluation
    from sa2va_ray.evaluate.report import format_metric_table
    from sa2va_ray.train.resources import check_gpus_exist

    check_model_path(cfg.model.path)
    check_data_paths(cfg)
    init_ray()
    check_gpus_exist(cfg, "evaluation with scaling.use_gpu=true")
    result = run_evaluation(cfg)  # eval/ is replaced only once complete
    save_config(cfg, command=command_line())  # then the config that produced it
    s, out = result.summary, result.out_dir
    print(f"\n[eval] {s['n_records']} records, {s['n_samples']} samples: {s['n_ok']} ok, {s['n_failed']} failed; "
          f"gIoU {s['giou']:.4f}, cIoU {s['ciou']:.4f}; model {str(s['model_fingerprint'])[:12]}", flush=True)
    print(format_metric_table(s), flush=True)
    print(f"[eval] tables: {out / 'samples.parquet'}, {out / 'samples.csv'}\n"
          f"[eval] summary: {out / 'summary.md'}, {out / 'summary.json'}\n"
          f"[eval] pictures: {out / 'dice_hist.png'}, {out / 'overlays'} ({len(result.overlays)} overlays)", flush=True)
    if s["n_failed"] and (cfg.eval.strict or cfg.data.strict):
        print(f"[eval] strict: {s['n_failed']} sample(s) failed ({s['errors_by_code']}); see {out / 'samples.csv'}",
              file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
