"""``ecgvlm evaluate`` with the tiny model on a local Ray cluster: rows, errors, metrics, kill and resume."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml

from ecg import samples, shards
from ecg.rows import SAMPLE_SCHEMA
from pipelines import cli
from pipelines.evaluate import EvaluateConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = samples.RenderOptions(width=550, height=425)


def _write_samples(folder: str, n: int, *, corrupt: bool, others: tuple[str, ...] = ()) -> list[str]:
    """``n`` synthetic sample rows in 2 shards under ``folder/test`` (+ one corrupt image row, + a row for each of
    ``others``: images that are not ECGs, by their name in test_ecg_pagegate.not_pages); their ids."""
    table = samples.synthetic_batch({"start": [0], "count": [n]}, seed=2, splits={"test": 1.0}, options=SMALL)
    table = table.drop(["split"]).cast(SAMPLE_SCHEMA)
    first = table.slice(0, 1).to_pylist()[0]
    extra = [first | {"id": "corrupt-0", "image": b"\x89PNG\r\n\x1a\n truncated"}] if corrupt else []
    if others:
        from test_ecg_pagegate import not_pages

        images = not_pages(1)
        extra += [first | {"id": name, "image": _png(images[name])} for name in others]
    if extra:
        table = pa.concat_tables([table, pa.Table.from_pylist(extra, schema=SAMPLE_SCHEMA)])
    os.makedirs(os.path.join(folder, "test"), exist_ok=True)
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), os.path.join(folder, "test", "part-0.parquet"))
    pq.write_table(table.slice(half), os.path.join(folder, "test", "part-1.parquet"))
    return table.column("id").to_pylist()


def _png(image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _prediction_ids(out: str) -> list[str]:
    from ecg import storage

    fs, _ = storage.resolve(out)
    files = storage.list_files(storage.join(out, "predictions"), ".parquet")
    return [i for f in files for i in pq.read_table(shards.strip_scheme(f), columns=["id"], filesystem=fs)
            .column("id").to_pylist()]


def test_evaluate_tiny_on_s3_rows_errors_metrics(ray_cluster, s3_server, tmp_path):
    from ecg import storage

    ids = _write_samples(str(tmp_path / "data"), 9, corrupt=True, others=("chart-bar-0",))
    storage.upload_dir(str(tmp_path / "data"), "s3://ecg/samples")
    data, out = "s3://ecg/samples", "s3://ecg/eval"
    store = f"file:{tmp_path / 'mlruns'}"
    assert cli.main(["evaluate", "--model", "tiny", "--data", data, "--out", out, "--batch-size", "4",
                     "--rows-per-shard", "4", "--progress-s", "0", "--tracking", store]) == 0
    assert sorted(_prediction_ids(out)) == sorted(ids)  # every row once, the corrupt one included
    fs, predictions = storage.resolve(storage.join(out, "predictions"))
    assert pads.dataset(predictions, filesystem=fs).count_rows() == 11  # a plain Parquet folder, no side files
    frame = shards.read_predictions(storage.join(out, "predictions"))
    bad = frame.set_index("id").loc["corrupt-0"]
    assert "corrupt-0" in bad["error"] and bad["prediction"] == ""
    assert frame["error"].notna().sum() == 1 and (frame["model"] == "tiny").all()
    # the page gate flags by default: the bar chart is predicted like every row, and marked as no ECG page
    gate = frame.set_index("id")[["page_score", "is_page", "error"]]
    assert gate.loc["chart-bar-0", "is_page"] == False and gate.loc["chart-bar-0", "page_score"] < 0.6  # noqa: E712
    assert pd.isna(gate.loc["chart-bar-0", "error"]) and pd.isna(gate.loc["corrupt-0", "is_page"])
    assert gate.drop(["chart-bar-0", "corrupt-0"])["is_page"].eq(True).all()  # every real page passed
    code15 = json.loads(storage.read_text(storage.join(out, "metrics.json")))["code15"]
    assert code15["n"] == 11 and code15["errors"] == 1
    assert code15["page_gate"] == {"checked": 10, "not_pages": 1}  # the corrupt image was not checked
    assert "1 of 10 images failed the ECG page gate" in " ".join(code15["warnings"])
    assert {"f1", "auc", "hamming_loss", "anls", "ecgbench", "strict"} <= set(code15)
    run = json.loads(storage.read_text(storage.join(out, "run.json")))
    assert (run["new_rows"], run["new_errors"], run["rows"], run["errors"], run["skipped"]) == (11, 1, 11, 1, 0)
    assert run["page_gate"] == {"mode": "flag", "threshold": 0.6, "checked": 10, "not_pages": 1}
    assert "| not an ECG page (flag, page gate) | 1 of 10 images |" in storage.read_text(storage.join(out, "report.md"))
    assert storage.exists(storage.join(out, "report.md")) and storage.exists(storage.join(out, "report.html"))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    (tracked,) = client.search_runs([client.get_experiment_by_name("ecgvlm-evaluate").experiment_id])
    assert tracked.data.metrics["code15/f1"] == pytest.approx(code15["f1"]) and tracked.data.metrics["errors"] == 1
    # progress logged while predicting (--progress-s 0: after every batch of 4), before the metrics
    progress = client.get_metric_history(tracked.info.run_id, "rows_done")
    done = [m.value for m in progress]
    assert len(set(done)) >= 3 and done == sorted(done) and done[-1] == 11, done  # 3 batches: 4 + 4 + 3 rows
    assert client.get_metric_history(tracked.info.run_id, "rows_failed")[-1].value == 1
    final = client.get_metric_history(tracked.info.run_id, "code15/f1")[-1].timestamp
    assert all(m.timestamp <= final for m in progress) and tracked.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(tracked.info.run_id)} >= {"config.json", "metrics.json", "report.md",
                                                                            "report.html"}
    # Nothing new to do on a rerun: every id is already predicted, and nothing is written twice.
    assert cli.main(["evaluate", "--model", "tiny", "--data", data, "--out", out]) == 0
    assert sorted(_prediction_ids(out)) == sorted(ids)
    # 1 error in 11 predictions: over a 5% bound the job exits 1, its metrics and report written all the same
    storage.write_text(storage.join(out, "metrics.json"), "{}")
    assert cli.main(["evaluate", "--model", "tiny", "--data", data, "--out", out, "--max-error-rate", "0.05"]) == 1
    assert json.loads(storage.read_text(storage.join(out, "metrics.json")))["code15"]["errors"] == 1


def test_killed_run_resumes_without_duplicates_or_gaps(ray_cluster, tmp_path):
    data, out = str(tmp_path / "data"), str(tmp_path / "eval")
    ids = _write_samples(data, 12, corrupt=False)
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    cmd = [sys.executable, "-m", "pipelines.evaluate", "--model", "tiny", "--data", data, "--out", out,
           "--batch-size", "1", "--rows-per-shard", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while not glob.glob(os.path.join(out, "predictions", "*.parquet")) and proc.poll() is None:
            assert time.time() < deadline, "no prediction shard within 120 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its process group, mid-run
    finally:
        proc.wait(timeout=30)
    first = _prediction_ids(out)
    assert 1 <= len(first) < len(ids), "the run should have been killed part-way"
    assert cli.main(["evaluate", "--model", "tiny", "--data", data, "--out", out, "--batch-size", "8"]) == 0
    after = _prediction_ids(out)
    assert len(after) == len(set(after)) == len(ids) and set(after) == set(ids)
    with open(os.path.join(out, "run.json")) as f:
        run = json.load(f)
    assert run["skipped"] == len(set(first)) and run["new_rows"] == len(ids) - len(set(first))


def test_shipped_evaluate_configs_load():
    for path in glob.glob(os.path.join(REPO, "configs", "evaluate-*.yaml")):
        with open(path) as f:
            first = f.readline()
            assert first.startswith("#") and ("ecgvlm evaluate" in first or "pipelines.evaluate" in first), path
            EvaluateConfig(**yaml.safe_load(f.read()))
    with pytest.raises(ValueError):
        EvaluateConfig(data="d", out="o", batch_szie=3)  # extra="forbid": a typo is an error


def test_results_name_their_data_and_page_gate_reject(ray_cluster, tmp_path):
    """metrics.json and the report say what the references are; ids the model trained on are warned about.
    ``--page-gate reject`` in the same run: a text page and a blank page are not predicted but kept as error rows
    "not an ECG page", counted in metrics and run.json; shards written before the gate's columns still score."""
    import vlm
    from ecg import manifest, provenance
    from metrics.score import score_predictions

    data, out, export = str(tmp_path / "data"), str(tmp_path / "eval"), str(tmp_path / "export")
    ids = _write_samples(data, 6, corrupt=False, others=("text-0", "blank-0"))
    manifest.write_manifest(data, {"source": "synthetic", "seed": 2, "config": {"pages": "varied"}})
    vlm.export(vlm.load("tiny"), export)
    provenance.write_training_ids(export, ids[:2] + ["another-row"], data="./elsewhere", split="train")
    assert cli.main(["evaluate", "--model", export, "--data", data, "--out", out, "--decoding", "fast",
                     "--page-gate", "reject"]) == 0
    code15 = json.loads(open(os.path.join(out, "metrics.json")).read())["code15"]
    assert code15["data"]["label"] == "synthetic ECGs (ecg.synth, seed 2), varied pages, test split"
    assert code15["data"]["real"] is False and code15["training_overlap"]["n"] == 2
    assert any("2 of 8 evaluation ids were in the model's training data" in w for w in code15["warnings"])
    report = open(os.path.join(out, "report.md")).read()
    assert "NOT CODE-15 data: synthetic ECGs" in report and "2 of 8 evaluation ids" in report
    assert "| not an ECG page (reject, page gate) | 2 of 8 images |" in report
    frame = shards.read_predictions(os.path.join(out, "predictions")).set_index("id")
    assert sorted(frame.index) == sorted(ids)  # refused rows are recorded, not dropped
    for name in ("text-0", "blank-0"):
        row = frame.loc[name]
        assert row["error"].startswith(f"record {name}: not an ECG page (page score ") and row["prediction"] == ""
        assert row["is_page"] == False  # noqa: E712
    real = frame.drop(["text-0", "blank-0"])
    assert real["error"].isna().all() and real["is_page"].eq(True).all() and (real["page_score"] >= 0.6).all()
    assert code15["errors"] == 2 and code15["page_gate"] == {"checked": 8, "not_pages": 2}
    run = json.load(open(os.path.join(out, "run.json")))
    assert run["new_errors"] == 2 and run["page_gate"] == {"mode": "reject", "threshold": 0.6, "checked": 8,
                                                           "not_pages": 2}
    # an older prediction file, without page_score / is_page: scored as before, nothing checked
    old = tmp_path / "old"
    old.mkdir()
    for f in glob.glob(os.path.join(out, "predictions", "*.parquet")):
        pq.write_table(pq.read_table(f).drop(["page_score", "is_page"]), old / os.path.basename(f))
    results, totals = score_predictions(str(old), protocol="both")
    assert totals["rows"] == 8 and results["code15"]["errors"] == 2
    assert results["code15"]["page_gate"] == {"checked": 0, "not_pages": 0}
    assert results["code15"]["f1"] == code15["f1"]
