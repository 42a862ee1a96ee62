"""Every shipped config can be scheduled where its first line runs it: `ecgvlm ...` or `serve run` on a 2-core laptop with
no GPU (the embedded default), `ray job submit` and the *-cluster files on cluster.yaml's node types. And a job whose request can
never fit the local Ray it would start stops at once with a message naming the fields, instead of waiting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipelines import launch
from pipelines.evaluate import EvaluateConfig
from pipelines.serve import ServeJob
from pipelines.train import TrainConfig, parse_config
from serving.config import load_serve_yaml

REPO = Path(__file__).resolve().parents[1]
LAPTOP = [{"CPU": 2.0, "GPU": 0.0, "memory": 8 * 2**30}]  # the smallest machine the product runs on end to end


def _cluster_nodes() -> list[dict]:
    """Every node cluster.yaml can have at once: the head and each worker type at its max_workers."""
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    nodes = []
    for name, t in cluster["available_node_types"].items():
        count = 1 if name == cluster["head_node_type"] else t["max_workers"]
        nodes += [{"CPU": float(t["resources"].get("CPU", 0)), "GPU": float(t["resources"].get("GPU", 0)),
                   "memory": float("inf")}] * count
    return nodes


def _bundles(path: Path) -> tuple[str, list[dict]]:
    """``(where, bundles)`` of a config file: where its first line runs it, and what it asks Ray for."""
    first = path.read_text().splitlines()[0]
    where = "cluster" if "ray job submit" in first or "cluster" in path.name else "local"
    doc = yaml.safe_load(path.read_text()) or {}
    job = re.search(r"(?:ecgvlm |pipelines\.)(\w+)", first)
    kind = job.group(1) if job else ("serve" if "applications" in doc else "")
    if kind == "train":
        return where, parse_config(["--config", str(path), "--data", "d", "--out", "o"]).bundles()
    if kind == "evaluate":
        return where, EvaluateConfig(**{"data": "d", "out": "o", **doc}).bundles()
    if kind == "prepare":
        return where, [{"CPU": float(doc.get("num_cpus", 1.0))}]
    if kind == "serve" or first.startswith("# serve run"):
        http, app = load_serve_yaml(path)
        return where, ServeJob(app=app).bundles()
    raise AssertionError(f"{path.name}: first line names no job: {first}")


CONFIGS = sorted((REPO / "configs").glob("*.yaml")) + [REPO / "serving" / "config.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_fits_where_its_first_line_runs_it(path):
    where, bundles = _bundles(path)
    nodes = LAPTOP if where == "local" else _cluster_nodes()
    ok, why = launch.fits(bundles, nodes)
    assert ok, f"{path.name} ({where}): {why}"
    if where == "cluster":  # a cluster job that would also fit the laptop is misfiled, or asks for too little
        assert any(b.get("GPU", 0) > 0 for b in bundles), f"{path.name}: a cluster job that uses no GPU"


def test_fits_places_bundles_first_fit_and_names_the_one_that_does_not_fit():
    four_gpu = [{"CPU": 8, "GPU": 1}] * 4
    assert launch.fits(four_gpu, [{"CPU": 48, "GPU": 4}]) == (True, "")
    assert launch.fits(four_gpu, [{"CPU": 8, "GPU": 1}] * 4)[0]  # spread over four single-GPU nodes
    assert launch.fits(four_gpu + [{"CPU": 1}], [{"CPU": 33, "GPU": 4}])[0]  # 33 - 4 x 8 leaves exactly 1
    ok, why = launch.fits(four_gpu + [{"CPU": 1}], [{"CPU": 32.5, "GPU": 4}])
    assert not ok and "bundle 5 needs {CPU 1}" in why
    ok, why = launch.fits([{"CPU": 4, "GPU": 1}], LAPTOP)
    assert not ok and "CPU 4, GPU 1" in why and "CPU 2" in why
    assert launch.fits([{"CPU": 0.5}] * 4, LAPTOP)[0] and not launch.fits([{"CPU": 0.5}] * 5, LAPTOP)[0]


def test_a_gpu_config_run_locally_without_a_gpu_stops_at_once_naming_the_fields(tmp_path, monkeypatch):
    import ray
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the config fits here")
    assert not ray.is_initialized()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    from pipelines import train

    import pyarrow.parquet as pq

    from ecg.rows import SAMPLE_SCHEMA

    (tmp_path / "d" / "train").mkdir(parents=True)  # real (empty) shards: the path checks pass, the schedule decides
    pq.write_table(SAMPLE_SCHEMA.empty_table(), tmp_path / "d" / "train" / "part-0.parquet")
    with pytest.raises(SystemExit) as stop:
        train.main(["--config", str(REPO / "configs/train-smolvlm-lora.yaml"), "--data", str(tmp_path / "d"),
                    "--out", str(tmp_path / "o"), "--model", "tiny"])  # the hub id is not cached offline
    message = str(stop.value)
    assert "cannot be scheduled" in message and "GPU 1" in message and "use_gpu" in message
    assert not ray.is_initialized()  # nothing was started
