"""k8s/raycluster.yaml and k8s/rayjob.yaml: valid against KubeRay's own CRD schemas (vendored, offline) and
consistent with the project: image and installs as cluster.yaml, 4 GPUs per worker pod, storage where the configs
write, the README's training command, the dashboard kept inside the cluster.

The schemas are KubeRay v1.7.0's `openAPIV3Schema` of RayCluster and RayJob (tests/fixtures/kuberay/, written by
its vendor_schema.py). They are checked strictly, as `kubectl apply` does by default (`--validate=strict`): a field
the schema does not know is an error, where the API server would otherwise drop it silently. CEL rules
(`x-kubernetes-validations`) are the API server's and are not evaluated here.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from sa2va_ray.config import load_config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
SCHEMAS = ROOT / "tests" / "fixtures" / "kuberay" / "kuberay_crd_schemas.json"
REAL_CONFIGS = [ROOT / "configs" / "vessel_internvl3_8b_lora.yaml",
                ROOT / "configs" / "vessel_internvl3_8b_lora_zero3_offload.yaml"]
GPUS_PER_NODE = 4  # 4x RTX 3090 per machine


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _one(name: str, kind: str) -> dict:
    (doc,) = [d for d in _docs(name) if d["kind"] == kind]
    return doc


def _strict(node):
    """A structural CRD schema as `kubectl apply --validate=strict` reads it: unknown fields are errors."""
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if "properties" in node and "additionalProperties" not in node and not node.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@pytest.fixture(scope="module")
def validators() -> dict[str, jsonschema.Draft202012Validator]:
    vendored = json.loads(SCHEMAS.read_text())
    assert "kuberay v1.7.0" in vendored["source"]
    defs = _strict(vendored["$defs"])
    out = {}
    for kind, schema in vendored["kinds"].items():
        full = {**_strict(schema), "$defs": defs}
        jsonschema.Draft202012Validator.check_schema(full)
        out[kind] = jsonschema.Draft202012Validator(full)
    return out


def _errors(validator, doc) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def _containers(spec_template: dict) -> list[dict]:
    return spec_template["spec"]["containers"]


def _cluster_containers(cluster: dict) -> list[dict]:
    spec = cluster["spec"]
    out = _containers(spec["headGroupSpec"]["template"])
    for group in spec["workerGroupSpecs"]:
        out += _containers(group["template"])
    return out


def _pyproject_pin(package: str) -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(rf'"{re.escape(package)}(?:\[[^\]]*\])?==([^"]+)"', text).group(1)


# ---------------------------------------------------------------- KubeRay's schema


@pytest.mark.parametrize("name,kind", [("raycluster.yaml", "RayCluster"), ("rayjob.yaml", "RayJob")])
def test_yaml_opens_with_its_launch_command_and_validates_against_kuberay(name, kind, validators):
    assert (K8S / name).read_text().splitlines()[0] == f"# kubectl apply -f k8s/{name}"
    doc = _one(name, kind)
    assert doc["apiVersion"] == "ray.io/v1"
    assert _errors(validators[kind], doc) == []


def test_the_strict_schema_catches_typos_and_bad_quantities(validators):
    """The validation above is not vacuous: a misspelt field or a malformed quantity fails it."""
    cluster = _one("raycluster.yaml", "RayCluster")
    typo = copy.deepcopy(cluster)
    typo["spec"]["enableInTreeAutoScaling"] = typo["spec"].pop("enableInTreeAutoscaling")
    assert any("enableInTreeAutoScaling" in e for e in _errors(validators["RayCluster"], typo))
    bad = copy.deepcopy(cluster)
    _containers(bad["spec"]["workerGroupSpecs"][0]["template"])[0]["resources"]["limits"]["memory"] = "100 GB"
    assert _errors(validators["RayCluster"], bad)
    deep = copy.deepcopy(cluster)  # deep inside the pod template (the shared $defs)
    container = _containers(deep["spec"]["workerGroupSpecs"][0]["template"])[0]
    container["volumeMount"] = container.pop("volumeMounts")
    assert any("volumeMount" in e for e in _errors(validators["RayCluster"], deep))
    job = copy.deepcopy(_one("rayjob.yaml", "RayJob"))
    job["spec"]["entryPoint"] = job["spec"].pop("entrypoint")
    assert _errors(validators["RayJob"], job)


# ---------------------------------------------------------------- the project


def test_image_is_built_from_the_install_of_cluster_yaml():
    cluster, job = _one("raycluster.yaml", "RayCluster"), _one("rayjob.yaml", "RayJob")
    images = {c["image"] for c in _cluster_containers(cluster) + _containers(job["spec"]["submitterPodTemplate"])}
    assert len(images) == 1, images
    (image,) = images
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert image.rsplit(":", 1)[1] == version
    dockerfile = (K8S / "Dockerfile").read_text()
    ray = _pyproject_pin("ray")
    assert cluster["spec"]["rayVersion"] == ray
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray)}-py3\d+-gpu$", dockerfile, re.M)
    assert f"-t {image} ." in dockerfile.splitlines()[0]  # its build command tags the image the YAMLs run

    # The same pinned installs as cluster.yaml's setup_commands, in the same order (see the README's GPU install).
    setup = "\n".join(yaml.safe_load((ROOT / "cluster.yaml").read_text())["setup_commands"])
    pins = re.findall(r'"((?:torch|sam2|deepspeed)==[^"]+)"', setup)
    assert len(pins) == 3
    assert re.findall(r'"((?:torch|sam2|deepspeed)==[^"]+)"', dockerfile) == pins
    assert "SAM2_BUILD_CUDA=0 pip install -q --no-build-isolation --no-deps" in dockerfile
    assert "hydra-core iopath tqdm ninja" in dockerfile and dockerfile.rstrip().endswith("pip install -q -e .")
    # `COPY . .` must keep the package's own data/ and train/ subpackages (an unanchored pattern would drop them).
    ignored = (K8S / "Dockerfile.dockerignore").read_text().split()
    assert not any(p.lstrip("*/") in {"data", "model", "train", "evaluate"} and p.startswith("**") for p in ignored)


def test_worker_group_is_4_rtx3090_per_pod_and_autoscales():
    spec = _one("raycluster.yaml", "RayCluster")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    (group,) = spec["workerGroupSpecs"]
    assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert group["maxReplicas"] > group["minReplicas"]
    (container,) = _containers(group["template"])
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == GPUS_PER_NODE
    assert int(group["rayStartParams"]["num-gpus"]) == GPUS_PER_NODE
    pod = group["template"]["spec"]
    labels = json.dumps([pod.get("nodeSelector"), pod.get("affinity")])
    assert "RTX-3090" in labels and "nvidia.com/gpu.product" in labels
    # The head takes no GPU work; each worker pod holds exactly the Ray Train workers of one node.
    assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    for path in REAL_CONFIGS:
        sc = load_config(path).scaling
        assert sc.num_workers % GPUS_PER_NODE == 0 and sc.gpus_per_worker == 1, path
        assert int(group["rayStartParams"]["num-cpus"]) >= GPUS_PER_NODE * sc.cpus_per_worker, path
        assert float(resources["limits"]["cpu"]) >= GPUS_PER_NODE * sc.cpus_per_worker, path


def test_shared_volume_is_mounted_where_the_configs_write(monkeypatch):
    docs = _docs("raycluster.yaml")
    (pvc,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    cluster = _one("raycluster.yaml", "RayCluster")
    shared = re.search(r"echo 'export SA2VA_SHARED=(/[^']+)'",
                       "\n".join(yaml.safe_load((ROOT / "cluster.yaml").read_text())["setup_commands"])).group(1)
    templates = [cluster["spec"]["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["spec"]["workerGroupSpecs"]]
    for template in templates:
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in template["spec"]["volumes"] if "persistentVolumeClaim" in v}
        (container,) = _containers(template)
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["SA2VA_SHARED"] == shared  # the same path as on the cluster.yaml machines
        mounts = [m for m in container["volumeMounts"] if claims.get(m["name"]) == pvc["metadata"]["name"]]
        whole = [m["mountPath"] for m in mounts if "subPath" not in m]
        assert whole == [shared]
        monkeypatch.setenv("SA2VA_SHARED", env["SA2VA_SHARED"])
        for path in REAL_CONFIGS:
            cfg = load_config(path)
            # Everything a job reads or writes is on the volume: outputs, checkpoints, data, weights.
            for value in (cfg.output_dir, cfg.storage_path, cfg.data.annotations, cfg.data.images_dir,
                          cfg.model.internvl_path, cfg.model.sam2_checkpoint):
                assert any(value.startswith(m["mountPath"].rstrip("/") + "/") for m in mounts), (path, value)
            assert cfg.storage_path.startswith(shared + "/") and cfg.output_dir.startswith(shared + "/")


def test_dashboard_stays_inside_the_cluster():
    docs = _docs("raycluster.yaml") + _docs("rayjob.yaml")
    cluster = _one("raycluster.yaml", "RayCluster")
    head = cluster["spec"]["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    assert cluster["spec"]["authOptions"]["mode"] == "token"
    text = json.dumps(docs)
    assert "NodePort" not in text and "LoadBalancer" not in text and "hostNetwork" not in text
    assert not [d for d in docs if d["kind"] in {"Ingress", "Service", "Route"}]
    assert head["rayStartParams"].get("dashboard-host", "0.0.0.0") in {"0.0.0.0", "127.0.0.1"}
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/cluster": cluster["metadata"]["name"],
                                                            "ray.io/node-type": "head"}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for rule in policy["spec"]["ingress"]:
        own_pods = rule["from"] == [{"podSelector": {"matchLabels": {"ray.io/cluster": cluster["metadata"]["name"]}}}]
        assert own_pods or [p["port"] for p in rule["ports"]] == [8265], rule


def test_rayjob_runs_the_readme_training_command_on_the_cluster():
    job, cluster = _one("rayjob.yaml", "RayJob"), _one("raycluster.yaml", "RayCluster")
    spec = job["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    entry = spec["entrypoint"]
    assert entry in (ROOT / "README.md").read_text()
    argv = shlex.split(entry)
    assert argv[:3] == ["python", "jobs/train.py", "--config"]
    config = ROOT / argv[3]
    assert config.read_text().splitlines()[0].startswith(f"# {entry}")  # the config's own launch line
    load_config(config, argv[4:])
    workdir = re.search(r"^WORKDIR (\S+)$", (K8S / "Dockerfile").read_text(), re.M).group(1)
    assert yaml.safe_load(spec["runtimeEnvYAML"]) == {"working_dir": workdir}  # the repository inside the image
    # data.pseudonymise needs the salt on the driver, which runs on the head, and nowhere in the job's records.
    assert load_config(config).data.pseudonymise
    head_env = {e["name"]: e for e in _containers(cluster["spec"]["headGroupSpec"]["template"])[0]["env"]}
    assert "secretKeyRef" in head_env["SA2VA_SALT"]["valueFrom"]
    assert "SA2VA_SALT" not in json.dumps(job)
