"""The pickle check: every crafted kind runs code under the full unpickler and is refused here, without running."""

from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path

import pytest
import torch

from sa2va_ray.checkpoint.safety import (
    ALLOWED,
    CheckpointReadError,
    UnsafeCheckpointError,
    check_checkpoint_files,
    check_pickle_file,
    pickle_globals,
)

_spec = importlib.util.spec_from_file_location("malicious", Path(__file__).with_name("malicious.py"))
malicious = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(malicious)

WHY = {  # what the one-line refusal names for each kind
    "zip_os_system": "pickle references posix.system",
    "zip_eval": "pickle references builtins.eval",
    "zip_nested": "pickle references posix.system",
    "zip_protocol4": "pickle references posix.system",
    "legacy_torch": "pickle references posix.system",
    "plain_pickle": "pickle references posix.system",
    "plain_pickle5": "pickle references posix.system",
    "computed_name": "pickle imports a global by a computed name",
}


@pytest.mark.parametrize("kind", sorted(malicious.CODE_RUNNING))
def test_crafted_file_runs_code_when_loaded_unsafely(kind, tmp_path):
    """The test files are real attacks: the full unpickler (what DeepSpeed uses) runs their payload."""
    path, marker = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt", tmp_path / "ran"
    malicious.CODE_RUNNING[kind](path, marker)
    try:
        torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - the payload's return value may break what follows; it ran anyway
        pass
    assert marker.exists(), f"{kind}: the payload did not run under weights_only=False"


@pytest.mark.parametrize("kind", sorted(malicious.CODE_RUNNING))
def test_crafted_file_is_refused_in_one_line_without_running(kind, tmp_path):
    path, marker = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt", tmp_path / "ran"
    malicious.CODE_RUNNING[kind](path, marker)
    with pytest.raises(UnsafeCheckpointError) as e:
        check_pickle_file(path)
    assert str(e.value) == f"{path}: {WHY[kind]}; refusing to load ({ALLOWED})"
    assert not marker.exists()


def test_state_set_on_an_allowed_class_is_refused_by_the_dry_run(tmp_path):
    path = tmp_path / "mp_rank_00_model_states.pt"
    malicious.zip_class_state(path, tmp_path / "unused")
    assert pickle_globals(_data_pkl(path)) == {"deepspeed.runtime.fp16.loss_scaler.LossScaler"}  # scan passes
    with pytest.raises(UnsafeCheckpointError, match="restricted unpickler refused it .*got <class 'type'>"):
        check_pickle_file(path)


def test_extension_registry_opcode_is_refused(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(b"\x80\x02\x82\xf0)R.")  # EXT1 240: whatever copyreg registered under that code
    with pytest.raises(UnsafeCheckpointError, match="extension registry"):
        check_pickle_file(path)


def test_plain_tensors_and_deepspeed_classes_pass(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    path = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    state = malicious.optimizer_like_state(0.05)
    state["optimizer_state_dict"].update(loss_scaler=LossScaler(1.0), zero_stage=ZeroStageEnum.gradients)
    torch.save(state, path)
    assert check_checkpoint_files(tmp_path) == [path]
    loaded = torch.load(path, map_location="cpu", weights_only=False)
    assert loaded["optimizer_state_dict"]["zero_stage"] == ZeroStageEnum.gradients


def test_directory_check_finds_the_bad_file_among_good_ones(tmp_path):
    good = tmp_path / "ckpt" / "deepspeed"
    good.mkdir(parents=True)
    torch.save({"module": {"w": torch.ones(3)}}, good / "mp_rank_00_model_states.pt")
    malicious.zip_nested(good / "zero_pp_rank_1_mp_rank_00_optim_states.pt", tmp_path / "ran")
    with pytest.raises(UnsafeCheckpointError, match="zero_pp_rank_1_mp_rank_00_optim_states.pt: pickle references"):
        check_checkpoint_files(tmp_path / "ckpt")
    assert not (tmp_path / "ran").exists()


def test_truncated_file_is_named_as_damaged_and_can_be_skipped(tmp_path):
    path = tmp_path / "checkpoint_000001" / "deepspeed" / "mp_rank_00_model_states.pt"
    path.parent.mkdir(parents=True)
    torch.save({"module": {"w": torch.ones(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + data[-200:])  # members cut, central directory kept
    with pytest.raises(CheckpointReadError, match=f"{path}: cannot be read"):
        check_pickle_file(path)
    assert check_checkpoint_files(tmp_path, "checkpoint_*/**/*.pt", skip_unreadable=True) == [path]


def test_changed_file_is_checked_again(tmp_path):
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"w": torch.ones(2)}, path)
    check_pickle_file(path)
    malicious.zip_os_system(path, tmp_path / "ran")
    os.utime(path, ns=(1, 1))  # even with an old timestamp the size differs: not served from the cache
    with pytest.raises(UnsafeCheckpointError):
        check_pickle_file(path)


def _data_pkl(path: Path) -> bytes:
    import zipfile

    with zipfile.ZipFile(path) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))


def test_scan_reads_every_protocol():
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        found = pickle_globals(pickle.dumps([1, "a", malicious.Reduce(os.getcwd)], protocol=protocol))
        assert found == {f"{os.getcwd.__module__}.getcwd"}, protocol


def test_legacy_format_is_refused_even_without_a_bad_global(tmp_path):
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.ones(2)}}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match="not in torch's zip format"):
        check_pickle_file(path)


@pytest.mark.parametrize("keep", [0, 3, 0.5])
def test_file_cut_short_is_damaged_not_unsafe(keep, tmp_path):
    """A shard a crash cut short is left to the resume repair (named), never mistaken for an attack."""
    path = tmp_path / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    torch.save({"w": torch.ones(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(CheckpointReadError, match=f"{path}: cannot be read"):
        check_pickle_file(path)
