"""save_pretrained / from_pretrained: HF layout, exact round trip in a fresh process, AutoModel, strict keys."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sa2va_ray.model import LoraSettings, Sa2VAModel, apply_lora, build_tiny_sa2va, merge_lora

IMAGE_SEED = 3


def probe_images() -> list[np.ndarray]:
    rng = np.random.default_rng(IMAGE_SEED)
    return [(rng.random((41, 67)) * 255).astype(np.uint8), (rng.random((90, 33, 3)) * 255).astype(np.uint8)]


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    """A tiny model trained a few LoRA steps (weights differ from any seed), merged and saved."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    model = apply_lora(build_tiny_sa2va(seed=0), LoraSettings(r=4, alpha=8))
    samples = [{"image": (rng.random((64, 64)) * 255).astype(np.uint8), "masks": [rng.random((64, 64)) > 0.6],
                "texts": ["vessel"]} for _ in range(2)]
    batch = model.processor.collate_train(samples)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    merge_lora(model)
    directory = tmp_path_factory.mktemp("saved")
    model.save_pretrained(directory)
    probs = [r.prob for r in model.predict(probe_images(), ["vessel", "blood vessel"], return_probs=True)]
    return directory, model, probs


def test_layout_and_config_hold_every_dimension(trained_dir):
    directory, model, _ = trained_dir
    names = {p.name for p in directory.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= names
    cfg = json.loads((directory / "config.json").read_text())
    assert cfg["model_type"] == "sa2va_ray" and cfg["architectures"] == ["Sa2VAModel"]
    assert cfg["internvl_config"]["vision_config"]["hidden_size"] == 32
    assert cfg["internvl_config"]["text_config"]["hidden_size"] == 64
    assert cfg["sam2"]["embed_dim"] == 16 and cfg["sam2"]["image_size"] == 128
    assert cfg["seg_token_id"] == model.config.seg_token_id and cfg["mask_weight"] == 2.0
    saved = load_file(directory / "model.safetensors")
    assert set(saved) == set(model.state_dict())


def test_round_trip_in_a_fresh_process_is_exact(trained_dir, tmp_path):
    directory, _, probs = trained_dir
    script = textwrap.dedent(f"""
        import sys
        import numpy as np, torch, transformers
        torch.set_num_threads(1)
        import sa2va_ray.model as M
        assert not [m for m in sys.modules if m.split(".")[0] in ("ray", "deepspeed")], "model imports ray/deepspeed"
        rng = np.random.default_rng({IMAGE_SEED})
        images = [(rng.random((41, 67)) * 255).astype(np.uint8), (rng.random((90, 33, 3)) * 255).astype(np.uint8)]
        for name, model in (("direct", M.Sa2VAModel.from_pretrained(r"{directory}")),
                            ("auto", transformers.AutoModel.from_pretrained(r"{directory}"))):
            assert type(model).__name__ == "Sa2VAModel", type(model)
            res = model.predict(images, ["vessel", "blood vessel"], return_probs=True)
            np.savez(r"{tmp_path}/" + name + ".npz", *[r.prob for r in res])
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    for name in ("direct", "auto"):
        loaded = np.load(tmp_path / f"{name}.npz")
        for i, expected in enumerate(probs):
            assert np.array_equal(loaded[f"arr_{i}"], expected), name


def test_sharded_save_loads_identically(trained_dir, tmp_path):
    _, model, probs = trained_dir
    model.save_pretrained(tmp_path, max_shard_size="1MB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    again = Sa2VAModel.from_pretrained(tmp_path)
    res = again.predict(probe_images(), ["vessel", "blood vessel"], return_probs=True)
    assert all(np.array_equal(r.prob, p) for r, p in zip(res, probs))
    half = Sa2VAModel.from_pretrained(tmp_path, torch_dtype="bfloat16")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    res = half.predict(probe_images(), ["vessel", "blood vessel"], return_probs=True)
    assert all(np.abs(r.prob - p).mean() < 0.05 for r, p in zip(res, probs))


def copy_with(directory, target, drop: str | None = None, add: str | None = None):
    import shutil

    shutil.copytree(directory, target)
    state = load_file(target / "model.safetensors")
    if drop:
        del state[drop]
    if add:
        state[add] = torch.zeros(3)
    save_file(state, str(target / "model.safetensors"))


def test_missing_and_unexpected_keys_are_errors(trained_dir, tmp_path):
    directory, _, _ = trained_dir
    key = "sam2.sam_mask_decoder.iou_token.weight"
    copy_with(directory, tmp_path / "missing", drop=key)
    with pytest.raises(ValueError, match=r"missing from the checkpoint .*1: sam2\.sam_mask_decoder\.iou_token\.weight"):
        Sa2VAModel.from_pretrained(tmp_path / "missing")
    copy_with(directory, tmp_path / "extra", add="text_hidden_fcs.9.weight")
    with pytest.raises(ValueError, match=r"no place in the model 1: text_hidden_fcs\.9\.weight"):
        Sa2VAModel.from_pretrained(tmp_path / "extra")
    with pytest.raises(FileNotFoundError):
        Sa2VAModel.from_pretrained(tmp_path / "nowhere")
