"""Can the cluster ever hold the request? Necessary conditions per placement strategy, and the autoscaling wait."""

from __future__ import annotations

import pytest

from sa2va_ray.train.resources import ResourceError, wait_until_placeable, why_unplaceable

TWO_CPU = [{"CPU": 2.0, "memory": 1e9}]
THREE_NODES = [{"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 4.0, "GPU": 2.0}]


def workers(n: int, **res: float) -> list[dict[str, float]]:
    return [dict(res) for _ in range(n)]


def test_what_fits_is_accepted():
    assert why_unplaceable(workers(2, CPU=1.0), "PACK", TWO_CPU) is None
    assert why_unplaceable(workers(4, CPU=0.5), "STRICT_PACK", TWO_CPU) is None
    assert why_unplaceable(workers(3, CPU=1.0), "STRICT_SPREAD", THREE_NODES) is None
    assert why_unplaceable(workers(2, CPU=1.0, GPU=1.0), "PACK", THREE_NODES) is None


def test_too_many_workers_names_need_and_have():
    reason = why_unplaceable(workers(99, CPU=1.0), "PACK", TWO_CPU)
    assert reason == "needs 99 CPU in total; the cluster has 2 CPU on 1 node(s)"


@pytest.mark.parametrize("bundles,strategy,nodes,words", [
    (workers(1, CPU=1.0, GPU=1.0), "PACK", TWO_CPU, "needs 1 CPU, 1 GPU in total; the cluster has 2 CPU"),
    (workers(1, CPU=3.0), "PACK", THREE_NODES[:2] + [{"CPU": 2.0}], "on one node for each worker"),
    (workers(3, CPU=1.0), "STRICT_PACK", THREE_NODES[:2] + [{"CPU": 2.0}], "on one node (STRICT_PACK)"),
    (workers(4, CPU=1.0), "STRICT_SPREAD", THREE_NODES, "needs 4 nodes with 1 CPU each"),
])
def test_each_strategy_says_why(bundles, strategy, nodes, words):
    assert words in why_unplaceable(bundles, strategy, nodes)


def test_fixed_cluster_fails_at_once():
    calls = []

    def nodes():
        calls.append(1)
        return TWO_CPU

    with pytest.raises(ResourceError, match=r"scaling.num_workers=3 .* needs 3 CPU in total.*Lower"):
        wait_until_placeable(workers(3, CPU=1.0), "PACK", "scaling.num_workers=3 x (1 CPU)", "Lower it.", 0,
                             nodes_fn=nodes)
    assert len(calls) == 1


def test_autoscaling_cluster_is_waited_for_until_it_grows(capsys):
    sizes = iter([TWO_CPU, TWO_CPU, TWO_CPU + [{"CPU": 2.0}]])
    wait_until_placeable(workers(4, CPU=1.0), "PACK", "4 workers", "fix", 600, nodes_fn=lambda: next(sizes),
                         poll_s=0.0)
    out = capsys.readouterr().out
    assert "waiting up to 600 s" in out and "can hold the run now" in out


def test_autoscaling_wait_has_a_deadline():
    with pytest.raises(ResourceError, match=r"waited 0.05 s, scaling.wait_for_resources_s"):
        wait_until_placeable(workers(4, CPU=1.0), "PACK", "4 workers", "fix", 0.05, nodes_fn=lambda: TWO_CPU,
                             poll_s=0.01)
