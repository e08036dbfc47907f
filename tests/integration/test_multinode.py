"""Multi-node proof on one machine: two 1-CPU Ray nodes; training workers and evaluation actors land on both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.integration
HERE = Path(__file__).resolve().parent


def test_training_and_evaluation_use_both_nodes(ray_auth_token, synthetic_set, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own cluster, not the session's
    proc = subprocess.run([sys.executable, str(HERE / "multinode_run.py"), str(synthetic_set), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    nodes = set(json.loads((tmp_path / "nodes.json").read_text()))
    assert len(nodes) == 2
    ranks = [json.loads(p.read_text()) for p in sorted((tmp_path / "workers").glob("rank_*.json"))]
    assert len(ranks) == 2
    train_nodes = {r["node_id"] for r in ranks}
    assert train_nodes == nodes, "the two training workers should run on different nodes"
    table = pd.read_parquet(tmp_path / "eval" / "samples.parquet")
    assert (table["status"] == "ok").all() and len(table) > 0  # one table from both nodes
    eval_nodes = {w.split(":")[1] for w in table["worker"] if w}
    assert {n[:12] for n in nodes} == eval_nodes, (
        f"evaluation actors should run on both nodes; rows per actor: {table['worker'].value_counts().to_dict()}\n"
        + proc.stdout[-3000:])
