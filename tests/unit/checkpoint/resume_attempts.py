"""Subprocess: a real DeepSpeed ZeRO-2 engine writes a checkpoint, then resumes from crafted copies and the original.

    python resume_attempts.py OUT PORT CONFIG MALICIOUS_PY

Writes ``OUT/genuine`` (as the training loop does: ``deepspeed/``, ``trainable.safetensors``, ``config.yaml``,
``train_state.json``) and ``OUT/<kind>`` for each crafted kind, tries
:func:`sa2va_ray.train.checkpoint.load_checkpoint_per_worker` (the Ray Train worker's resume) on every one, and
prints one JSON line ``{kind: "refused: <message>" | "loaded step N"}``.
"""

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

out, port, config, malicious_py = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")

import deepspeed  # noqa: E402
import numpy as np  # noqa: E402
import ray.train  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from sa2va_ray.checkpoint.load import build_base_model, prepare_for_training  # noqa: E402
from sa2va_ray.checkpoint.safety import UnsafeCheckpointError  # noqa: E402
from sa2va_ray.config import load_config, save_config  # noqa: E402
from sa2va_ray.train.checkpoint import DS_TAG, gather_trainable_state, load_checkpoint_per_worker  # noqa: E402
from sa2va_ray.train.deepspeed_config import build_deepspeed_config  # noqa: E402

spec = importlib.util.spec_from_file_location("malicious", malicious_py)
malicious = importlib.util.module_from_spec(spec)
spec.loader.exec_module(malicious)

torch.set_num_threads(1)
deepspeed.init_distributed(dist_backend="gloo")
cfg = load_config(config, ["deepspeed.zero_stage=2", "train.max_steps=10", "train.warmup_steps=1", "train.lr=0.01",
                           "train.micro_batch_size=1"])
model = prepare_for_training(build_base_model(cfg), cfg, verbose=False)
engine, *_ = deepspeed.initialize(model=model, config=build_deepspeed_config(cfg, 1),
                                  model_parameters=[p for p in model.parameters() if p.requires_grad])
rng = np.random.default_rng(0)
sample = {"image": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), "masks": [rng.random((64, 64)) > 0.7],
          "texts": ["vessel"]}
batch = model.processor.collate_train([sample])
for _ in range(3):
    engine.backward(engine(**batch).loss)
    engine.step()
genuine = out / "genuine"
engine.save_checkpoint(str(genuine), tag=DS_TAG, client_state={"step": 3, "epoch": 0, "best": {}})
save_file(gather_trainable_state(engine, False, True), str(genuine / "trainable.safetensors"))
save_config(cfg, genuine / "config.yaml")
(genuine / "train_state.json").write_text(json.dumps({"step": 3, "zero_stage": 2, "world_size": 1}))

optim = genuine / DS_TAG / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
results = {}
for kind, write in malicious.CODE_RUNNING.items():
    d = shutil.copytree(genuine, out / kind)
    target = d / DS_TAG / ("mp_rank_00_model_states.pt" if kind == "zip_eval" else optim.name)
    marker = out / f"ran_{kind}"
    if kind == "zip_nested":  # hide the payload inside the real optimizer state DeepSpeed just wrote
        state = torch.load(optim, map_location="cpu", weights_only=False)  # our own file, written above
        state["optimizer_state_dict"]["param_groups_extra"] = [{"hook": malicious.Reduce(os.system, f"touch {marker}")}]
        torch.save(state, target)
    else:
        write(target, marker)
for kind in [*malicious.CODE_RUNNING, "genuine"]:
    try:
        client = load_checkpoint_per_worker(engine, ray.train.Checkpoint.from_directory(str(out / kind)))
        results[kind] = f"loaded step {client['step']}"
    except UnsafeCheckpointError as e:
        results[kind] = f"refused: {e}"
print(json.dumps(results))
