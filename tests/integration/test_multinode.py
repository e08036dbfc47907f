"""Multi-node proof on one machine: three 1-CPU Ray nodes; training workers and evaluation actors use several.

Asserts only what Ray guarantees for the placement `multinode_run.py` asks for (STRICT_SPREAD workers, predictor
actors that need a whole node's CPU), never which actor happened to receive which batch.
"""

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


def test_training_and_evaluation_use_several_nodes(ray_auth_token, synthetic_set, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own cluster, not the session's
    proc = subprocess.run([sys.executable, str(HERE / "multinode_run.py"), str(synthetic_set), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    nodes = set(json.loads((tmp_path / "nodes.json").read_text()))
    assert len(nodes) == 3
    ranks = [json.loads(p.read_text()) for p in sorted((tmp_path / "workers").glob("rank_*.json"))]
    assert len(ranks) == 2
    train_nodes = {r["node_id"] for r in ranks}
    assert len(train_nodes) == 2 and train_nodes <= nodes, "STRICT_SPREAD: one training worker per node"
    predictor_nodes = json.loads((tmp_path / "predictor_nodes.json").read_text())
    assert len(predictor_nodes) == 2 and len(set(predictor_nodes)) == 2, predictor_nodes  # a whole CPU each
    assert set(predictor_nodes) <= nodes
    table = pd.read_parquet(tmp_path / "eval" / "samples.parquet")
    assert len(table) >= 12 and (table["status"] == "ok").all()  # one complete table, whichever actor scored a row
    assert {w.split(":")[1] for w in table["worker"]} <= {n[:12] for n in predictor_nodes}
