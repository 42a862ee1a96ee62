"""The Serve application over real HTTP on 127.0.0.1 with the ``tiny`` model: one Serve start per module.

The server is ``ecgvlm serve`` itself (pipelines/serve.py, the golden CLI test): every input format gets
labels back, the ``openai`` client works unchanged, each bad input is a 4xx with a message while the replica
keeps serving, ``ecgvlm evaluate --model openai:tiny`` through it answers as the in-process model does, and
Ctrl-C stops it cleanly (the last test).
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import requests
from conftest import REPO, free_port
from test_serving_inputs import bomb_png, page_png, signal_uploads

from ecg.record import STANDARD_LEADS
from ecgtasks import get_task

pytestmark = pytest.mark.slow
CODE15 = get_task("code15")
MAX_UPLOAD = 2_000_000  # bytes: small, so the oversized-upload test sends little


@pytest.fixture(scope="module")
def serve_process(tmp_path_factory):
    """``ecgvlm serve`` (the real CLI: local Ray with 2 CPUs, Serve on a free 127.0.0.1 port) with the tiny model,
    batching on, one predictor replica and a 2 MB upload cap; yields (base URL, process, log path, signal uploads)."""
    import yaml

    tmp = tmp_path_factory.mktemp("serve")
    doc = yaml.safe_load((REPO / "serving" / "config.yaml").read_text())
    args = doc["applications"][0]["args"]
    args["limits"]["max_upload_bytes"] = MAX_UPLOAD
    args["batching"].update(max_batch_size=8, batch_wait_timeout_s=0.05)
    (tmp / "serve.yaml").write_text(yaml.safe_dump(doc))
    port, log_path = free_port(), tmp / "serve.log"
    cmd = [sys.executable, "-m", "pipelines.cli", "serve", "--config", str(tmp / "serve.yaml"), "--model", "tiny",
           "--host", "127.0.0.1", "--port", str(port), "--max-replicas", "1"]
    with open(log_path, "w") as log:
        # its own session: if a test fails midway, killing the group ends everything it started
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        uploads = signal_uploads(tmp)  # built while the server comes up
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            try:
                if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        assert proc.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
        yield url, proc, log_path, uploads
    finally:
        if proc.poll() is None:  # test_ctrl_c_stops_the_server did not run or did not stop it
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def server(serve_process) -> str:
    return serve_process[0]


@pytest.fixture(scope="module")
def uploads(serve_process) -> dict:
    return serve_process[3]


def diagnose(url: str, files, fields=None) -> requests.Response:
    parts = [("file", (name, data)) for name, data in files]
    return requests.post(f"{url}/v1/diagnose", files=parts, data=fields or {}, timeout=120)


def assert_diagnosis(resp: requests.Response, kind: str) -> dict:
    assert resp.status_code == 200, (kind, resp.status_code, resp.text[:500])
    out = resp.json()
    assert out["model"] == "tiny" and out["task"] == "code15" and out["input"]["kind"] == kind
    assert isinstance(out["answer"], str) and set(out["labels"]) <= set(CODE15.labels)
    assert set(out["label_scores"]) == set(CODE15.labels)  # a probability for every label
    assert all(0.0 <= p <= 1.0 for p in out["label_scores"].values())
    assert out["latency_ms"] > 0 and out["batch_size"] >= 1
    return out


def test_health_models_tasks(server):
    health = requests.get(f"{server}/healthz", timeout=60).json()
    assert health["status"] == "ok" and health["model"] == "tiny" and health["max_batch_size"] == 8
    models = requests.get(f"{server}/v1/models", timeout=10).json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
    tasks = {t["name"]: t for t in requests.get(f"{server}/v1/tasks", timeout=10).json()["data"]}
    assert tasks["code15"]["kind"] == "multilabel" and tasks["code15"]["labels"] == list(CODE15.labels)


def test_image_and_every_signal_format_get_labels(server, uploads):
    png = page_png()
    jpeg = io.BytesIO()
    from PIL import Image

    Image.open(io.BytesIO(png)).convert("RGB").save(jpeg, format="JPEG", quality=90)
    jobs = {"png": ([("ecg.png", png)], {}), "jpeg": ([("ecg.jpg", jpeg.getvalue())], {}), **uploads}
    with ThreadPoolExecutor(len(jobs)) as pool:  # sent together: the predictor batches them
        futures = {kind: pool.submit(diagnose, server, *job) for kind, job in jobs.items()}
        results = {kind: assert_diagnosis(f.result(), kind) for kind, f in futures.items()}
    assert results["npy"]["input"] == {"kind": "npy", "leads": 12, "lead_names": list(STANDARD_LEADS),
                                       "fs": 500.0, "seconds": 10.0}
    assert max(r["batch_size"] for r in results.values()) > 1  # concurrent requests shared a model call
    raw = requests.post(f"{server}/v1/diagnose?task=code15", data=png, timeout=120,
                        headers={"content-type": "image/png"})  # curl --data-binary @ecg.png
    assert_diagnosis(raw, "png")


def test_clinical_exports_get_labels(server, real_ecgs):
    """Each real export (DICOM, MUSE, CardioSoft, Sierra) and an aECG, sent together; the device's statements come
    back in ``input``, beside the model's answer, and never went into the question."""
    from test_serving_inputs import clinical_uploads

    jobs = clinical_uploads(real_ecgs)
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {fmt: pool.submit(diagnose, server, [job]) for fmt, job in jobs.items()}
        for fmt, future in futures.items():
            out = assert_diagnosis(future.result(), "dicom" if fmt == "dicom" else "xml")
            assert out["input"]["format"] == fmt and out["input"]["statements"] and out["input"]["leads"] == 12
    assert diagnose(server, [("x.xml", b"<Invoice/>")]).status_code == 422


