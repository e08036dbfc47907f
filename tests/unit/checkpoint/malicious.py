"""Crafted checkpoint files that run code when unpickled (payload: ``touch <marker>``, harmless), one per kind.

Used by the safety tests here and, through its file path, by the DeepSpeed subprocess that tries a real resume.
Every writer takes the output path and the marker file the payload would create.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch


class Reduce:
    """An object whose pickle calls ``fn(*args)`` on load (the classic ``__reduce__`` attack)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _touch(marker: Path) -> str:
    return f"touch {marker}"


def optimizer_like_state(payload: object) -> dict:
    """A legit-looking ZeRO optimizer shard with ``payload`` nested deep inside its param groups."""
    return {
        "optimizer_state_dict": {
            "zero_stage": 2, "loss_scaler": None, "partition_count": [1],
            "base_optimizer_state": {"state": {0: {"exp_avg": torch.zeros(4), "exp_avg_sq": torch.zeros(4)}},
                                     "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0],
                                                       "weight_decay": payload}]},
            "single_partition_of_fp32_groups": [torch.zeros(4)],
        },
        "ds_config": {"zero_optimization": {"stage": 2}}, "ds_version": "0.19.8",
    }


def zip_os_system(path: Path, marker: Path) -> None:
    """torch zip file: ``os.system`` through ``__reduce__`` at the top level (protocol 2, GLOBAL)."""
    torch.save({"module": {"w": torch.ones(2)}, "x": Reduce(os.system, _touch(marker))}, path)


def zip_eval(path: Path, marker: Path) -> None:
    """torch zip file: ``builtins.eval`` of an expression."""
    torch.save(Reduce(eval, f"__import__('os').system({_touch(marker)!r})"), path)


def zip_nested(path: Path, marker: Path) -> None:
    """torch zip file: one global hidden in an otherwise legit optimizer state."""
    torch.save(optimizer_like_state(Reduce(os.system, _touch(marker))), path)


def zip_protocol4(path: Path, marker: Path) -> None:
    """torch zip file written with pickle protocol 4: the global comes through STACK_GLOBAL."""
    torch.save(optimizer_like_state(Reduce(os.system, _touch(marker))), path, pickle_protocol=4)


def legacy_torch(path: Path, marker: Path) -> None:
    """torch's legacy (non-zip) format: several pickles in a row."""
    torch.save(optimizer_like_state(Reduce(os.system, _touch(marker))), path, _use_new_zipfile_serialization=False)


def plain_pickle(path: Path, marker: Path) -> None:
    """A plain pickle (protocol 2) named ``*.pt``."""
    path.write_bytes(pickle.dumps(Reduce(os.system, _touch(marker)), protocol=2))


def plain_pickle5(path: Path, marker: Path) -> None:
    """A plain pickle (protocol 5, framed, memoised STACK_GLOBAL)."""
    path.write_bytes(pickle.dumps(Reduce(os.system, _touch(marker)), protocol=5))


def computed_name(path: Path, marker: Path) -> None:
    """A plain pickle whose STACK_GLOBAL takes its names from below a popped value (a naive scan misreads it)."""
    cmd = _touch(marker).encode()
    path.write_bytes(b"\x80\x04\x8c\x05posix\x8c\x06system)0\x93\x8c" + bytes([len(cmd)]) + cmd + b"\x85R.")


def zip_class_state(path: Path, marker: Path) -> None:
    """torch zip file with only allowed globals that sets an attribute on DeepSpeed's ``LossScaler`` class
    (no code runs, but the full unpickler mutates a class: only torch's restricted unpickler refuses it)."""
    torch.save({"w": torch.ones(2)}, path)
    body = (b"\x80\x02cdeepspeed.runtime.fp16.loss_scaler\nLossScaler\nN}X\x09\x00\x00\x00cur_scale"
            b"G@\x14\x00\x00\x00\x00\x00\x00s\x86b.")
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(path, "w") as z:
        for n, data in members.items():
            z.writestr(n, body if n.endswith("data.pkl") else data)


CODE_RUNNING: dict[str, Callable[[Path, Path], None]] = {
    f.__name__: f for f in (zip_os_system, zip_eval, zip_nested, zip_protocol4, legacy_torch, plain_pickle,
                            plain_pickle5, computed_name)
}
"""Writers whose file runs ``touch <marker>`` when ``torch.load(weights_only=False)`` reads it."""
