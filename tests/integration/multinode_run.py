"""Run training and evaluation on a multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`).

Used by `test_multinode.py` in a subprocess, so its cluster never meets the test session's one.

Placement is made deterministic by resources, not left to Ray's best effort (a loaded CI machine once put both
predictor actors, and another time every batch, on one node): three 1-CPU nodes; the two training workers use
STRICT_SPREAD (Ray guarantees two nodes or no run); each of the two predictor actors takes a whole CPU
(``(3 CPUs - 1 for decoding) / 2 actors``), so no node can hold two of them. Which actor gets which batch is not
guaranteed, so the actors' nodes are read from Ray's actor table, not from the rows.

    python tests/integration/multinode_run.py SYNTHETIC_DIR OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "jobs")]


def main(synthetic: str, out: str) -> int:
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    os.environ["RAY_ADDRESS"] = cluster.address
    ray.init(address=cluster.address)
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    import evaluate  # jobs/evaluate.py
    import train  # jobs/train.py

    common = [
        f"output_dir={out}", f"data.annotations={synthetic}/annotations.json", f"data.images_dir={synthetic}/images",
        "data.synthetic.enabled=false", "train.val_every=3", "train.log_every=1", "train.micro_batch_size=2",
        "train.warmup_steps=1", "eval.batch_size=1", "eval.num_actors=2", "eval.vessel_metrics=false",
    ]
    rc = train.main(["--config", str(REPO / "configs/demo.yaml"), *common, "train.max_steps=3", "scaling.num_workers=2",
                     "scaling.cpus_per_worker=0.5", "scaling.placement_strategy=STRICT_SPREAD"])
    # Evaluation starts on an idle cluster (Ray Train releases its workers' CPUs asynchronously): the actors' CPU
    # share is derived from the cluster's total, and they should not wait on CPUs training is about to give back.
    deadline = time.monotonic() + 120
    while ray.available_resources().get("CPU", 0) < 3 and time.monotonic() < deadline:
        time.sleep(1)
    # every record (12), not only the validation split (3): enough batches that both actors get some
    rc = rc or evaluate.main(["--config", str(REPO / "configs/demo.yaml"), *common, f"model.path={out}/model",
                              f"data.val_annotations={synthetic}/annotations.json"])
    Path(out, "nodes.json").write_text(json.dumps(nodes))
    from ray._private.state import actors  # GCS actor table (dead actors included); needs no dashboard

    predictors = [a["Address"]["NodeID"] for a in actors().values()  # CPU-only: the predictor decodes its own batches
                  if any(n in a.get("ActorClassName", "") for n in ("Sa2VAPredictor", "DecodeThen"))]
    Path(out, "predictor_nodes.json").write_text(json.dumps(predictors))
    ray.shutdown()
    cluster.shutdown()
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
