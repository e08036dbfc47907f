"""Distributed LoRA training of Sa2VA with Ray Train + DeepSpeed ZeRO.

    python jobs/train.py --config configs/demo.yaml [dotted.key=value ...]
    ray job submit --working-dir . -- python jobs/train.py --config configs/demo.yaml
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
    check_model_path(cfg.model.path)
    check_data_paths(cfg)
    from sa2va_ray.data.prepare import prepare_splits, require_training_splits

    splits = prepare_splits(cfg)  # validation and the patient split need no Ray: bad data fails before it starts
    print("[data] " + splits.summary().replace("\n", "\n[data] "), flush=True)
    require_training_splits(cfg, splits)
    init_ray()
    from sa2va_ray.train.driver import run_training_driver

    outcome = run_training_driver(cfg, splits)
    from sa2va_ray.export.exporter import export_outcome

    export_outcome(outcome, cfg.output_dir)
    save_config(cfg, command=command_line())  # after the outputs it describes: an interrupted run leaves the old one
    print(f"[train] done: model in {outcome.model_dir}, checkpoint {outcome.checkpoint}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
