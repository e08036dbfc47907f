"""Session-wide fixtures: one real local Ray cluster (`ray start --head` on loopback) per test session.

Tests that need Ray take the ``ray_cluster`` fixture: the driver connects to it, `RAY_ADDRESS` points at it (so
jobs run in-process connect to it too) and `ray job submit` can reach its dashboard. It is stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")  # the test cluster inherits it

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayCluster:
    """A running local cluster: GCS address and dashboard (jobs API) address."""

    address: str
    dashboard: str
    env: dict[str, str]


@pytest.fixture(scope="session")
def ray_auth_token(tmp_path_factory) -> None:
    """Token auth needs a token; a fresh machine has no ~/.ray/auth_token. Give the session its own file (leaving the
    user's ~/.ray alone); `ray start`, the driver, `ray job submit`, the jobs and other clusters inherit its path."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    if (Path.home() / ".ray" / "auth_token").exists():
        return
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    path = tmp_path_factory.mktemp("ray_auth") / "auth_token"
    path.write_text(generate_new_authentication_token())
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)


@pytest.fixture(scope="session")
def ray_cluster(ray_auth_token):
    """Start `ray start --head` (2 CPUs, loopback dashboard), connect this process, stop it at the end."""
    import ray

    port, dash, agent = _free_port(), _free_port(), _free_port()
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop("RAY_ADDRESS", None)
    temp_dir = f"/tmp/ray_t{port}"  # own session dir: teardown stops this cluster only, not other Rays here
    cmd = [str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}",
           f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    address = f"127.0.0.1:{port}"
    # RAY_ADDRESS in the cluster's own environment: its workers inherit it, so Ray's internals that resolve "auto"
    # (Train's PlacementGroupCleaner, the state API) find this cluster, not a stale /tmp/ray/ray_current_cluster
    # another Ray on the machine left behind (seen: the cleaner timed out, trials' placement groups leaked, a sweep
    # waited forever for a CPU).
    subprocess.run(cmd, check=True, env=dict(env, RAY_ADDRESS=address), capture_output=True, text=True, timeout=180)
    cluster = RayCluster(address=address, dashboard=f"http://127.0.0.1:{dash}", env=dict(env, RAY_ADDRESS=address))
    os.environ["RAY_ADDRESS"] = address
    ray.init(address=address)
    _wait_for_jobs_api(cluster)
    yield cluster
    ray.shutdown()
    os.environ.pop("RAY_ADDRESS", None)
    _stop_cluster(temp_dir)


def _stop_cluster(temp_dir: str) -> None:
    """Stop the processes of this cluster only (`ray stop` would stop every Ray on the machine)."""
    import psutil

    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in arg for arg in p.info["cmdline"] or []):
                # with their children: agents and workers rename themselves (`ray::DashboardAgent`)
                found.update({q.pid: q for q in [p, *p.children(recursive=True)]})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    procs = list(found.values())
    for p in procs:
        p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=20)
    for p in alive:
        p.kill()
    shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_jobs_api(cluster: RayCluster, timeout: float = 60.0) -> None:
    """The job agent comes up a few seconds after the head; wait until it answers."""
    from ray.job_submission import JobSubmissionClient

    deadline = time.time() + timeout
    while True:
        try:
            JobSubmissionClient(cluster.dashboard).list_jobs()
            return
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(1.0)
