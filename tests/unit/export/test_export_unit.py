"""Export, verification, adapter, DeepSpeed-shard reading and forensics on tiny in-memory models (no Ray).

A "checkpoint" here is what the training loop writes (config.yaml + trainable.safetensors + train_state.json),
with trained tensors made by perturbing the initial ones; the DeepSpeed test writes real ZeRO shards in a
single-process gloo subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sa2va_ray.checkpoint.load import build_checkpoint_model, load_checkpoint_config
from sa2va_ray.checkpoint.safety import UnsafeCheckpointError
from sa2va_ray.checkpoint.trained import (
    CheckpointMismatchError,
    check_pickles,
    deepspeed_info,
    load_trained_into,
    read_trained,
)
from sa2va_ray.config import load_config, save_config
from sa2va_ray.export.diagnose import compare_paths, compare_with_base, describe, describe_run
from sa2va_ray.export.diagnose import main as diagnose_main
from sa2va_ray.export.exporter import export_checkpoint, verify_model_dir
from sa2va_ray.export.verify import ExportVerificationError, sketch_lora_merge, verify_export
from sa2va_ray.model.fingerprint import compute_fingerprint, read_fingerprint

REPO = Path(__file__).resolve().parents[3]
DEMO = REPO / "configs" / "demo.yaml"
TRAINED_GROUPS = {"llm_embeddings", "projector", "text_hidden_fcs", "sam2_decoder"}


@pytest.fixture(autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _base_and_lora(cfg):
    from sa2va_ray.checkpoint.load import build_base_model, prepare_for_training

    return prepare_for_training(build_base_model(cfg), cfg, verbose=False)


def make_checkpoint(d: Path, scale: float = 0.01, seed: int = 0, step: int = 4) -> Path:
    """config.yaml + trainable.safetensors (initial trainables + scale * noise) + train_state.json."""
    cfg = load_config(DEMO)
    d.mkdir(parents=True)
    save_config(cfg, d / "config.yaml")
    model = _base_and_lora(cfg)
    g = torch.Generator().manual_seed(seed)
    trained = {n: (p.detach() + scale * torch.randn(p.shape, generator=g)).contiguous()
               for n, p in model.named_parameters() if p.requires_grad}
    save_file(trained, str(d / "trainable.safetensors"))
    (d / "train_state.json").write_text(json.dumps({"step": step, "zero_stage": 2, "world_size": 2}))
    return d


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint_000004")


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory) -> Path:
    return export_checkpoint(ckpt, tmp_path_factory.mktemp("export") / "model", adapter=True)


def test_export_writes_verified_model_with_fingerprint(ckpt, exported):
    from sa2va_ray.model.checkpoint import read_safetensors_dir

    assert (exported / "config.json").exists() and (exported / "train_config.yaml").exists()
    assert not exported.with_name("model.unverified").exists()  # renamed only after verification
    fp = read_fingerprint(exported)
    assert fp["model"] == compute_fingerprint(read_safetensors_dir(exported))["model"]  # recomputable from files
    assert fp["source"]["trained"]["model"] == compute_fingerprint(load_file(str(ckpt / "trainable.safetensors")))[
        "model"]
    assert {"vision_tower", "llm_base", "projector", "text_hidden_fcs", "sam2_decoder", "sam2_encoder"} <= set(
        fp["groups"])
    assert "matches fingerprint.json" in describe(exported)


def test_merged_llm_weights_equal_base_plus_scaled_lora(ckpt, exported):
    """Independent of PEFT's merge: W_exported == W_base + alpha/r * B @ A from the checkpoint's factors."""
    from sa2va_ray.checkpoint.load import build_base_model
    from sa2va_ray.model.checkpoint import read_safetensors_dir

    cfg = load_checkpoint_config(ckpt)
    base = build_base_model(cfg).state_dict()
    trained, saved = load_file(str(ckpt / "trainable.safetensors")), read_safetensors_dir(exported)
    a_keys = [k for k in trained if k.endswith(".lora_A.default.weight")]
    assert len(a_keys) == 14  # 2 layers x 7 Linear
    for a_key in a_keys:
        prefix = a_key.removesuffix(".lora_A.default.weight")
        b = trained[prefix + ".lora_B.default.weight"]
        want = base[prefix + ".weight"] + (cfg.lora.alpha / cfg.lora.r) * b @ trained[a_key]
        torch.testing.assert_close(saved[prefix + ".weight"], want, rtol=1e-5, atol=1e-6)
        assert not torch.equal(saved[prefix + ".weight"], base[prefix + ".weight"])
    for k in trained:  # every other trained tensor landed exactly
        if "lora_" not in k:
            assert torch.equal(saved[k], trained[k]), k


def _overwrite(src: Path, dst: Path, replace: dict[str, torch.Tensor]) -> Path:
    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    state.update({k: v.clone().contiguous() for k, v in replace.items() if k in state})
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def _verify_args(ckpt):
    from sa2va_ray.model import merge_lora

    model, trained = build_checkpoint_model(ckpt)
    check = sketch_lora_merge(model, trained)
    return merge_lora(model), trained, check


def test_overwritten_export_fails_verification_naming_modules(ckpt, exported, tmp_path):
    """Seed 004: pretrained weights loaded over the trained ones after conversion."""
    from sa2va_ray.checkpoint.load import build_base_model

    base = build_base_model(load_checkpoint_config(ckpt)).state_dict()
    verify_model_dir(ckpt, exported)  # the real export passes

    bad = _overwrite(exported, tmp_path / "all", base)  # every tensor back to the base
    with pytest.raises(ExportVerificationError) as e:
        verify_model_dir(ckpt, bad)
    named = str(e.value).split("\n")[0]
    for group in [*TRAINED_GROUPS, "llm_lora(merged)"]:
        assert group in named, (group, named)
    assert "vision_tower" not in named and "sam2_encoder" not in named  # untouched modules are not blamed

    fcs = {k: v for k, v in base.items() if k.startswith("text_hidden_fcs.")}
    one = _overwrite(exported, tmp_path / "fcs", fcs)
    with pytest.raises(ExportVerificationError, match="text_hidden_fcs") as e:
        verify_model_dir(ckpt, one)
    assert "sam2_decoder" not in str(e.value) and "llm_lora(merged)" not in str(e.value)


def test_verification_needs_the_merge_check_for_lora(ckpt, exported):
    model, trained, _ = _verify_args(ckpt)
    with pytest.raises(ValueError, match="lora_check"):
        verify_export(model, exported, trained, None)


def test_load_trained_into_rejects_key_mismatch(ckpt):
    model = _base_and_lora(load_checkpoint_config(ckpt))
    trained = read_trained(ckpt)
    missing = dict(trained)
    del missing["text_hidden_fcs.0.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"not in the checkpoint: text_hidden_fcs\.0\.weight"):
        load_trained_into(model, missing)
    frozen = dict(trained, **{"mllm.model.vision_tower.embeddings.cls_token": torch.zeros(1)})
    with pytest.raises(CheckpointMismatchError, match="not trainable parameters.*vision_tower.embeddings.cls_token"):
        load_trained_into(model, frozen)
    shaped = dict(trained, **{"text_hidden_fcs.0.bias": torch.zeros(3)})
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches: text_hidden_fcs\.0\.bias"):
        load_trained_into(model, shaped)


def test_base_side_load_is_strict_too(tmp_path):
    """A run fine-tuned from a model directory: a key missing from that base is an error naming it."""
    from sa2va_ray.model import build_tiny_sa2va

    build_tiny_sa2va(seed=0).save_pretrained(tmp_path / "base")
    state = load_file(str(tmp_path / "base" / "model.safetensors"))
    del state["mllm.model.vision_tower.embeddings.cls_token"]
    save_file(state, str(tmp_path / "base" / "model.safetensors"), metadata={"format": "pt"})
    ck = tmp_path / "ck"
    shutil.copytree(make_checkpoint(tmp_path / "ck0"), ck)
    save_config(load_config(DEMO, [f"model.path={tmp_path / 'base'}"]), ck / "config.yaml")
    with pytest.raises(ValueError, match=r"missing from the checkpoint .*vision_tower\.embeddings\.cls_token"):
        build_checkpoint_model(ck)


def test_adapter_on_fresh_base_reproduces_merged_llm(ckpt, exported):
    """PEFT's own loader on a fresh base language model gives the exported (merged) LLM, tensor for tensor."""
    from peft import PeftModel

    from sa2va_ray.checkpoint.load import build_base_model
    from sa2va_ray.export.adapter import load_adapter
    from sa2va_ray.model import Sa2VAModel
    from sa2va_ray.model.checkpoint import read_safetensors_dir

    adapter = exported / "adapter"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 8 and cfg["lora_alpha"] == 16
    keys = load_file(str(adapter / "adapter_model.safetensors"))
    assert all(k.startswith("base_model.model.layers.") and ".default." not in k for k in keys)

    base = build_base_model(load_checkpoint_config(ckpt)).eval()
    llm = PeftModel.from_pretrained(base.mllm.model.language_model, str(adapter)).merge_and_unload()
    saved = read_safetensors_dir(exported)
    prefix = "mllm.model.language_model."
    non_lora = load_file(str(adapter / "non_lora_trainables.safetensors"))
    for k, v in llm.state_dict().items():
        if prefix + k not in non_lora:  # embeddings train in full: they are in non_lora_trainables, not the adapter
            torch.testing.assert_close(v, saved[prefix + k], rtol=1e-5, atol=1e-6)
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    reloaded = Sa2VAModel.from_pretrained(str(exported)).eval()
    full = load_adapter(build_base_model(load_checkpoint_config(ckpt)).eval(), adapter)
    for k, v in full.state_dict().items():
        torch.testing.assert_close(v, saved[k], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        want = reloaded.mllm.model.language_model(input_ids=ids).last_hidden_state  # (2, 9, H)
        got = full.mllm.model.language_model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    from sa2va_ray.export.verify import probe_batch

    images, texts = probe_batch()
    assert all((x == y).all() for x, y in zip(full.predict(images, texts), reloaded.predict(images, texts)))


def test_diagnose_checkpoint_against_its_export_is_identical(ckpt, exported, capsys):
    diffs, line = compare_paths(ckpt, exported)  # the checkpoint is merged for the comparison
    assert "VERDICT: identical" in line
    diagnose_main([str(exported), "--base", "own"])
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.startswith("VERDICT: differs from base in") and "identical to base in" in last
    assert "vision_tower" in last.split("identical to base in")[1]


def test_untrained_checkpoint_is_identical_to_base(tmp_path, capsys):
    """An lr=0 run: trained tensors equal the initial ones -> the export is its base, and diagnose says so."""
    from sa2va_ray.model import build_tiny_sa2va

    ck = make_checkpoint(tmp_path / "ck", scale=0.0)
    out = export_checkpoint(ck, tmp_path / "model")
    build_tiny_sa2va(seed=0).save_pretrained(tmp_path / "base")
    for argv in ([str(out), "--base", str(tmp_path / "base")], [str(ck), "--base", str(tmp_path / "base")],
                 [str(out), "--base", "own"]):
        diagnose_main(argv)
        assert "VERDICT: identical to base" in capsys.readouterr().out, argv
    _, line = compare_with_base(make_checkpoint(tmp_path / "ck2", scale=1e-3), tmp_path / "base")
    assert "differs from base" in line


def test_two_checkpoints_differ_and_run_flags_stalls(ckpt, tmp_path, capsys):
    other = make_checkpoint(tmp_path / "run" / "checkpoint_000008", seed=1, step=8)
    diffs, line = compare_paths(ckpt, other)
    assert "differ" in line and diffs["text_hidden_fcs"]["frac_changed"] == 1.0
    shutil.copytree(ckpt, tmp_path / "run" / "checkpoint_000004")
    stalled = shutil.copytree(other, tmp_path / "run" / "checkpoint_000012")
    state = json.loads((stalled / "train_state.json").read_text())
    (stalled / "train_state.json").write_text(json.dumps({**state, "step": 12}))
    report = describe_run(tmp_path / "run")
    lines = report.splitlines()
    assert "step 4 -> 8" in lines[2] and "NOTHING CHANGED" not in lines[2]
    assert "step 8 -> 12" in lines[3] and "NOTHING CHANGED" in lines[3]
    assert "steps 8-12" in lines[-1] and "identical" in lines[-1]


def test_fingerprint_tamper_is_reported(ckpt, exported, tmp_path):
    bad = _overwrite(exported, tmp_path / "m", {"text_hidden_fcs.0.bias": torch.zeros(64)})
    assert "DOES NOT MATCH fingerprint.json" in describe(bad)


def test_unsafe_pickle_is_refused(tmp_path):
    torch.save({"f": os.getcwd}, tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(UnsafeCheckpointError, match="getcwd"):
        check_pickles([tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"])


_WRITE_SHARDS = textwrap.dedent("""
    import os, sys
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[3], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    from pathlib import Path
    import numpy as np, torch, deepspeed
    from safetensors.torch import save_file
    from sa2va_ray.checkpoint.load import build_base_model, prepare_for_training
    from sa2va_ray.config import load_config, save_config
    from sa2va_ray.train.checkpoint import gather_trainable_state
    from sa2va_ray.train.deepspeed_config import build_deepspeed_config
    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    rng = np.random.default_rng(0)
    sample = {"image": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), "masks": [rng.random((64, 64)) > 0.7],
              "texts": ["vessel"]}
    for stage in [int(s) for s in sys.argv[2].split(",")]:
        cfg = load_config(sys.argv[4], [f"deepspeed.zero_stage={stage}", "train.max_steps=10", "train.warmup_steps=1",
                                        "train.lr=0.01", "train.micro_batch_size=1"])
        model = prepare_for_training(build_base_model(cfg), cfg, verbose=False)
        engine, *_ = deepspeed.initialize(model=model, config=build_deepspeed_config(cfg, 1),
                                          model_parameters=[p for p in model.parameters() if p.requires_grad])
        batch = model.processor.collate_train([sample])
        for _ in range(3):  # DeepSpeed's warm-up runs the first two steps at lr 0
            engine.backward(engine(**batch).loss)
            engine.step()
        d = Path(sys.argv[1]) / f"zero{stage}"
        engine.save_checkpoint(str(d), tag="deepspeed")
        save_file(gather_trainable_state(engine, stage == 3, True), str(d / "trainable.safetensors"))
        save_config(cfg, d / "config.yaml")
""")


@pytest.mark.slow
def test_deepspeed_shards_of_every_stage_rebuild_the_trained_tensors(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _WRITE_SHARDS, str(tmp_path), "0,3", str(port), str(DEMO)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    initial = {n: p.detach() for n, p in _base_and_lora(load_config(DEMO)).named_parameters() if p.requires_grad}
    for stage in (0, 3):
        d = tmp_path / f"zero{stage}"
        assert deepspeed_info(d)["stage"] == stage
        from_shards = read_trained(d, "deepspeed", set(initial))  # cross-checked against trainable.safetensors
        st = load_file(str(d / "trainable.safetensors"))
        assert set(from_shards) == set(st) == set(initial)
        assert all(torch.equal(from_shards[k], st[k]) for k in st)  # fp32: bit-exact
        assert any(not torch.equal(st[k], initial[k]) for k in st), "the optimizer did not move the weights"
    # shards alone (no trainable.safetensors) export and verify
    only = shutil.copytree(tmp_path / "zero3", tmp_path / "zero3_shards_only")
    (only / "trainable.safetensors").unlink()
    out = export_checkpoint(only, tmp_path / "model3", source="deepspeed")
    assert compare_paths(tmp_path / "zero3", out)[1].startswith("VERDICT: identical")
    # a tampered trainable.safetensors no longer agrees with the shards
    tampered = shutil.copytree(tmp_path / "zero0", tmp_path / "zero0_tampered")
    st = load_file(str(tampered / "trainable.safetensors"))
    st["text_hidden_fcs.2.bias"] = st["text_hidden_fcs.2.bias"] + 1e-3
    save_file(st, str(tampered / "trainable.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="disagree in text_hidden_fcs"):
        read_trained(tampered, "auto")
