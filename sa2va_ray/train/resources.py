"""Can the Ray cluster ever hold what a job asks for? Checked on the driver before a placement group is requested.

Ray waits for a placement group it cannot place (Ray Train retries the wait without end), so ``scaling.num_workers=99``
on a 2-CPU machine would hang. :func:`wait_until_placeable` compares the request with the cluster's *total* resources
(not what is free now: resources held by other jobs come back) and

* fails at once with what is needed against what the cluster has, when ``scaling.wait_for_resources_s`` is 0
  (a fixed cluster, the default);
* otherwise (an autoscaling cluster, ``cluster.yaml``) says what it waits for and re-checks until the deadline.
"""

from __future__ import annotations

import time
from collections import defaultdict

Bundle = dict[str, float]


class ResourceError(RuntimeError):
    """The cluster cannot hold the request (and did not grow to it before the deadline)."""


def alive_nodes() -> list[Bundle]:
    """Total resources of each alive node of the connected cluster."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def _fits(bundle: Bundle, node: Bundle) -> bool:
    return all(node.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items() if v > 0)


def _fmt(res: Bundle) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(res.items()) if v > 0) or "nothing"


def why_unplaceable(bundles: list[Bundle], strategy: str, nodes: list[Bundle]) -> str | None:
    """None when ``bundles`` can be placed on ``nodes`` with ``strategy`` (PACK, SPREAD, STRICT_PACK,
    STRICT_SPREAD), else what is needed against what the cluster has. Necessary conditions only: it never refuses a
    request Ray could place."""
    need: Bundle = defaultdict(float)
    for b in bundles:
        for k, v in b.items():
            need[k] += v
    have: Bundle = defaultdict(float)
    for n in nodes:
        for k in need:
            have[k] += n.get(k, 0.0)
    cluster = f"the cluster has {_fmt(have)} on {len(nodes)} node(s)"
    short = [k for k in need if need[k] > have[k] + 1e-9]
    if short:
        return f"needs {_fmt(dict(need))} in total; {cluster}"
    for b in bundles:
        if not any(_fits(b, n) for n in nodes):
            return f"needs {_fmt(b)} on one node for each worker; no node is that big ({cluster})"
    if strategy == "STRICT_PACK" and not any(_fits(dict(need), n) for n in nodes):
        return f"needs {_fmt(dict(need))} on one node (STRICT_PACK); {cluster}"
    if strategy == "STRICT_SPREAD" and sum(any(_fits(b, n) for b in bundles) for n in nodes) < len(bundles):
        return f"needs {len(bundles)} nodes with {_fmt(bundles[0])} each (STRICT_SPREAD); {cluster}"
    return None


def wait_until_placeable(bundles: list[Bundle], strategy: str, what: str, fix: str, wait_s: float,
                         nodes_fn=alive_nodes, poll_s: float = 10.0) -> None:
    """Return once the cluster can hold ``bundles``; raise :class:`ResourceError` when it cannot (now, or by the
    deadline ``wait_s`` seconds from now).

    Args:
        bundles: one resource dict per worker/actor.
        strategy: Ray placement strategy.
        what: the request in config terms, e.g. ``"scaling.num_workers=99 x 1 CPU"``.
        fix: what the user can change.
        wait_s: 0 fails at once; > 0 waits that long for an autoscaling cluster to grow.
    """
    reason = why_unplaceable(bundles, strategy, nodes_fn())
    if reason is None:
        return
    if wait_s <= 0:
        raise ResourceError(f"{what} {reason}. {fix}")
    deadline = time.monotonic() + wait_s
    print(f"[resources] {what} {reason}; waiting up to {wait_s:g} s for the cluster to grow "
          "(scaling.wait_for_resources_s)", flush=True)
    last_note = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        reason = why_unplaceable(bundles, strategy, nodes_fn())
        if reason is None:
            print("[resources] the cluster can hold the run now", flush=True)
            return
        if time.monotonic() - last_note >= 60:
            last_note = time.monotonic()
            print(f"[resources] still waiting ({deadline - time.monotonic():.0f} s left): {reason}", flush=True)
    raise ResourceError(f"{what} {reason} (waited {wait_s:g} s, scaling.wait_for_resources_s). {fix}")


def check_training_fits(cfg) -> None:
    """The training workers of ``cfg.scaling`` fit the cluster (or it grows to them within the deadline)."""
    sc = cfg.scaling
    bundle: Bundle = {"CPU": sc.cpus_per_worker}
    if sc.use_gpu:
        bundle["GPU"] = sc.gpus_per_worker
    what = f"scaling.num_workers={sc.num_workers} x ({_fmt(bundle)})"
    fix = ("Lower scaling.num_workers or scaling.cpus_per_worker/gpus_per_worker, add nodes, or on an autoscaling "
           "cluster set scaling.wait_for_resources_s.")
    wait_until_placeable([dict(bundle) for _ in range(sc.num_workers)], sc.placement_strategy, what, fix,
                         sc.wait_for_resources_s)


def check_gpus_exist(cfg, what: str) -> None:
    """With ``scaling.use_gpu``, at least one node has a GPU (or one joins within the deadline)."""
    if cfg.scaling.use_gpu:
        wait_until_placeable([{"GPU": 1.0}], "PACK", what, "Set scaling.use_gpu=false or add a GPU node.",
                             cfg.scaling.wait_for_resources_s)
