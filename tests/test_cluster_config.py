"""cluster.yaml and configs/: they parse, name real node types and resources, and name entry points that exist."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml

from pipelines.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]


def _commands(cluster: dict) -> list[str]:
    keys = ("setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return [c for k in keys for c in cluster.get(k, [])]


def _entry_points(text: str) -> tuple[set[str], set[str]]:
    """Python modules (``python -m X``, ``import X``, ``X:attr``) and ``ecgvlm`` subcommands named in text."""
    modules = set(re.findall(r"\b((?:pipelines|serving|ecg|vlm|metrics)(?:\.\w+)+)", text))
    subcommands = set(re.findall(r"(?:^|[\s`'\"])ecgvlm[ \t]+([a-z]+)\b", text, flags=re.M))
    return modules, subcommands


def _assert_entry_points_exist(text: str, where: str) -> None:
    modules, subcommands = _entry_points(text)
    for module in modules:
        name = module.split(":")[0]
        # "serving.app.build_app" names an attribute of a module: find the longest importable prefix.
        parts = name.split(".")
        found = any(importlib.util.find_spec(".".join(parts[:i])) for i in range(len(parts), 1, -1))
        assert found, f"{where} names {module}, which does not exist"
    for sub in subcommands:
        assert sub in COMMANDS, f"{where} names `ecgvlm {sub}`, not a subcommand ({sorted(COMMANDS)})"


def test_cluster_yaml_node_types_and_resources():
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    gpus = sorted(t["resources"]["GPU"] for t in gpu_types.values())
    assert gpus[0] == 1 and gpus[-1] > 1, f"a single-GPU and a multi-GPU worker type, got {gpus}"
    for name, t in gpu_types.items():
        assert t["min_workers"] == 0, f"{name} scales from zero"
        assert t["max_workers"] >= 1
        assert t["resources"]["CPU"] >= 4 * t["resources"]["GPU"], f"{name} has CPUs to feed its GPUs"
    assert cluster["max_workers"] >= sum(t["max_workers"] for t in gpu_types.values())
    assert cluster["provider"]["type"] == "aws"


def test_cluster_yaml_image_and_commands():
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    image = cluster["docker"]["image"]
    assert image.startswith("rayproject/ray:") and "gpu" in image and "ray-ml" not in image
    commands = "\n".join(_commands(cluster))
    assert "pip install" in commands and "/home/ray/ecgvlm" in commands
    assert cluster["file_mounts"]["/home/ray/ecgvlm"] == "."
    _assert_entry_points_exist(commands, "cluster.yaml")
    modules, _ = _entry_points(commands)
    assert modules, "setup checks that the entry points import"


def test_every_config_names_its_command_and_entry_points():
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert configs, "configs/ ships YAML files"
    for path in configs:
        text = path.read_text()
        first = text.splitlines()[0]
        assert first.startswith("#") and ("ecgvlm" in first or "serve run" in first or "python -m" in first), (
            f"{path.name} starts with the command that runs it, got {first!r}"
        )
        _assert_entry_points_exist(text, path.name)
        assert isinstance(yaml.safe_load(text), dict), f"{path.name} is a YAML mapping"


def test_serve_configs_validate():
    from serving.config import load_serve_yaml

    for path in [REPO / "serving" / "config.yaml", *sorted((REPO / "configs").glob("serve-*.yaml"))]:
        http, app = load_serve_yaml(path)
        assert http["port"] > 0 and app.predictor.max_replicas >= app.predictor.min_replicas, path.name


def test_cluster_has_ray_token_auth_and_no_open_dashboard_and_serving_needs_a_key():
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    assert "-e RAY_AUTH_MODE=token" in cluster["docker"]["run_options"]
    assert "/home/ray/.ray/auth_token" in cluster["file_mounts"]  # the token every node reads
    assert not any("0.0.0.0" in c for c in _commands(cluster)), "the dashboard/job API is reached by port forwarding"
    from serving.config import load_serve_yaml

    http, app = load_serve_yaml(REPO / "configs" / "serve-cluster.yaml")
    assert http["host"] == "0.0.0.0" and app.require_api_key and app.api_key_env == "ECGVLM_API_KEY"
