"""Integrity checks of model directories and training checkpoints: truncated, missing and garbage files are named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sa2va_ray.checkpoint.integrity import (
    IntegrityError,
    check_json,
    check_model_dir,
    check_safetensors,
    check_torch_zip,
    find_damage,
)


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def make_checkpoint(d: Path, zero_stage: int = 2, world: int = 2, step: int = 1) -> Path:
    """A checkpoint directory in the training layout, with small real files."""
    (d / "deepspeed").mkdir(parents=True)
    (d / "train_state.json").write_text(json.dumps({"step": step, "zero_stage": zero_stage, "world_size": world}))
    (d / "config.yaml").write_text("output_dir: x\n")
    save_file({"w": torch.arange(64, dtype=torch.float32), "b": torch.ones(3, 5)}, str(d / "trainable.safetensors"))
    if zero_stage == 3:
        names = [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(world)]
    else:
        names = ["mp_rank_00_model_states.pt"]
    names += [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(world)] if zero_stage else []
    for n in names:
        torch.save({"t": torch.randn(256)}, d / "deepspeed" / n)
    return d


def make_model_dir(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"model_type": "sa2va"}))
    (d / "tokenizer_config.json").write_text("{}")
    save_file({"a": torch.zeros(10, 10, dtype=torch.bfloat16), "c": torch.ones(7, dtype=torch.int64)},
              str(d / "model.safetensors"))
    return d


def test_intact_files_pass(tmp_path):
    assert find_damage(make_model_dir(tmp_path / "m")) is None
    for stage in (0, 2, 3):
        assert find_damage(make_checkpoint(tmp_path / f"c{stage}", zero_stage=stage)) is None


@pytest.mark.parametrize("keep", [0.0, 0.001, 0.5, 0.999])
def test_truncated_safetensors_is_named(tmp_path, keep):
    d = make_model_dir(tmp_path / "m")
    _truncate(d / "model.safetensors", keep)
    with pytest.raises(IntegrityError, match="model.safetensors: (truncated|unreadable)"):
        check_safetensors(d / "model.safetensors")
    assert "model.safetensors" in find_damage(d)


def test_safetensors_with_trailing_bytes_or_wrong_sizes(tmp_path):
    d = make_model_dir(tmp_path / "m")
    with (d / "model.safetensors").open("ab") as f:
        f.write(b"\0" * 16)
    with pytest.raises(IntegrityError, match="16 bytes after the last tensor"):
        check_safetensors(d / "model.safetensors")
    bogus = tmp_path / "bogus.safetensors"
    header = json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    bogus.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(IntegrityError, match="holds 8 bytes, its dtype and shape need 16"):
        check_safetensors(bogus)


def test_garbage_config_json_is_named(tmp_path):
    d = make_model_dir(tmp_path / "m")
    (d / "config.json").write_text("{model_type: garbage")
    with pytest.raises(IntegrityError, match=r"config.json: not valid JSON"):
        check_model_dir(d)
    (d / "config.json").write_text("[1, 2]")
    with pytest.raises(IntegrityError, match="expected a JSON object"):
        check_json(d / "config.json")
    (d / "config.json").write_text("{}")
    (d / "tokenizer_config.json").write_bytes(b"\xff\xfe garbage")
    assert "tokenizer_config.json" in find_damage(d)


def test_sharded_model_index_names_missing_shard(tmp_path):
    d = make_model_dir(tmp_path / "m")
    index = {"weight_map": {"a": "model-00002-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(IntegrityError, match="model-00002-of-00002.safetensors: missing"):
        check_model_dir(d)


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_torch_file_is_named(tmp_path, keep):
    f = tmp_path / "x.pt"
    torch.save({"t": torch.randn(1000)}, f)
    check_torch_zip(f)
    _truncate(f, keep)
    with pytest.raises(IntegrityError, match="x.pt: truncated"):
        check_torch_zip(f)


def test_corrupted_torch_member_fails_its_crc(tmp_path):
    f = tmp_path / "x.pt"
    torch.save({"t": torch.zeros(4096)}, f)
    data = bytearray(f.read_bytes())
    i = data.find(b"\0" * 1024)
    data[i + 100] = 1  # one byte of tensor data, sizes unchanged
    f.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="CRC"):
        check_torch_zip(f)


@pytest.mark.parametrize("stage,victim", [
    (2, "deepspeed/zero_pp_rank_1_mp_rank_00_optim_states.pt"),
    (2, "deepspeed/mp_rank_00_model_states.pt"),
    (3, "deepspeed/zero_pp_rank_1_mp_rank_00_model_states.pt"),
    (0, "trainable.safetensors"),
    (2, "train_state.json"),
    (2, "config.yaml"),
])
def test_missing_or_truncated_checkpoint_file_is_named(tmp_path, stage, victim):
    for how in ("missing", "truncated"):
        d = make_checkpoint(tmp_path / f"{how}", zero_stage=stage)
        if how == "missing":
            (d / victim).unlink()
        else:
            _truncate(d / victim, 0.6)
        reason = find_damage(d, kind="checkpoint")  # a resume candidate: every file the loop writes
        if how == "truncated" and victim == "config.yaml":
            continue  # YAML text has no size to check; the run's config is re-validated when loaded
        assert reason is not None and Path(victim).name in reason, (how, reason)


def test_checkpoint_given_as_model_path_may_hold_only_one_copy_of_the_trained_tensors(tmp_path):
    shards_only = make_checkpoint(tmp_path / "shards_only")
    (shards_only / "trainable.safetensors").unlink()  # export --source deepspeed rebuilds it from the shards
    assert find_damage(shards_only) is None
    assert "trainable.safetensors: missing" in find_damage(shards_only, kind="checkpoint")  # not a resume candidate
    slim = make_checkpoint(tmp_path / "slim")
    shutil.rmtree(slim / "deepspeed")  # optimizer states deleted to save space
    assert find_damage(slim) is None and "deepspeed" in find_damage(slim, kind="checkpoint")
    (shards_only / "deepspeed" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt: missing" in find_damage(shards_only)