def test_openai_client_chat_completion(server):
    import openai

    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)
    url = "data:image/png;base64," + base64.b64encode(page_png()).decode()
    messages = [{"role": "user", "content": [{"type": "text", "text": "Which rhythm is this?"},
                                             {"type": "image_url", "image_url": {"url": url}}]}]
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5)
    assert out.object == "chat.completion" and out.model == "tiny" and out.id.startswith("chatcmpl-")
    choice = out.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length") and out.usage.completion_tokens <= 5
    assert out.usage.prompt_tokens > 49  # the question's tokens plus 49 image tokens
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4o", messages=messages)
    with pytest.raises(openai.BadRequestError, match="URLs are not fetched"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/ecg.png"}}]}])


def test_bad_inputs_get_4xx_and_the_replica_keeps_serving(server, uploads):
    (csv_name, csv), = uploads["csv"][0]
    five_leads = np.zeros((5, 5000), np.float32)
    npy = io.BytesIO()
    np.save(npy, five_leads)
    cases = {
        "not an image, not a signal": (415, "neither a PNG/JPEG image nor a signal",
                                       [("x.bin", b"\x00\x01garbage\xff" * 10)], {}),
        "decompression bomb": (413, "decompression bomb", [("bomb.png", bomb_png())], {}),
        "over the pixel limit": (413, "6000x6000 = 36000000 pixels", [("big.png", bomb_png(6000, 6000))], {}),
        "wrong lead count (CSV)": (422, "signal has 5 leads", [(csv_name, csv)],
                                   {"sampling_rate": "500", "leads": "I,II,III,aVR,aVL"}),
        "wrong lead count (npy)": (422, "no axis of 12 leads", [("x.npy", npy.getvalue())], {"fs": "500"}),
        "impossible sampling rate": (422, "sampling_rate 0.0 Hz is impossible", [(csv_name, csv)],
                                     {"sampling_rate": "0"}),
        "empty file": (400, "empty", [("ecg.png", b"")], {}),
        "oversized upload": (413, f"over the limit of {MAX_UPLOAD} bytes",
                             [("big.csv", b"1," * (MAX_UPLOAD // 2 + 10))], {"fs": "500"}),
    }
    for what, (status, message, files, fields) in cases.items():
        resp = diagnose(server, files, fields)
        assert resp.status_code == status, (what, resp.status_code, resp.text[:300])
        assert message in resp.json()["error"]["message"], (what, resp.json())
    empty = requests.post(f"{server}/v1/diagnose", timeout=30)  # no body at all
    assert empty.status_code == 400 and "empty upload" in empty.json()["error"]["message"]
    not_json = requests.post(f"{server}/v1/chat/completions", data=b"{oops", timeout=30)
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]["message"]
    assert_diagnosis(diagnose(server, [("ecg.png", page_png())]), "png")  # still serving


def _samples(folder, n: int) -> list[str]:
    import pyarrow.parquet as pq

    from ecg import samples
    from ecg.rows import SAMPLE_SCHEMA

    table = samples.synthetic_batch({"start": [0], "count": [n]}, seed=3, splits={"test": 1.0},
                                    options=samples.RenderOptions(width=550, height=425))
    table = table.drop(["split"]).cast(SAMPLE_SCHEMA)
    os.makedirs(os.path.join(folder, "test"), exist_ok=True)
    pq.write_table(table, os.path.join(folder, "test", "part-0.parquet"))
    return table.column("id").to_pylist()


def _predictions(out: str):
    from ecg import shards

    return shards.read_predictions(os.path.join(out, "predictions")).set_index("id").sort_index()


def test_evaluate_through_the_endpoint_equals_the_in_process_model(server, ray_cluster, one_torch_thread, tmp_path):
    """``ecgvlm evaluate --model openai:tiny`` against this server: the same answers and truncation flags as the
    in-process tiny model (``vlm.predict_rows``, the function evaluate's actors run) on the same rows."""
    import vlm
    import pyarrow.parquet as pq

    from pipelines import cli

    data = str(tmp_path / "data")
    ids = _samples(data, 8)
    remote = ["evaluate", "--model", "openai:tiny", "--api-base", f"{server}/v1", "--out", str(tmp_path / "remote"),
              "--data", data, "--decoding", "fast", "--batch-size", "4", "--max-new-tokens", "code15=12"]
    assert cli.main(remote) == 0
    served = _predictions(str(tmp_path / "remote"))
    # the in-process model on the same rows, with the same budget: the function evaluate's actors run
    rows = pq.read_table(os.path.join(data, "test", "part-0.parquet")).to_pandas()
    local = vlm.predict_rows(vlm.Predictor("tiny"), rows, budgets={"code15": 12}).set_index("id").sort_index()
    assert list(served.index) == sorted(ids) and served["error"].isna().all()
    assert (served["prediction"] == local["prediction"]).all(), pd.concat([local["prediction"], served["prediction"]], axis=1)
    assert (served["truncated"] == local["truncated"].astype(bool)).all()  # the same 12-token budget cut alike
    assert (served["model"] == "openai:tiny").all() and served["label_scores"].isna().all()
    run = json.load(open(tmp_path / "remote" / "run.json"))
    assert run["endpoint"]["requests"] == 8 and run["endpoint"]["retries"] == 0
    assert run["endpoint"]["prompt_tokens"] > 8 * 49  # every prompt holds the page's 49 image tokens
    assert run["max_new_tokens"]["code15"] == 12 and run["truncated"]["code15"] == int(local["truncated"].sum())


def test_ctrl_c_stops_the_server(serve_process):
    url, proc, log_path, _ = serve_process
    proc.send_signal(signal.SIGINT)  # Ctrl-C to the CLI process alone
    assert proc.wait(timeout=90) == 0, log_path.read_text()[-3000:]
    assert "shutting down" in log_path.read_text()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/healthz", timeout=5)  # the port is free again
