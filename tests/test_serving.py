"""The Serve application over real HTTP on 127.0.0.1 with the ``tiny`` model: one Serve start per module.

The server is ``ecgvlm serve`` itself (pipelines/serve.py, the golden CLI test): every input format gets
labels back, the ``openai`` client works unchanged, each bad input is a 4xx with a message while the replica
keeps serving, ``ecgvlm evaluate --model openai:tiny`` through it answers as the in-process model does, the
README's serving examples run as written, our Prometheus metrics are scraped, and Ctrl-C stops it cleanly (the last
test). The server start, the docs' examples and the scrape are in tests/serving_support.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import requests
from conftest import REPO
from serving_support import conversation, image_url, start_serve, stop_serve, wait_healthy, write_rows
from test_serving_inputs import bomb_png, page_png, signal_uploads

from ecg.record import STANDARD_LEADS
from ecgtasks import get_task

pytestmark = pytest.mark.slow
CODE15 = get_task("code15")
KEYS = ("old-key", "new-key")  # ECGVLM_API_KEY="old-key,new-key": two keys, as during a rotation (and the docs)
AUTH = {"Authorization": f"Bearer {KEYS[1]}"}
MAX_UPLOAD = 2_000_000  # bytes: small, so the oversized-upload test sends little


@pytest.fixture(scope="module")
def serve_process(tmp_path_factory):
    """``ecgvlm serve`` (the real CLI: local Ray with 2 CPUs, Serve on a free 127.0.0.1 port) with the tiny model
    exported as ``ecgvlm train`` writes it (``<tmp>/tiny/export``: served as "tiny"), batching on, one predictor
    replica, a 2 MB upload cap and Prometheus metrics on a free port, started as a background job (SIGINT ignored);
    yields (base URL, process, log path, signal uploads, metrics URL)."""
    import yaml

    import vlm

    tmp = tmp_path_factory.mktemp("serve")
    export = tmp / "tiny" / "export"
    vlm.export(vlm.load("tiny"), str(export))
    doc = yaml.safe_load((REPO / "serving" / "config.yaml").read_text())
    args = doc["applications"][0]["args"]
    args["limits"]["max_upload_bytes"] = MAX_UPLOAD
    args["batching"].update(max_batch_size=8, batch_wait_timeout_s=0.05)
    (tmp / "serve.yaml").write_text(yaml.safe_dump(doc))
    env = {**os.environ, "ECGVLM_API_KEY": ",".join(KEYS), "ECGVLM_VERBOSE": "1",  # its request log lines, read below
           "RAY_metrics_report_interval_ms": "1000"}  # metrics reach the scrape in about a second (default: 10)
    url, metrics_url, proc, log_path = start_serve(tmp, ["--config", str(tmp / "serve.yaml"), "--model", str(export),
                                                         "--max-replicas", "1"], env, sigint_ignored=True)
    try:
        uploads = signal_uploads(tmp)  # built while the server comes up
        wait_healthy(url, proc, log_path)
        yield url, proc, log_path, uploads, metrics_url
    finally:
        stop_serve(proc)  # test_ctrl_c_stops_the_server did not run or did not stop it


@pytest.fixture(scope="module")
def server(serve_process) -> str:
    return serve_process[0]


@pytest.fixture(scope="module")
def uploads(serve_process) -> dict:
    return serve_process[3]


def diagnose(url: str, files, fields=None) -> requests.Response:
    parts = [("file", (name, data)) for name, data in files]
    return requests.post(f"{url}/v1/diagnose", files=parts, data=fields or {}, timeout=120, headers=AUTH)


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
    models = requests.get(f"{server}/v1/models", timeout=10, headers=AUTH).json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
    tasks = {t["name"]: t for t in requests.get(f"{server}/v1/tasks", timeout=10, headers=AUTH).json()["data"]}
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
                        headers={"content-type": "image/png", **AUTH})  # curl --data-binary @ecg.png
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

    client = openai.OpenAI(base_url=f"{server}/v1", api_key=KEYS[0], max_retries=0, timeout=120)
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
    empty = requests.post(f"{server}/v1/diagnose", timeout=30, headers=AUTH)  # no body at all
    assert empty.status_code == 400 and "empty upload" in empty.json()["error"]["message"]
    not_json = requests.post(f"{server}/v1/chat/completions", data=b"{oops", timeout=30, headers=AUTH)
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]["message"]
    assert_diagnosis(diagnose(server, [("ecg.png", page_png())]), "png")  # still serving


def test_evaluate_through_the_endpoint_equals_the_in_process_model(server, ray_cluster, one_torch_thread, tmp_path):
    """``ecgvlm evaluate --model openai:tiny`` against this server: the same answers and truncation flags as the
    in-process tiny model (``vlm.predict_rows``, the function evaluate's actors run) on the same rows."""
    import vlm
    import pyarrow.parquet as pq

    from ecg import shards
    from pipelines import cli

    data = str(tmp_path / "data")
    ids = write_rows(data, 1)  # one row: the untrained tiny model decodes all 1024 tokens
    remote = ["evaluate", "--model", "openai:tiny", "--api-base", f"{server}/v1", "--out", str(tmp_path / "remote"),
              "--data", data]  # every default: --decoding ecgbench, 1024 new tokens
    os.environ["OPENAI_API_KEY"] = KEYS[0]  # the key as every OpenAI client reads it
    try:
        assert cli.main(remote) == 0
    finally:
        del os.environ["OPENAI_API_KEY"]
    served = shards.read_predictions(str(tmp_path / "remote" / "predictions")).set_index("id").sort_index()
    # the in-process model on the same rows, with the same budget: the function evaluate's actors run
    rows = pq.read_table(os.path.join(data, "test", "part-0.parquet")).to_pandas()
    local = vlm.predict_rows(vlm.Predictor("tiny"), rows, budgets={"code15": 1024}).set_index("id").sort_index()
    assert list(served.index) == sorted(ids) and served["error"].isna().all()
    assert (served["prediction"] == local["prediction"]).all(), pd.concat([local["prediction"], served["prediction"]], axis=1)
    assert (served["truncated"] == local["truncated"].astype(bool)).all()  # the same 1024-token budget cut alike
    assert (served["model"] == "openai:tiny").all() and served["label_scores"].isna().all()
    run = json.load(open(tmp_path / "remote" / "run.json"))
    assert run["endpoint"]["requests"] == 1 and run["endpoint"]["retries"] == 0
    assert run["endpoint"]["prompt_tokens"] > 49  # every prompt holds the page's 49 image tokens
    assert run["max_new_tokens"]["code15"] == 1024


def test_follow_up_turn_answers_as_evaluation_does(server):
    """The served answer to a follow-up equals the evaluation's answer to the same multi-turn row (meta history),
    with the same prompt length: the whole conversation went through the same prompt builder."""
    import openai
    import vlm

    png = page_png()
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=KEYS[1], max_retries=0, timeout=120)
    out = client.chat.completions.create(model="tiny", messages=conversation(png), max_tokens=16)
    row = pd.DataFrame([{"id": "r1", "task": "code15", "image": png, "question": "And the heart rate?",
                         "answer": "", "meta": json.dumps({"history": [
                             {"role": "user", "text": "Which rhythm is this?"}, {"role": "assistant", "text": "SB"}]})}])
    local = vlm.predict_rows(vlm.Predictor("tiny"), row, budgets={"code15": 16}).iloc[0]
    assert out.choices[0].message.content == local["prediction"]
    assert out.usage.prompt_tokens == int(local["prompt_tokens"])
    assert out.choices[0].finish_reason == ("length" if local["truncated"] else "stop")
    with pytest.raises(openai.BadRequestError, match="exactly one image_url part.*got 0"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])


