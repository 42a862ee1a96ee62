"""deploy/kuberay/: every manifest validates, and the jobs it runs can be scheduled on it.

Core objects and every pod template check against Kubernetes' own schemas (kubernetes-validate, strict: an unknown
field is an error). RayJob and RayService check against KubeRay's CRD schemas (v1.7.0, pruned and made strict by
tests/data/kuberay/prune_crd.py). Each job's entrypoint (or the RayService's serveConfigV2) is parsed by the job's
own config code, and its resource bundles are placed on the Ray nodes the manifest's groups can grow to, as
tests/test_configs_schedule.py does for cluster.yaml."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pipelines import launch

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "kuberay"
SCHEMAS = {"RayJob": "rayjob.v1.json", "RayService": "rayservice.v1.json"}
PROJECT = "/home/ray/ecgvlm"  # where the image (and cluster.yaml) put the project
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _ray(kind: str) -> list[dict]:
    return [d for p in MANIFESTS for d in _docs(p) if d["kind"] == kind]


def _cluster(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]["rayClusterConfig"]


def _templates(doc: dict) -> dict[str, dict]:
    """``{where: pod template}`` of a RayJob / RayService."""
    cluster = _cluster(doc)
    out = {"head": cluster["headGroupSpec"]["template"]}
    out.update({g["groupName"]: g["template"] for g in cluster.get("workerGroupSpecs", [])})
    if "submitterPodTemplate" in doc["spec"]:
        out["submitter"] = doc["spec"]["submitterPodTemplate"]
    return out


def _crd_errors(doc: dict) -> list[str]:
    schema = json.loads((REPO / "tests" / "data" / "kuberay" / SCHEMAS[doc["kind"]]).read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def _pod_template_errors(template: dict) -> list[str]:
    wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}
    try:
        kubernetes_validate.validate(wrapped, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as err:
        return [f"{'.'.join(map(str, err.path))}: {err.message}"]
    return []


def test_there_is_a_rayjob_for_evaluation_and_training_and_a_rayservice():
    entrypoints = sorted(shlex.split(d["spec"]["entrypoint"])[1] for d in _ray("RayJob"))
    assert entrypoints == ["evaluate", "train"]
    assert len(_ray("RayService")) == 1


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_validates(path):
    for doc in _docs(path):
        if doc["kind"] in SCHEMAS:
            assert _crd_errors(doc) == []
            for where, template in _templates(doc).items():
                assert _pod_template_errors(template) == [], where
        else:
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_the_checks_refuse_unknown_and_misplaced_fields():
    job = copy.deepcopy(_ray("RayJob")[0])
    cluster = _cluster(job)
    cluster["workerGroupSpecs"][0]["maxReplica"] = 8  # a typo of maxReplicas
    cluster["authOptions"]["mode"] = "tokens"
    errors = _crd_errors(job)
    assert any("maxReplica" in e for e in errors) and any("'tokens' is not one of" in e for e in errors), errors
    template = copy.deepcopy(_templates(job)["head"])
    template["spec"]["containers"][0]["resource"] = template["spec"]["containers"][0].pop("resources")
    assert _pod_template_errors(template), "a misspelt container field passes"


def _quantity(text) -> float:
    """A Kubernetes quantity as a number: "8" -> 8, "500m" -> 0.5, "30Gi" -> 30 * 2**30."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text)).groups()
    return float(number) * units.get(unit, 1)


def _node(group: dict) -> dict:
    """The Ray resources of one pod of a group: KubeRay's rayStartParams, else the container's limits."""
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    params = group.get("rayStartParams") or {}
    return {"CPU": float(params.get("num-cpus", _quantity(limits["cpu"]))),
            "GPU": float(params.get("num-gpus", _quantity(limits.get("nvidia.com/gpu", 0)))),
            "memory": _quantity(limits["memory"])}


def _nodes(doc: dict) -> list[dict]:
    """Every Ray node the cluster can have at once: the head and each worker group at its maxReplicas."""
    cluster = _cluster(doc)
    nodes = [_node(cluster["headGroupSpec"])]
    for group in cluster["workerGroupSpecs"]:
        nodes += [_node(group)] * group["maxReplicas"]
    return nodes


def _job_config(doc: dict):
    """The job's config, parsed from the RayJob's entrypoint by the job's own code."""
    from ecgconfig import load_config
    from pipelines.evaluate import EvaluateConfig
    from pipelines.train import parse_config

    argv = [a.replace(PROJECT, str(REPO)) for a in shlex.split(doc["spec"]["entrypoint"])]
    assert argv[0] == "ecgvlm", argv
    config = Path(argv[argv.index("--config") + 1])
    assert config.is_file(), f"{config} is not in the repository (the image copies it to {PROJECT})"
    if argv[1] == "train":
        return parse_config(argv[2:])
    return load_config(EvaluateConfig, argv[2:], prog="ecgvlm evaluate")


