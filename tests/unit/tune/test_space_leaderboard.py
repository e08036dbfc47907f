import math

import pandas as pd
import pytest

from sa2va_ray.config import ConfigError, load_config
from sa2va_ray.tune.leaderboard import loss_vs_metric_note, write_leaderboard
from sa2va_ray.tune.space import build_search_space


def test_space_from_tune_demo():
    cfg = load_config("configs/tune_demo.yaml")
    space = build_search_space(cfg)
    assert set(space) == {"loss.mask_weight", "loss.dice_weight", "loss.lm_weight"}
    assert 0.25 <= space["loss.mask_weight"].sample() <= 4.0


@pytest.mark.parametrize("space,match", [
    ({"loss.nope": {"type": "uniform", "low": 0, "high": 1}}, "not a config key"),
    ({"loss.mask_weight": {"type": "gaussian"}}, "needs"),
    ({"loss.mask_weight": {"type": "uniform", "low": 0}}, "missing 'high'"),
])
def test_space_errors(space, match):
    cfg = load_config("configs/tune_demo.yaml")
    cfg.tune.space = space
    with pytest.raises(ConfigError, match=match):
        build_search_space(cfg)


def test_leaderboard_note_and_best_yaml(tmp_path):
    cfg = load_config("configs/tune_demo.yaml", [f"output_dir={tmp_path}"])
    df = pd.DataFrame({
        "rank": [1, 2], "trial_id": ["t1", "t2"],
        "loss.mask_weight": [0.5, 3.0], "loss.dice_weight": [1.0, 0.1], "loss.lm_weight": [0.1, 1.0],
        "best_val/dice": [0.6, 0.4], "final_train_loss": [0.9, 0.2], "checkpoint_path": ["", ""],
    })
    note = loss_vs_metric_note(df, "val/dice")
    assert note and "t2" in note and "not the best" in note
    out = write_leaderboard(df, cfg, tmp_path / "tune")
    assert "not the best" in (out / "leaderboard.md").read_text()
    best = load_config(out / "best.yaml")
    assert math.isclose(best.loss.mask_weight, 0.5) and math.isclose(best.loss.lm_weight, 0.1)
    assert (out / "best.yaml").read_text().startswith("# python jobs/train.py")


@pytest.mark.parametrize("overrides,total,expected", [
    ([], {"CPU": 2.0}, 2),  # tune_demo: 2 workers x 0.25 CPU per trial, half a core kept for decoding
    (["scaling.cpus_per_worker=1.0"], {"CPU": 2.0}, 1),  # never below one trial
    (["scaling.use_gpu=true", "scaling.num_workers=4"], {"CPU": 64.0, "GPU": 16.0}, 4),  # 4 nodes of 4x 3090
    (["scaling.use_gpu=true", "scaling.num_workers=2"], {"CPU": 64.0, "GPU": 16.0}, 8),
    (["tune.max_concurrent_trials=3"], {"CPU": 2.0}, 3),  # set by hand: kept
])
def test_max_concurrent_trials_derived_from_cluster_and_scaling(overrides, total, expected):
    from sa2va_ray.tune.driver import derive_max_concurrent

    cfg = load_config("configs/tune_demo.yaml", overrides)
    assert derive_max_concurrent(cfg, total) == expected