def test_streaming_equals_non_streaming_with_usage_and_done(server):
    import openai

    async def run():
        client = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key=KEYS[0], max_retries=0, timeout=120)
        messages = conversation(page_png())
        whole = await client.chat.completions.create(model="tiny", messages=messages, max_tokens=24)
        stream = await client.chat.completions.create(model="tiny", messages=messages, max_tokens=24, stream=True,
                                                      stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        return whole, chunks

    whole, chunks = asyncio.run(run())
    assert all(c.object == "chat.completion.chunk" and c.model == "tiny" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and len([c for c in chunks if c.choices]) > 2
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    body = {"model": "tiny", "messages": conversation(page_png()), "max_tokens": 4, "stream": True}
    with requests.post(f"{server}/v1/chat/completions", json=body, headers=AUTH, stream=True, timeout=120) as raw:
        assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream")
        events = [line for line in raw.iter_lines(decode_unicode=True) if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    assert raw.headers.get("x-request-id")


def test_keys_401_and_healthz_open(serve_process):
    import openai

    server, _, log_path, *_ = serve_process
    messages = conversation(page_png())
    for key in (KEYS[0], KEYS[1]):  # both keys of a rotation work
        client = openai.OpenAI(base_url=f"{server}/v1", api_key=key, max_retries=0, timeout=120)
        assert client.chat.completions.create(model="tiny", messages=messages, max_tokens=2).choices
    wrong = openai.OpenAI(base_url=f"{server}/v1", api_key="not-" + KEYS[0], max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        wrong.chat.completions.create(model="tiny", messages=messages)
    none = requests.post(f"{server}/v1/chat/completions", json={"model": "tiny", "messages": messages}, timeout=60)
    assert none.status_code == 401 and none.json()["error"]["type"] == "authentication_error"
    assert "missing API key" in none.json()["error"]["message"]
    assert requests.get(f"{server}/v1/models", timeout=10).status_code == 401
    assert requests.get(f"{server}/healthz", timeout=60).status_code == 200  # load balancers need no key
    log = log_path.read_text()
    assert KEYS[0] not in log and KEYS[1] not in log and "Which rhythm is this?" not in log  # no keys, no bodies


def test_errors_in_openai_shape_and_not_an_ecg_page(server):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for method, path, status in (("get", "/v1/nothing", 404), ("get", "/v1/chat/completions", 405)):
        resp = getattr(requests, method)(f"{server}{path}", headers=AUTH, timeout=30)
        assert resp.status_code == status and resp.json()["error"]["code"] == status, resp.text
    fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
    ax.bar(range(6), [3, 1, 4, 1, 5, 9])
    chart = io.BytesIO()
    fig.savefig(chart, format="png")
    plt.close(fig)
    resp = diagnose(server, [("chart.png", chart.getvalue())])
    assert resp.status_code == 422 and "not an ECG page" in resp.json()["error"]["message"], resp.text
    body = {"model": "tiny", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image_url(chart.getvalue())}}]}]}
    resp = requests.post(f"{server}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert resp.status_code == 422 and "not an ECG page" in resp.json()["error"]["message"]


def test_concurrent_good_and_bad_requests_mixed(server):
    """24 requests at once through the async client, 8 of them bad: every good one 200, every bad one 4xx."""
    import openai

    png = page_png()
    good = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key=KEYS[1], max_retries=0, timeout=180)
    bad_key = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0, timeout=180)
    url_image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.org/e.png"}}]}]
    bad = [(bad_key, {}), (good, {"model": "gpt-4o"}), (good, {"messages": [{"role": "user", "content": "hi"}]}),
           (good, {"messages": url_image}), (good, {"max_tokens": 100_000}), (good, {"n": 2}),
           (good, {"messages": [{"role": "assistant", "content": "x"}]}), (bad_key, {"stream": True})]

    async def one(client, extra, stream):
        kw = {"model": "tiny", "messages": conversation(png), "max_tokens": 6, **extra}
        try:
            if kw.pop("stream", stream):
                return 200, "".join([c.choices[0].delta.content or "" async for c in
                                     await client.chat.completions.create(stream=True, **kw) if c.choices])
            return 200, (await client.chat.completions.create(**kw)).choices[0].message.content
        except openai.APIStatusError as err:
            return err.status_code, err.message

    async def run():
        jobs = [one(good, {}, i % 2 == 0) for i in range(16)] + [one(c, e, False) for c, e in bad]
        return await asyncio.gather(*jobs)

    results = asyncio.run(run())
    assert len(results) == 24
    assert [s for s, _ in results[:16]] == [200] * 16, results[:16]
    assert all(400 <= s < 500 for s, _ in results[16:]), results[16:]
    assert len({text for _, text in results[:16]}) == 1  # streamed or not, batched or not: the same answer