@pytest.mark.parametrize("doc", _ray("RayJob"), ids=lambda d: d["metadata"]["name"])
def test_each_rayjob_fits_its_node_groups_at_their_largest(doc):
    cfg = _job_config(doc)
    bundles = cfg.bundles()
    if hasattr(cfg, "max_actors"):  # the evaluation's actor pool at its largest
        bundles = [bundles[0]] * cfg.max_actors + bundles[cfg.min_actors:]
    ok, why = launch.fits(bundles, _nodes(doc))
    assert ok, f"{doc['metadata']['name']}: {why}"
    assert any(b.get("GPU", 0) > 0 for b in bundles), "a GPU job that asks for no GPU"
    gpu_groups = [g for g in _cluster(doc)["workerGroupSpecs"] if _node(g)["GPU"] > 0]
    assert gpu_groups and all(g["minReplicas"] == 0 < g["maxReplicas"] for g in gpu_groups), "GPUs scale from 0"


def _serve_app(doc: dict, tmp_path: Path):
    from serving.config import load_serve_yaml

    path = tmp_path / "serve.yaml"
    path.write_text(doc["spec"]["serveConfigV2"])
    return load_serve_yaml(path)


def test_the_rayservice_app_parses_and_its_replicas_fit_at_their_largest(tmp_path):
    from pipelines.serve import ServeJob

    doc = _ray("RayService")[0]
    http, app = _serve_app(doc, tmp_path)
    assert http["host"] == "0.0.0.0" and http["port"] == 8000  # the pod's port behind KubeRay's serve Service
    scaled = app.model_copy(update={"predictor": app.predictor.model_copy(
        update={"min_replicas": app.predictor.max_replicas})})
    ok, why = launch.fits(ServeJob(app=scaled).bundles(), _nodes(doc))
    assert ok, why
    assert app.predictor.num_gpus > 0
    gpu = [g for g in _cluster(doc)["workerGroupSpecs"] if _node(g)["GPU"] > 0]
    assert gpu[0]["minReplicas"] >= app.predictor.min_replicas and gpu[0]["maxReplicas"] >= app.predictor.max_replicas


def test_the_rayservice_reads_its_api_key_from_a_secret_in_every_pod(tmp_path):
    from serving.config import AppConfig

    doc = _ray("RayService")[0]
    _, app = _serve_app(doc, tmp_path)
    name = getattr(app, "api_key_env", "ECGVLM_API_KEY")  # the app's setting, where the app has one
    if "require_api_key" in AppConfig.model_fields:  # the app can refuse to start without a key: it must, here
        assert app.require_api_key, "serveConfigV2: set require_api_key: true"
    for where, template in _templates(doc).items():
        env = {e["name"]: e for c in template["spec"]["containers"] for e in c.get("env", [])}
        assert name in env, where
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"], where


def test_every_cluster_has_token_auth_autoscaling_and_the_image_of_the_dockerfile():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    ray_image = re.search(r"^ARG RAY_IMAGE=(\S+)", dockerfile, re.M).group(1)
    version = re.search(r":(\d+\.\d+\.\d+)", ray_image).group(1)
    images = set()
    for doc in _ray("RayJob") + _ray("RayService"):
        cluster = _cluster(doc)
        assert cluster["authOptions"] == {"mode": "token"}
        assert tuple(map(int, cluster["rayVersion"].split("."))) >= (2, 52)  # Ray's token authentication
        assert cluster["rayVersion"] == version
        assert cluster["enableInTreeAutoscaling"] is True
        for template in _templates(doc).values():
            images |= {c["image"] for c in template["spec"]["containers"]}
            assert template["spec"]["serviceAccountName"] == "ecgvlm"
    assert len(images) == 1, images


def test_the_image_installs_the_project_as_cluster_yaml_does():
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"ARG RAY_IMAGE={cluster['docker']['image']}" in dockerfile
    run = " ".join(re.search(r"^RUN (.*?)(?=\n\n|\Z)", dockerfile, re.M | re.S).group(1).split())
    for command in cluster["setup_commands"]:
        assert " ".join(command.split()) in run, command
    ignored = set((DEPLOY / "Dockerfile.dockerignore").read_text().split())
    assert {".git", ".venv", "data", "runs"} <= ignored
