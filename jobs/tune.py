"""Ray Tune sweep of the loss weights against the validation metric (each trial a multi-worker Ray Train run).

    python jobs/tune.py --config configs/tune_demo.yaml [dotted.key=value ...]
    ray job submit --working-dir . -- python jobs/tune.py --config configs/tune_demo.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sa2va_ray.checkpoint.integrity import check_model_path  # noqa: E402
from sa2va_ray.cli import (  # noqa: E402
    check_data_paths,
    command_line,
    init_ray,
    job_main,
    parse_job_args,
)
from sa2va_ray.config import save_config  # noqa: E402


@job_main
def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_job_args(__doc__.splitlines()[0], argv)
    check_model_path(cfg.model.path)
    check_data_paths(cfg)
    from sa2va_ray.data.prepare import prepare_splits, require_training_splits

    splits = prepare_splits(cfg)  # validation and the patient split need no Ray: bad data fails before it starts
    print("[data] " + splits.summary().replace("\n", "\n[data] "), flush=True)
    require_training_splits(cfg, splits, need_val=True)
    init_ray()
    from sa2va_ray.train.resources import check_training_fits
    from sa2va_ray.tune.driver import run_tune_driver

    check_training_fits(cfg)  # every trial is a run of scaling.num_workers workers
    from sa2va_ray.tune.leaderboard import build_leaderboard, loss_vs_metric_note, write_leaderboard

    grid = run_tune_driver(cfg, splits)
    board = build_leaderboard(grid, cfg)
    out = write_leaderboard(board, cfg, Path(cfg.output_dir) / "tune", command=command_line())
    print((out / "leaderboard.md").read_text(), flush=True)
    note = loss_vs_metric_note(board, cfg.tune.metric)
    errors = int((board["status"] == "error").sum()) if len(board) else 0
    if cfg.tune.export_best and len(board) and board.iloc[0]["checkpoint_path"]:
        from sa2va_ray.export.exporter import export_checkpoint

        model_dir = export_checkpoint(board.iloc[0]["checkpoint_path"], out / "best_model")
        print(f"[tune] best trial {board.iloc[0]['trial_id']} exported to {model_dir}", flush=True)
    save_config(cfg, command=command_line())  # after the outputs it describes
    print(f"[tune] leaderboard: {out / 'leaderboard.md'}; ready-to-run config: {out / 'best.yaml'}", flush=True)
    if note:
        print(f"[tune] {note}", flush=True)
    return 1 if errors == len(board) else 0


if __name__ == "__main__":
    sys.exit(main())