def test_a_client_that_disconnects_stops_its_generation(serve_process):
    server, _, log_path, *_ = serve_process
    body = {"model": "tiny", "messages": conversation(page_png()), "max_tokens": 1024, "stream": True}
    rid = "disconnect-test-1"
    with requests.post(f"{server}/v1/chat/completions", json=body, stream=True, timeout=120,
                       headers={**AUTH, "x-request-id": rid}) as resp:
        assert resp.headers["x-request-id"] == rid
        lines = resp.iter_lines()
        next(line for line in lines if line and b'"content":"' in line and b'"content":""' not in line)
    deadline = time.time() + 30  # the untrained tiny model runs to its 1024-token budget unless stopped
    while time.time() < deadline and f"chat {rid}: client went away" not in log_path.read_text():
        time.sleep(0.5)
    line = next(ln for ln in log_path.read_text().splitlines() if f"chat {rid}: client went away" in ln)
    assert int(line.split("after ")[1].split()[0]) < 1024
    assert f"request {rid} POST /v1/chat/completions 200" in log_path.read_text()


def test_the_readme_serving_examples_run_as_written(serve_process, tmp_path, monkeypatch):
    """The Python and curl client examples of the serving pages the README links to, read from the pages and run as
    written against this server, in a folder holding the files they open. Only the address they name moves to this
    server's port, and docs/serving.md's placeholder key ("unused") becomes a key; docs/serving-clients.md's key
    ("new-key", with ECGVLM_API_KEY="old-key,new-key") is this server's own. curl sends the key from a .curlrc."""
    from serving_support import run_curl_examples, run_python_examples, write_example_inputs

    write_example_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)  # the examples open ecg.png, page.png, ... from the current folder
    python = run_python_examples(serve_process[0], KEYS[1])
    assert len(python) >= 3 and all(printed.strip() for _, printed in python), python
    assert any("include_usage" in block and "completion_tokens=" in printed for block, printed in python)
    curl = run_curl_examples(serve_process[0], KEYS[1], tmp_path)
    assert len(curl) >= 4, curl  # an image, a CSV, a WFDB pair, an HDF5 exam
    for line, out in curl:
        answer = json.loads(out)
        assert answer["model"] == "tiny" and set(answer["labels"]) <= set(CODE15.labels), (line, answer)


