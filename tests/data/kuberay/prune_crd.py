"""Writes the schemas tests/test_deploy_kuberay.py checks the KubeRay manifests against: the ``v1`` OpenAPI schema of
KubeRay's RayJob and RayService CRDs (ray-operator/config/crd/bases/ray.io_rayjobs.yaml, ray.io_rayservices.yaml),
made small and strict. Descriptions go; every pod template (an object with ``spec.containers``) becomes
``{"type": "object", "x-pod-template": true}``, since the test validates pod templates against Kubernetes' own
PodTemplate schema (kubernetes-validate); every object with listed properties and no ``additionalProperties``
rejects unknown fields, as ``kubectl apply --validate=strict`` does.

Example (from a KubeRay checkout at tag v1.7.0)::

    python tests/data/kuberay/prune_crd.py ~/kuberay/ray-operator/config/crd/bases/ray.io_rayjobs.yaml \
        tests/data/kuberay/rayjob.v1.json v1.7.0
"""

from __future__ import annotations

import json
import sys

import yaml


def is_pod_template(schema: dict) -> bool:
    spec = schema.get("properties", {}).get("spec", {})
    return "containers" in spec.get("properties", {})


def prune(schema):
    """The schema without descriptions, with pod templates cut off and unknown fields refused."""
    if isinstance(schema, list):
        return [prune(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if is_pod_template(schema):
        return {"type": "object", "x-pod-template": True}
    out = {k: prune(v) for k, v in schema.items() if k != "description"}
    if "properties" in out:
        out["properties"] = {k: prune(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


def main(crd_path: str, out_path: str, kuberay: str) -> None:
    with open(crd_path) as f:
        crd = yaml.safe_load(f)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = prune(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # validated as ObjectMeta by kubernetes-validate
    schema["x-source"] = f"KubeRay {kuberay}: CRD {crd['metadata']['name']} v1, pruned by tests/data/kuberay/prune_crd.py"
    with open(out_path, "w") as f:
        json.dump(schema, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
