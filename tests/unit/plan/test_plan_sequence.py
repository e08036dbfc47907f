"""The sequence-inference memory plan: constants as the code uses them, bounded in the run's length."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from sa2va_ray.config import load_config
from sa2va_ray.plan import sequence as plan_seq

ROOT = Path(__file__).resolve().parents[3]


def test_constants_are_what_the_model_uses():
    from sa2va_ray.model.sam2_builder import build_sam2, load_sam2_settings, tiny_sam2_settings
    from sa2va_ray.model.sequence import SequencePredictMixin

    settings = load_sam2_settings("sam2.1_hiera_l")
    assert settings.model_flags["num_maskmem"] == plan_seq.NUM_MASKMEM and settings.mem_dim == plan_seq.MEM_DIM
    tiny = build_sam2(tiny_sam2_settings())
    assert tiny.max_obj_ptrs_in_encoder == plan_seq.MAX_OBJ_PTRS  # SAM2Base's default, the same for every size
    default_chunk = inspect.signature(SequencePredictMixin._propagate).parameters["chunk"].default
    assert default_chunk == plan_seq.FEATURE_CHUNK


def test_the_8b_model_fits_a_40_frame_run_and_the_peak_does_not_grow_with_the_run():
    cfg = load_config(ROOT / "configs" / "vessel_internvl3_8b_lora.yaml", [])
    whole = load_config(ROOT / "configs" / "vessel_internvl3_8b_lora.yaml", ["eval.sequence_chunk=0"])
    short, long = (plan_seq.plan_sequence_memory(whole, f, 512, 512) for f in (40, 400))
    assert short.fits and short.weights_gib == pytest.approx(8_182_606_130 * 2 / 1024**3, rel=0.01)
    assert long.total_gib == short.total_gib and long.masks_cpu_gib == pytest.approx(10 * short.masks_cpu_gib)
    chunked = plan_seq.plan_sequence_memory(cfg, 400, 512, 512)  # items of eval.sequence_chunk=64 frames
    assert (chunked.frames, chunked.run_frames) == (64, 400) and chunked.total_gib == short.total_gib
    assert chunked.masks_cpu_gib == pytest.approx(64 / 40 * short.masks_cpu_gib)
    assert "a run of 400 frames in items of 64" in plan_seq.format_sequence_plan(chunked)
    generating = plan_seq.plan_sequence_memory(cfg, 40, 512, 512, generate=True)
    assert generating.parts_gib["LLM KV cache (generate)"] > 0
    assert not plan_seq.plan_sequence_memory(cfg, 40, 512, 512, gpu_mem_gb=16).fits
    text = plan_seq.format_sequence_plan(short)
    assert "fits" in text and "40 frames at 512x512" in text


def test_offload_takes_the_bank_off_the_gpu_and_both_settings_are_shown():
    cfg = load_config(ROOT / "configs" / "vessel_internvl3_8b_lora.yaml", [])
    kept = plan_seq.plan_sequence_memory(cfg, 40, 512, 512)
    offloaded = plan_seq.plan_sequence_memory(
        load_config(ROOT / "configs" / "vessel_internvl3_8b_lora.yaml", ["eval.sequence_offload=true"]), 40, 512, 512)
    assert not kept.offload and offloaded.offload
    assert kept.offload_total_gib == offloaded.offload_total_gib < kept.total_gib  # one plan holds both settings
    assert kept.offload_cpu_gib > 0 and offloaded.fits
    read = kept.offload_parts_gib["memories one step reads + attention"]
    assert read < kept.parts_gib["SAM2 memory bank + attention"]
    text = plan_seq.format_sequence_plan(offloaded)
    assert "eval.sequence_offload=false" in text and "eval.sequence_offload=true)  <- configured" in text
    assert "bank + features ahead in CPU memory" in text
    tight = plan_seq.plan_sequence_memory(cfg, 40, 512, 512, gpu_mem_gb=kept.offload_total_gib + 0.05)
    assert not tight.fits  # judged by the configured setting (kept on the GPU)
