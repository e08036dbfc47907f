"""Verified export and forensics on real tiny training runs (session Ray cluster, 2 CPU workers, 4 steps each).

Four runs are shared by the tests (module-scoped): ZeRO-2 seed 0, ZeRO-2 train.seed=1, ZeRO-3 seed 0 (one checkpoint
each, at the last step, exported by the training driver) and a 2-step, 1-worker run at lr=0, checkpointed every step.
DeepSpeed's warm-up runs the first two steps at lr 0, so 4 steps are the fewest that train noticeably.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.integration.conftest import job_overrides

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs/demo.yaml")
sys.path.insert(0, str(REPO / "jobs"))
TRAINED = {"llm_embeddings", "projector", "text_hidden_fcs", "sam2_decoder"}
FROZEN = {"vision_tower", "sam2_encoder"}


def _run(synthetic_set: Path, out: Path, *extra: str) -> Path:
    import train  # jobs/train.py

    assert train.main(["--config", DEMO, *job_overrides(synthetic_set, out, "train.val_max_samples=2", *extra)]) == 0
    return out


def _export_job(*argv: str) -> int:
    import export  # jobs/export.py

    return export.main(["--config", DEMO, *argv])


def _last_checkpoint(out: Path) -> Path:
    ckpts = [p.parent for p in (out / "ray").rglob("train_state.json")]
    return max(ckpts, key=lambda p: json.loads((p / "train_state.json").read_text())["step"])


@pytest.fixture(scope="module", autouse=True)
def ordered_data():
    """Same rows to the same rank in the same order in every run: Ray Data's streaming split otherwise hands blocks
    to ranks as map tasks finish, and ZeRO-2 and ZeRO-3 would see different batches (Adam's moments remember the
    lr-0 warm-up steps' gradients too). Ray Train copies the driver's DataContext when the trainer is built."""
    from ray.data import DataContext

    options = DataContext.get_current().execution_options
    previous, options.preserve_order = options.preserve_order, True
    yield
    options.preserve_order = previous


ONE_CHECKPOINT = ("train.val_every=4", "train.export_best=false")  # the driver exports the step-4 checkpoint


@pytest.fixture(scope="module")
def run_a(ray_cluster, synthetic_set, tmp_path_factory) -> Path:
    return _run(synthetic_set, tmp_path_factory.mktemp("a"), "deepspeed.zero_stage=2", *ONE_CHECKPOINT)


@pytest.fixture(scope="module")
def run_b(ray_cluster, synthetic_set, tmp_path_factory) -> Path:
    return _run(synthetic_set, tmp_path_factory.mktemp("b"), "deepspeed.zero_stage=2", "train.seed=1", *ONE_CHECKPOINT)


@pytest.fixture(scope="module")
def run_zero3(ray_cluster, synthetic_set, tmp_path_factory) -> Path:
    return _run(synthetic_set, tmp_path_factory.mktemp("z3"), "deepspeed.zero_stage=3", *ONE_CHECKPOINT)


@pytest.fixture(scope="module")
def run_lr0(ray_cluster, synthetic_set, tmp_path_factory) -> Path:
    return _run(synthetic_set, tmp_path_factory.mktemp("lr0"), "train.lr=0.0", "train.max_steps=2",
                "train.val_every=1", "train.health.fail_on_unchanged=false", "scaling.max_failures=0",
                "scaling.num_workers=1")


@pytest.fixture(scope="module")
def export_a(run_a) -> Path:
    """Run A's model, written and verified by the training driver from its step-4 checkpoint."""
    return run_a / "model"


def test_different_seeds_give_different_models_and_diagnose_says_so(run_a, run_b, export_a, capsys):
    from sa2va_ray.export.diagnose import main as diagnose
    from sa2va_ray.model.fingerprint import read_fingerprint

    model_b = run_b / "model"  # exported by the training driver
    fa, fb = read_fingerprint(export_a), read_fingerprint(model_b)
    assert fa["model"] != fb["model"]
    assert {g for g in fa["groups"] if fa["groups"][g] != fb["groups"][g]} >= TRAINED
    assert all(fa["groups"][g] == fb["groups"][g] for g in FROZEN)
    assert diagnose([str(export_a), str(model_b)]) == 0
    out = capsys.readouterr().out
    verdict = out.strip().splitlines()[-1]
    assert verdict.startswith("VERDICT: differ") and "identical" not in verdict
    assert "identical modules:" in out and all(g in out.split("identical modules:")[1] for g in FROZEN)
    diagnose([str(export_a), str(export_a)])
    assert out_last(capsys) == "VERDICT: identical — every tensor is bit-for-bit the same"
    diagnose([str(_last_checkpoint(run_a)), str(export_a)])  # checkpoint (merged) vs its own export
    assert out_last(capsys).startswith("VERDICT: identical")


def out_last(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_overwritten_export_fails_verification(run_a, export_a, tmp_path):
    from safetensors.torch import load_file, save_file

    from sa2va_ray.checkpoint.load import load_base_model, load_checkpoint_config
    from sa2va_ray.export.exporter import ExportVerificationError, verify_model_dir

    ckpt = _last_checkpoint(run_a)
    verify_model_dir(ckpt, export_a)
    bad = shutil.copytree(export_a, tmp_path / "model")
    base = load_base_model(load_checkpoint_config(ckpt)).state_dict()
    trained = load_file(str(ckpt / "trainable.safetensors"))
    state = load_file(str(bad / "model.safetensors"))
    for k in trained:  # what seed 004's conversion did: pretrained tensors over the trained ones
        name = k.replace(".lora_A.default", "").replace(".lora_B.default", "")
        if name in state:
            state[name] = base[name].clone()
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ExportVerificationError) as e:
        verify_model_dir(ckpt, bad)
    head = str(e.value).splitlines()[0]
    assert all(g in head for g in [*TRAINED, "llm_lora(merged)"]), head
    assert not any(g in head for g in FROZEN), head


def test_lr0_run_is_identical_to_its_base(run_lr0, tmp_path, capsys):
    from sa2va_ray.export.diagnose import describe_run
    from sa2va_ray.export.diagnose import main as diagnose
    from sa2va_ray.model import build_tiny_sa2va

    build_tiny_sa2va(seed=0).save_pretrained(tmp_path / "base")
    diagnose([str(run_lr0 / "model"), "--base", str(tmp_path / "base")])
    assert out_last(capsys).startswith("VERDICT: identical to base")
    diagnose([str(run_lr0 / "model"), "--base", "own"])
    assert out_last(capsys).startswith("VERDICT: identical to base")
    report = describe_run(run_lr0 / "ray")
    assert "NOTHING CHANGED" in report and report.splitlines()[-1].startswith("VERDICT: weights identical across")


def test_zero3_two_workers_exports_on_one_process_and_matches_zero2(run_a, run_zero3, export_a, tmp_path):
    """ZeRO-3 shards of 2 ranks -> jobs/export.py --source deepspeed on this process; same seeds and data as the
    ZeRO-2 run, so the models agree up to reduction-order numerics (measured: max |diff| 3e-5, 100% of pixels)."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from sa2va_ray.checkpoint.load import load_base_model, load_checkpoint_config
    from sa2va_ray.checkpoint.trained import deepspeed_info, read_deepspeed_trained
    from sa2va_ray.export.diagnose import load_state, module_differences
    from sa2va_ray.export.verify import probe_batch
    from sa2va_ray.model import Sa2VAModel

    losses = [[float(r["train/loss"]) for r in csv.DictReader((run / "train_log.csv").open())]
              for run in (run_a, run_zero3)]
    assert np.allclose(*losses, rtol=1e-5), f"the runs did not see the same batches: {losses}"

    ckpt2 = _last_checkpoint(run_a)  # ZeRO-2, 2 ranks: its shards rebuild trainable.safetensors bit for bit
    assert (deepspeed_info(ckpt2)["stage"], deepspeed_info(ckpt2)["world_size"]) == (2, 2)
    from_shards, saved = read_deepspeed_trained(ckpt2), load_file(str(ckpt2 / "trainable.safetensors"))
    assert set(from_shards) == set(saved) and all(torch.equal(from_shards[k], saved[k]) for k in saved)

    shards_only = shutil.copytree(_last_checkpoint(run_zero3), tmp_path / "z3_shards")
    (shards_only / "trainable.safetensors").unlink()  # nothing but DeepSpeed's partitions and the config
    info = deepspeed_info(shards_only)
    assert (info["stage"], info["world_size"]) == (3, 2)
    out3 = tmp_path / "model_z3"
    assert _export_job(f"model.path={shards_only}", f"export.out={out3}", "export.adapter=true",
                       "--source", "deepspeed") == 0

    s3, s2 = load_state(out3), load_state(export_a)
    assert set(s3) == set(s2)
    diffs = module_differences(s2, s3)
    max_abs = {k: (s3[k].double() - s2[k].double()).abs().max().item() for k in s2}
    worst = max(max_abs, key=max_abs.get)
    print(f"\nZeRO-3 vs ZeRO-2: max |diff| {max_abs[worst]:.2e} ({worst}); bit-identical "
          f"{sum(v == 0 for v in max_abs.values())}/{len(s2)} tensors; relative L2 per module: "
          + ", ".join(f"{g} {d['rel_l2']:.1e}" for g, d in diffs.items()))
    assert max_abs[worst] < 3e-4, worst  # one optimizer step at lr 2e-3 would move weights ~1e-3
    assert all(d["rel_l2"] < 1e-4 for d in diffs.values()), diffs
    images, texts = probe_batch()
    reloaded3 = Sa2VAModel.from_pretrained(out3)
    with torch.no_grad():
        p3, p2 = reloaded3.predict(images, texts), Sa2VAModel.from_pretrained(export_a).predict(images, texts)
    agree = float(np.mean([np.mean(a == b) for a, b in zip(p3, p2)]))
    print(f"ZeRO-3 vs ZeRO-2 probe predictions: {agree:.4%} of pixels agree")
    assert agree > 0.99

    # the PEFT adapter written beside it rebuilds the merged language model on a fresh base
    base = load_base_model(load_checkpoint_config(shards_only))
    llm = PeftModel.from_pretrained(base.mllm.model.language_model, str(out3 / "adapter")).merge_and_unload()
    merged = reloaded3.mllm.model.language_model.state_dict()
    for k, v in llm.state_dict().items():
        if "embed_tokens" not in k:  # trained in full: in non_lora_trainables.safetensors, not in the adapter
            torch.testing.assert_close(v, merged[k], rtol=1e-5, atol=1e-6)


def test_official_format_from_a_training_checkpoint_round_trips(run_a, export_a, tmp_path):
    """jobs/export.py export.format=official: the merged checkpoint in the official layout, equal tensor for tensor
    to the Hugging Face export of the same checkpoint once read back, and the same masks."""
    from sa2va_ray.model import Sa2VAModel, load_from_official_sa2va

    ckpt = _last_checkpoint(run_a)
    out = tmp_path / "official"
    assert _export_job(f"model.path={ckpt}", "export.format=official", f"export.out={out}") == 0
    raw = json.loads((out / "config.json").read_text())
    assert raw["architectures"] == ["Sa2VAChatModel"] and "vision_config" in raw and "llm_config" in raw
    official, hf = load_from_official_sa2va(out), Sa2VAModel.from_pretrained(export_a)
    a, b = official.state_dict(), hf.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    image = (np.random.default_rng(0).random((40, 60)) * 255).astype(np.uint8)
    assert np.array_equal(official.predict([image], ["vessel"])[0], hf.predict([image], ["vessel"])[0])
    # a wrong remote-code directory fails before any work, in one line
    assert _export_job(f"model.path={ckpt}", "export.format=official", f"export.out={tmp_path / 'x'}",
                       f"export.official_code_from={export_a}") == 2
    assert not (tmp_path / "x").exists()
