"""Sa2VAConfig: presets, serialisation, validation."""

from __future__ import annotations

import pickle

import pytest

from sa2va_ray.model import Sa2VAConfig, real_preset_config


def test_real_preset_has_internvl3_8b_and_hiera_l_dimensions():
    cfg = real_preset_config()
    assert cfg.text_config.hidden_size == 3584 and cfg.text_config.num_hidden_layers == 28
    assert cfg.vision_config.hidden_size == 1024 and cfg.tile_size == 448 and cfg.image_tokens_per_tile == 256
    assert cfg.sam2_settings.image_size == 1024 and cfg.sam2_settings.low_res_size == 256
    assert cfg.sam2_settings.stages == [2, 6, 36, 4] and cfg.max_tiles == 12
    assert (cfg.mask_weight, cfg.dice_weight, cfg.lm_weight) == (2.0, 0.5, 1.0)
    assert not cfg.internvl_config.tie_word_embeddings and not cfg.text_config.tie_word_embeddings


def test_config_json_round_trip(tmp_path):
    cfg = real_preset_config(mask_weight=1.0, num_points=12544, max_tiles=6)
    cfg.save_pretrained(tmp_path)
    again = Sa2VAConfig.from_pretrained(tmp_path)
    assert again.to_dict() == cfg.to_dict()
    assert again.num_points == 12544 and again.sam2_settings == cfg.sam2_settings
    assert again.text_config.hidden_size == 3584
    assert pickle.loads(pickle.dumps(cfg)).to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_tiles": 0}, "min_tiles"),
        ({"num_points": -1}, "num_points"),
        ({"prompt_template": "Please segment {text}."}, "<image>"),
        ({"sam2": {"image_size": 1000}}, "multiple of 32"),
    ],
)
def test_invalid_values_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        real_preset_config(**overrides)
