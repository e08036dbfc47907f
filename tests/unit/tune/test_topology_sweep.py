"""The topology sweep: configs/tune_topology.yaml sweeps the clDice weight, ranks by val/cldice, and the leaderboard
shows Dice and clDice of the same report side by side (and ranks a minimised metric ascending)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from sa2va_ray.config import load_config
from sa2va_ray.tune.leaderboard import build_leaderboard, write_leaderboard
from sa2va_ray.tune.space import build_search_space


def _trial(tid: str, cldice_weight: float, history: list[dict]) -> SimpleNamespace:
    last = {**history[-1], "trial_id": tid, "train/loss": 1.0, "step": 60, "training_iteration": len(history),
            "checkpoint_path": ""}
    return SimpleNamespace(metrics_dataframe=pd.DataFrame(history), metrics=last, path=f"/x/{tid}", error=None,
                           config={"loss.cldice_weight": cldice_weight, "loss.mask_weight": 1.0,
                                   "loss.dice_weight": 0.5})


GRID = [
    _trial("base", 0.0, [{"val/dice": 0.50, "val/cldice": 0.40, "val/betti0_error": 6.0},
                         {"val/dice": 0.55, "val/cldice": 0.42, "val/betti0_error": 5.0}]),
    _trial("cl", 1.5, [{"val/dice": 0.48, "val/cldice": 0.61, "val/betti0_error": 2.0},
                       {"val/dice": 0.52, "val/cldice": 0.58, "val/betti0_error": 3.0}]),
]


def test_tune_topology_yaml_sweeps_the_cldice_weight_ranked_by_val_cldice():
    cfg = load_config(Path("configs/tune_topology.yaml"))
    assert cfg.tune.metric == "val/cldice" and cfg.tune.direction == "max"
    assert cfg.train.best_metric == "val/cldice"
    space = build_search_space(cfg)
    assert {"loss.cldice_weight", "loss.mask_weight", "loss.dice_weight"} <= set(space)
    assert 0.0 in cfg.tune.space["loss.cldice_weight"]["values"]  # the baseline is in the sweep


def test_leaderboard_shows_dice_and_cldice_of_the_best_report(tmp_path):
    cfg = load_config(Path("configs/tune_topology.yaml"), [f"output_dir={tmp_path}"])
    board = build_leaderboard(GRID, cfg)
    assert board["trial_id"].tolist() == ["cl", "base"]
    cl = board.iloc[0]
    # Dice and Betti-0 error come from the report where clDice was best (the first one), not the last
    assert cl["best_val/cldice"] == pytest.approx(0.61) and cl["val/dice"] == pytest.approx(0.48)
    assert cl["val/betti0_error"] == pytest.approx(2.0)
    assert "val/cldice" not in board.columns  # the ranking metric is not repeated
    out = write_leaderboard(board, cfg, tmp_path / "tune")
    md = (out / "leaderboard.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("|"))
    assert "best_val/cldice" in header and "val/dice" in header and "val/betti0_error" in header
    assert load_config(out / "best.yaml").loss.cldice_weight == pytest.approx(1.5)


def test_a_minimised_metric_ranks_ascending(tmp_path):
    cfg = load_config(Path("configs/tune_topology.yaml"), [f"output_dir={tmp_path}", "tune.metric=val/betti0_error"])
    board = build_leaderboard(GRID, cfg)
    assert board["trial_id"].tolist() == ["cl", "base"]
    assert board.iloc[0]["best_val/betti0_error"] == pytest.approx(2.0)
    assert board.iloc[1]["best_val/betti0_error"] == pytest.approx(5.0)
    assert board.iloc[1]["val/cldice"] == pytest.approx(0.42)
