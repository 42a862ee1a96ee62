"""``ray job submit`` of the batch re-evaluation to a standalone local cluster, as users do on a real one.

Starts ``ray start --head --block`` on 127.0.0.1 as a child process, prepares shards with a driver (this process)
that connects through RAY_ADDRESS, submits ``python -m pipelines.evaluate`` with ``--working-dir .``, waits,
checks the job's outputs, and stops the cluster with SIGINT (its processes all go with it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import REPO, free_port

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _env(**extra) -> dict:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def _wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {timeout} s")


@pytest.fixture(scope="module")
def head():
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    port, dashboard = free_port(), free_port()
    log = open(os.path.join(temp, "head.log"), "w")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", f"--port={port}", f"--dashboard-port={dashboard}", f"--temp-dir={temp}",
         # Every port explicit: another Ray on this machine must not collide with the job agent's.
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
         "--disable-usage-stats"],
        env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _wait_http(f"http://127.0.0.1:{dashboard}/api/version", 120, proc)
        yield {"gcs": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard}"}
    finally:
        proc.send_signal(signal.SIGINT)  # `ray stop` would end every Ray process on the machine
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_submitted_evaluation_writes_predictions_and_metrics(head, tmp_path, monkeypatch):
    import ray

    from pipelines import prepare

    data, out = tmp_path / "shards", tmp_path / "eval"
    if ray.is_initialized():  # a Ray that an earlier module left: this driver connects to the head instead
        ray.shutdown()
    monkeypatch.setenv("RAY_ADDRESS", head["gcs"])  # in this process: an interpreter start and imports fewer
    assert prepare.main(["--source", "synthetic", "--n", "16", "--seed", "3", "--split", "train=0.5,test=0.5",
                         "--out", str(data)]) == 0
    assert not ray.is_initialized(), "prepare disconnects the driver it connected"
    monkeypatch.delenv("RAY_ADDRESS")
    test_ids = set(pq.read_table(data / "test", columns=["id"]).column("id").to_pylist())
    assert test_ids

    for attempt in range(12):  # the head's job agent comes up some seconds after the dashboard answers
        submission = f"ecgvlm-eval-{os.getpid()}-{attempt}"
        done = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", head["dashboard"], "--working-dir", ".",
             "--submission-id", submission, "--",
             "python", "-m", "pipelines.evaluate", "--model", "tiny", "--data", str(data), "--split", "test",
             "--out", str(out), "--batch-size", "4"],
            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600,
        )
        if "No available agent" not in done.stderr + done.stdout:
            break
        time.sleep(5)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    from ray.job_submission import JobStatus, JobSubmissionClient

    assert JobSubmissionClient(head["dashboard"]).get_job_status(submission) == JobStatus.SUCCEEDED
    predictions = pq.read_table(out / "predictions")
    assert set(predictions.column("id").to_pylist()) == test_ids
    assert predictions.num_rows == len(test_ids), "each id predicted once"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["code15"]["n"] == len(test_ids)
    assert (out / "report.html").exists()
