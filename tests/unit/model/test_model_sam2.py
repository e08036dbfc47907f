"""SAM2 built from dimensions has exactly the module tree Meta's configs instantiate (so checkpoints load strictly)."""

from __future__ import annotations

import pytest
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sa2va_ray.model.sam2_builder import (
    SAM21_MODEL_FLAGS,
    Sam2Settings,
    build_sam2,
    load_sam2_checkpoint,
    load_sam2_settings,
    tiny_sam2_settings,
)

SAM20_FLAGS = {k: v for k, v in SAM21_MODEL_FLAGS.items()
               if k not in ("no_obj_embed_spatial", "proj_tpos_enc_in_obj_ptrs", "use_signed_tpos_enc_to_obj_ptrs")}
SAM20_FLAGS["add_tpos_enc_to_obj_ptrs"] = False


def meta_yaml(s: Sam2Settings, flags: dict) -> dict:
    """The `model:` section Meta's configs use, written independently of our parser."""
    side = s.image_size // 16
    rope = {"_target_": "sam2.modeling.sam.transformer.RoPEAttention", "rope_theta": 10000.0,
            "feat_sizes": [side, side], "embedding_dim": s.d_model, "num_heads": 1, "downsample_rate": 1,
            "dropout": 0.1}
    sine = "sam2.modeling.position_encoding.PositionEmbeddingSine"
    return {"model": {
        "_target_": "sam2.modeling.sam2_base.SAM2Base",
        "image_encoder": {
            "_target_": "sam2.modeling.backbones.image_encoder.ImageEncoder", "scalp": s.scalp,
            "trunk": {"_target_": "sam2.modeling.backbones.hieradet.Hiera", "embed_dim": s.embed_dim,
                      "num_heads": s.num_heads, "stages": s.stages, "global_att_blocks": s.global_att_blocks,
                      "window_pos_embed_bkg_spatial_size": s.window_pos_embed_bkg_spatial_size,
                      "window_spec": s.window_spec},
            "neck": {"_target_": "sam2.modeling.backbones.image_encoder.FpnNeck",
                     "position_encoding": {"_target_": sine, "num_pos_feats": s.d_model, "normalize": True,
                                           "scale": None, "temperature": 10000},
                     "d_model": s.d_model,
                     "backbone_channel_list": [s.embed_dim * 8, s.embed_dim * 4, s.embed_dim * 2, s.embed_dim],
                     "fpn_top_down_levels": s.fpn_top_down_levels, "fpn_interp_model": s.fpn_interp_model},
        },
        "memory_attention": {
            "_target_": "sam2.modeling.memory_attention.MemoryAttention", "d_model": s.d_model,
            "pos_enc_at_input": True, "num_layers": s.memory_attention_layers,
            "layer": {"_target_": "sam2.modeling.memory_attention.MemoryAttentionLayer", "activation": "relu",
                      "dim_feedforward": s.memory_attention_ffn_dim, "dropout": 0.1, "pos_enc_at_attn": False,
                      "self_attention": rope, "d_model": s.d_model, "pos_enc_at_cross_attn_keys": True,
                      "pos_enc_at_cross_attn_queries": False,
                      "cross_attention": {**rope, "rope_k_repeat": True, "kv_in_dim": s.mem_dim}},
        },
        "memory_encoder": {
            "_target_": "sam2.modeling.memory_encoder.MemoryEncoder", "out_dim": s.mem_dim, "in_dim": s.d_model,
            "position_encoding": {"_target_": sine, "num_pos_feats": s.mem_dim, "normalize": True, "scale": None,
                                  "temperature": 10000},
            "mask_downsampler": {"_target_": "sam2.modeling.memory_encoder.MaskDownSampler", "embed_dim": s.d_model,
                                 "kernel_size": 3,
                                 "stride": 2, "padding": 1},
            "fuser": {"_target_": "sam2.modeling.memory_encoder.Fuser", "num_layers": 2,
                      "layer": {"_target_": "sam2.modeling.memory_encoder.CXBlock", "dim": s.d_model,
                                "kernel_size": 7, "padding": 3, "layer_scale_init_value": 1e-6,
                                "use_dwconv": True}},
        },
        "image_size": s.image_size,
        **flags,
    }}


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("flags", [SAM21_MODEL_FLAGS, SAM20_FLAGS], ids=["sam2.1", "sam2.0"])
def test_yaml_round_trip_matches_meta_instantiation(tmp_path, flags):
    doc = meta_yaml(tiny_sam2_settings(), flags)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    settings = load_sam2_settings(path)
    assert settings.embed_dim == 16 and settings.image_size == 128 and settings.model_flags == flags
    ours = build_sam2(settings)
    reference = instantiate(OmegaConf.load(path).model, _recursive_=True)  # Meta's own (hydra) construction
    assert shapes(ours) == shapes(reference)
    # a "Meta checkpoint" of the reference loads strictly through our reader
    torch.save({"model": reference.state_dict()}, tmp_path / "ckpt.pt")
    ours.load_state_dict(load_sam2_checkpoint(tmp_path / "ckpt.pt"), strict=True)
    assert torch.equal(ours.sam_mask_decoder.iou_token.weight, reference.sam_mask_decoder.iou_token.weight)


