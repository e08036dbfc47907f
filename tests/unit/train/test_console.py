"""The known third-party warnings are dropped at their source; nothing else is."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

from sa2va_ray.train import console


def test_known_warnings_and_log_lines_are_dropped_others_kept(caplog):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        console.quiet_known_warnings()
        warnings.warn("`torch.distributed.all_gather_into_tensor` is deprecated. Please use ...", FutureWarning)
        warnings.warn("something else is deprecated", FutureWarning)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]
    ds = logging.getLogger("DeepSpeed")
    with caplog.at_level(logging.WARNING, logger="DeepSpeed"):
        ds.warning("Attempting to get learning rate from scheduler before it has started")
        ds.warning("a real DeepSpeed problem")
    assert [r.getMessage() for r in caplog.records] == ["a real DeepSpeed problem"]


def test_pythonwarnings_for_ray_processes_keep_the_users_entries_and_match_only_the_known_message(monkeypatch):
    monkeypatch.setenv("PYTHONWARNINGS", "error::DeprecationWarning")
    value = console.ray_worker_pythonwarnings()
    assert value.startswith("error::DeprecationWarning,") and "exclude_resources" in value

    def run(message: str) -> subprocess.CompletedProcess:
        code = f"import warnings; warnings.warn({message!r}, DeprecationWarning); print('ok')"
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={"PYTHONWARNINGS": value})

    known = run("`ExecutionOptions.exclude_resources` is deprecated and will be removed after January 2027.")
    assert known.returncode == 0 and known.stdout.strip() == "ok" and not known.stderr
    assert run("another deprecation").returncode != 0  # the user's `error` still applies to everything else


def test_known_prints_are_dropped_other_output_kept(capsys):
    with console.known_prints_dropped():
        print("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully")
        print("something the user should see")
    assert capsys.readouterr().out == "something the user should see\n"


def test_prints_patched_into_root_log_records_are_dropped_too(caplog):
    console.quiet_known_warnings()
    with caplog.at_level(logging.INFO):
        logging.getLogger().info("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully")
        logging.getLogger().info("[train] step 1/6")
    assert [r.getMessage() for r in caplog.records] == ["[train] step 1/6"]
