"""Every cluster-launcher YAML passes Ray's own `prepare_config` + `validate_config`, offline.

The AWS provider's `bootstrap_config` (key pairs, IAM roles, subnets, AMI lookup) needs boto3 and AWS credentials,
so it is not run here; everything before it is. Sockets are blocked during validation to prove nothing goes online.
"""

from __future__ import annotations

import copy
import re
import socket
from pathlib import Path

import pytest
import yaml

from sa2va_ray.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAMLS = [ROOT / "cluster.yaml", *sorted((ROOT / "configs" / "cluster").glob("*.yaml"))]
SHARED_RE = re.compile(r"echo 'export SA2VA_SHARED=(/[^']+)'")


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"cluster YAML validation tried to reach the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _prepared(path: Path) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(_load(path)))
    validate_config(config)
    return config


def test_there_is_an_on_prem_and_a_cloud_cluster_yaml():
    providers = {_load(p)["provider"]["type"] for p in CLUSTER_YAMLS}
    assert {"local", "aws"} <= providers
    assert _load(ROOT / "cluster.yaml")["provider"]["type"] == "local"


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_ray_prepares_and_validates_the_cluster_yaml(path, offline):
    config = _prepared(path)
    assert config["head_node_type"] in config["available_node_types"]
    for node_type in config["available_node_types"].values():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= config["max_workers"]
    assert config["idle_timeout_minutes"] > 0


def test_local_provider_lists_machines_and_leaves_resources_to_detection(offline):
    from ray.autoscaler._private.providers import _get_node_provider_cls

    raw = _load(ROOT / "cluster.yaml")
    assert "available_node_types" not in raw and "head_node_type" not in raw  # the local provider rejects them
    provider = raw["provider"]
    assert provider["head_ip"] and len(provider["worker_ips"]) >= 1
    assert raw["min_workers"] <= raw["max_workers"] <= len(provider["worker_ips"])
    config = _prepared(ROOT / "cluster.yaml")
    (node_type,) = config["available_node_types"].values()
    assert node_type["resources"] == {}  # GPUs/CPUs detected by `ray start` on each machine
    bootstrapped = _get_node_provider_cls(config["provider"]).bootstrap_config(config)
    assert bootstrapped["provider"]["worker_ips"] == provider["worker_ips"]


def test_aws_has_an_autoscaling_4_gpu_worker_type(offline):
    config = _prepared(ROOT / "configs" / "cluster" / "aws.yaml")
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    gpu_types = [t for t in workers if t["resources"].get("GPU") == 4]
    assert gpu_types, "no node type with 4 GPUs"
    assert all(t["max_workers"] > t["min_workers"] for t in gpu_types)  # it can scale
    assert config["available_node_types"][config["head_node_type"]]["resources"].get("GPU", 0) == 0


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_dashboard_is_bound_to_localhost(path):
    head = " ".join(_load(path)["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in head


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_setup_installs_the_project_like_the_readme(path):
    commands = _load(path)["setup_commands"]
    text = "\n".join(commands)

    def position(pattern: str) -> int:
        hits = [i for i, c in enumerate(commands) if re.search(pattern, c)]
        assert hits, f"no setup command matches {pattern!r}"
        return hits[0]

    order = [
        position(r"-m venv \.venv"),
        position(r"pip install -q \"?torch"),
        position(r"SAM2_BUILD_CUDA=0 .*--no-build-isolation --no-deps \"?sam2"),
        position(r"--no-build-isolation \"?deepspeed"),
        position(r"pip install -q -e \.$"),
    ]
    assert order == sorted(order), "install order differs from the README (torch, sam2, deepspeed, package)"
    assert "hydra-core iopath tqdm" in text
    assert len(SHARED_RE.findall(text)) == 1, "SA2VA_SHARED must be set in exactly one place"


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_code_sync_keeps_the_package_subdirectories(path):
    raw = _load(path)
    assert raw["file_mounts"]["~/sa2va-ray"] == "."
    # An unanchored pattern such as "data" would also drop sa2va_ray/data/ from every node.
    for pattern in raw["rsync_exclude"]:
        assert pattern not in {"data", "data/", "model", "train", "evaluate"}, pattern


def test_the_real_configs_default_to_the_clusters_shared_storage(monkeypatch):
    monkeypatch.delenv("SA2VA_SHARED", raising=False)
    shared = SHARED_RE.findall("\n".join(_load(ROOT / "cluster.yaml")["setup_commands"]))[0]
    for name in ("vessel_internvl3_8b_lora.yaml", "vessel_internvl3_8b_lora_zero3_offload.yaml"):
        cfg = load_config(ROOT / "configs" / name)
        assert cfg.storage_path.startswith(shared + "/"), name
        assert cfg.output_dir.startswith(shared + "/"), name
    monkeypatch.setenv("SA2VA_SHARED", "/nfs/elsewhere")
    assert load_config(ROOT / "configs" / "vessel_internvl3_8b_lora.yaml").storage_path == "/nfs/elsewhere/ray"
