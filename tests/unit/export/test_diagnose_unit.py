import torch
from safetensors.torch import save_file

from sa2va_ray.export.diagnose import main as diagnose_main
from sa2va_ray.export.diagnose import module_differences, verdict
from sa2va_ray.model.fingerprint import compute_fingerprint
from sa2va_ray.model.groups import module_group


def _state(seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "model.vision_tower.layer.weight": torch.randn(4, 4, generator=g),
        "model.language_model.layers.0.q_proj.weight": torch.randn(4, 4, generator=g),
        "text_hidden_fcs.0.weight": torch.randn(4, 4, generator=g),
        "grounding_encoder.sam_mask_decoder.w": torch.randn(3, generator=g),
    }


def test_groups():
    assert module_group("model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight") == "llm_lora"
    assert module_group("sam2.sam_mask_decoder.iou_head.weight") == "sam2_decoder"
    assert module_group("sam2.image_encoder.trunk.x") == "sam2_encoder"
    assert module_group("model.multi_modal_projector.linear_1.weight") == "projector"


def test_fingerprint_identical_and_differ():
    a, b = _state(0), _state(0)
    assert compute_fingerprint(a) == compute_fingerprint(b)
    b["text_hidden_fcs.0.weight"] = b["text_hidden_fcs.0.weight"] + 1e-3
    fa, fb = compute_fingerprint(a), compute_fingerprint(b)
    assert fa["model"] != fb["model"]
    changed = [g for g in fa["groups"] if fa["groups"][g] != fb["groups"][g]]
    assert changed == ["text_hidden_fcs"]


def test_verdicts():
    a = _state(0)
    assert "identical" in verdict(module_differences(a, _state(0)))
    b = dict(a, **{"text_hidden_fcs.0.weight": a["text_hidden_fcs.0.weight"] * 2})
    line = verdict(module_differences(a, b))
    assert "differ only in text_hidden_fcs" in line
    assert "differ in every" in verdict(module_differences(a, _state(1)))


def test_cli_on_model_dirs(tmp_path, capsys):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        (tmp_path / name).mkdir()
        save_file(_state(seed), str(tmp_path / name / "model.safetensors"))
    diagnose_main([str(tmp_path / "a"), str(tmp_path / "b")])
    assert "VERDICT: identical" in capsys.readouterr().out
    diagnose_main([str(tmp_path / "a"), str(tmp_path / "c")])
    assert "VERDICT: differ" in capsys.readouterr().out
    diagnose_main([str(tmp_path / "a"), "--base", str(tmp_path / "b")])
    assert "identical to base" in capsys.readouterr().out