def test_our_prometheus_metrics_are_scraped(serve_process):
    """Ray's metrics agent (``--metrics-port``) exports ours: requests by route and status, tokens generated, time to
    first token and queue time, each counting the requests this test sends."""
    from serving_support import scrape, total

    server, metrics_url = serve_process[0], serve_process[4]
    chat = {"model": "tiny", "messages": conversation(page_png()), "max_tokens": 4}
    assert requests.post(f"{server}/v1/chat/completions", json=chat, headers=AUTH, timeout=120).status_code == 200
    assert requests.post(f"{server}/v1/chat/completions", json=chat, timeout=60).status_code == 401  # no key
    assert diagnose(server, [("ecg.png", page_png())]).status_code == 200
    wanted = [("ray_ecgvlm_requests_total", {"route": "/v1/chat/completions", "status": "200"}),
              ("ray_ecgvlm_requests_total", {"route": "/v1/chat/completions", "status": "401"}),
              ("ray_ecgvlm_requests_total", {"route": "/v1/diagnose", "status": "200"}),
              ("ray_ecgvlm_tokens_generated_total", {}),
              ("ray_ecgvlm_time_to_first_token_seconds_count", {"route": "/v1/chat/completions"}),
              ("ray_ecgvlm_queue_seconds_count", {"method": "chat"}),
              ("ray_ecgvlm_queue_seconds_count", {"method": "diagnose"})]
    start = time.perf_counter()
    samples = scrape(metrics_url, lambda s: all(total(s, name, **labels) > 0 for name, labels in wanted))
    missing = [(name, labels) for name, labels in wanted if not total(samples, name, **labels) > 0]
    ours = sorted({name for name, _ in samples if "ecgvlm" in name})
    assert not missing, f"after {time.perf_counter() - start:.1f} s, missing {missing}; ecgvlm samples: {ours}"


def test_ctrl_c_stops_the_server(serve_process):
    url, proc, log_path, *_ = serve_process
    proc.send_signal(signal.SIGINT)  # Ctrl-C (kill -INT) to the CLI process alone, started as a background job
    assert proc.wait(timeout=90) == 0, log_path.read_text()[-3000:]
    assert "shutting down" in log_path.read_text()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/healthz", timeout=5)  # the port is free again
