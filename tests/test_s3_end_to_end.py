"""The whole job on object storage: prepare, train a few steps, evaluate and score with every artefact on S3.

A real S3 wire server (moto, 127.0.0.1) stands in for AWS; credentials and the endpoint reach every process
(the driver, Ray Data tasks, Ray Train workers, predictor actors) through the ordinary AWS variables.
"""

from __future__ import annotations

import json

import boto3
import pyarrow.parquet as pq
import pytest

from ecg import storage
from pipelines import evaluate, prepare, score, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(s3_server, ray_cluster):  # S3 first: Ray's workers inherit the AWS variables at start-up
    return s3_server


def _keys(endpoint: str, prefix: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="ecg", Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_prepare_train_evaluate_score_on_s3(cluster, capsys):
    shards, run, out = "s3://ecg/shards", "s3://ecg/runs/tiny", "s3://ecg/eval"
    assert prepare.main(["--source", "synthetic", "--n", "30", "--seed", "5",
                         "--split", "train=0.4,val=0.3,test=0.3", "--out", shards]) == 0
    manifest = json.loads(storage.read_text(f"{shards}/_manifest.json"))
    assert manifest["rows"] == 30 and manifest["failed"] == 0
    assert any(k.startswith("shards/train/") and k.endswith(".parquet") for k in _keys(cluster, "shards/"))

    assert train.main(["--model", "tiny", "--data", shards, "--out", run, "--max-steps", "4", "--batch-size", "4",
                       "--checkpoint-every", "2", "--validate-every", "4", "--val-rows", "4", "--log-every", "1"]) == 0
    run_keys = _keys(cluster, "runs/tiny/")
    assert any("/checkpoints/" in k for k in run_keys), run_keys[:20]
    export_files = {k.rsplit("/", 1)[-1] for k in run_keys if k.startswith("runs/tiny/export/")}
    assert {"config.json", "model.safetensors", "ecgvlm.json"} <= export_files, export_files  # LoRA merged

    assert evaluate.main(["--model", f"{run}/export", "--data", shards, "--split", "test", "--out", out,
                          "--batch-size", "4"]) == 0
    test_ids = set(pq.read_table("ecg/shards/test", filesystem=storage.s3_filesystem(), columns=["id"])
                   .column("id").to_pylist())
    fs, path = storage.resolve(f"{out}/predictions")
    predictions = pq.read_table(path, filesystem=fs)
    assert sorted(predictions.column("id").to_pylist()) == sorted(test_ids)
    metrics = json.loads(storage.read_text(f"{out}/metrics.json"))
    assert metrics["code15"]["n"] == len(test_ids)
    assert {"report.md", "report.html"} <= {k.rsplit("/", 1)[-1] for k in _keys(cluster, "eval/")}

    capsys.readouterr()
    assert score.main(["--task", "code15", "--references", f"{shards}/test", "--predictions", f"{out}/predictions",
                       "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["n"] == len(test_ids)
    assert scored["f1"] == metrics["code15"]["f1"]