def test_sam21_and_sam20_layouts_differ():
    a = shapes(build_sam2(Sam2Settings.from_dict({**tiny_sam2_settings().to_dict(), "model_flags": SAM21_MODEL_FLAGS})))
    b = shapes(build_sam2(Sam2Settings.from_dict({**tiny_sam2_settings().to_dict(), "model_flags": SAM20_FLAGS})))
    assert "no_obj_embed_spatial" in a and "no_obj_embed_spatial" not in b


def test_presets_parse_real_dimensions():
    large = load_sam2_settings("sam2.1_hiera_l")
    assert large == Sam2Settings()  # our defaults are SAM2.1 Hiera-L at 1024 px
    assert large.stages == [2, 6, 36, 4] and large.low_res_size == 256
    v20 = load_sam2_settings("sam2_hiera_l")
    assert "no_obj_embed_spatial" not in v20.model_flags
    base_plus = load_sam2_settings("sam2_hiera_b+")  # trunk entries missing from the YAML: Hiera defaults
    assert base_plus.embed_dim == 112 and base_plus.stages == [2, 3, 16, 3]
    with pytest.raises(ValueError, match="unknown SAM2 preset"):
        load_sam2_settings("sam3_giant")


def test_real_preset_matches_meta_instantiation():
    from hydra import compose

    cfg = compose(config_name="configs/sam2.1/sam2.1_hiera_t.yaml")  # `import sam2` initialised hydra
    reference = instantiate(cfg.model, _recursive_=True)
    assert shapes(build_sam2(load_sam2_settings("sam2.1_hiera_t"))) == shapes(reference)


def test_bad_settings_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown SAM2Base arguments"):
        Sam2Settings(model_flags={"use_magic": True})
    with pytest.raises(ValueError, match="multiple of 32"):
        Sam2Settings(image_size=100)
    with pytest.raises(ValueError, match="unknown SAM2 settings"):
        Sam2Settings.from_dict({"embed_dims": 3})
    (tmp_path / "bad.yaml").write_text("model:\n  image_size: 128\n")
    with pytest.raises(ValueError, match="missing"):
        load_sam2_settings(tmp_path / "bad.yaml")
    torch.save({"weights": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a SAM2 checkpoint"):
        load_sam2_checkpoint(tmp_path / "bad.pt")


def test_tiny_image_features_have_the_expected_pyramid():
    model = build_sam2(tiny_sam2_settings())
    with torch.no_grad():
        fpn = model.forward_image(torch.randn(2, 3, 128, 128))["backbone_fpn"]
    assert [tuple(f.shape) for f in fpn] == [(2, 4, 32, 32), (2, 8, 16, 16), (2, 32, 8, 8)]
