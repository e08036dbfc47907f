"""Integration fixtures: a small synthetic angiography set shared by the job tests."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory) -> Path:
    """4 patients x 3 frames of 96 px: `annotations.json` + `images/`."""
    from sa2va_ray.data.synthetic import generate_synthetic_set

    out = tmp_path_factory.mktemp("synth")
    generate_synthetic_set(out, patients=4, frames=3, size=96, seed=0)
    return out


def job_overrides(synthetic_set: Path, out: Path, *extra: str) -> list[str]:
    """Overrides that point the demo config at the small set and keep every run a few CPU steps long."""
    return [
        f"output_dir={out}",
        f"data.annotations={synthetic_set / 'annotations.json'}",
        f"data.images_dir={synthetic_set / 'images'}",
        "data.synthetic.enabled=false",
        "train.max_steps=4",
        "train.val_every=2",
        "train.log_every=1",
        "train.micro_batch_size=2",
        "train.warmup_steps=1",
        "eval.batch_size=4",
        *extra,
    ]


@pytest.fixture(autouse=True)
def _release_placement_groups():
    """After each job test, placement groups its Ray Train runs left behind are named in a warning and removed.

    Ray Train removes its groups when a run ends; one left over (seen once, after a failed run) holds CPUs that a
    later test then waits for forever. A short grace period lets Ray's asynchronous teardown finish first.
    """
    yield
    import ray

    if not ray.is_initialized():
        return
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    def live() -> dict[str, dict]:
        return {pg_id: info for pg_id, info in placement_group_table().items()
                if info.get("state") in ("CREATED", "PENDING", "RESCHEDULING")}

    deadline = time.monotonic() + 30
    while live() and time.monotonic() < deadline:
        time.sleep(1)
    leftover = live()
    if leftover:
        warnings.warn(f"removing {len(leftover)} placement group(s) left after the test: "
                      + ", ".join(f"{k[:12]} {v.get('bundles')}" for k, v in leftover.items()), stacklevel=1)
        for pg_id in leftover:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
