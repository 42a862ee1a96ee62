"""The endpoint stage (vlm/remote.py) against a local chat-completions server that misbehaves on purpose.

The server (http.server in a thread, real HTTP on 127.0.0.1) answers each record by a plan keyed on its image's
SHA-256: 429 with Retry-After, 500, a reply slower than the client's timeout, malformed JSON, an empty choice list
(each once, then a good answer), or a permanent failure (500 every time, a 400, empty every time). Every request
is counted at the server: the stage's own counts, the error rows and the cache are checked against it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ecg import samples
from ecg.rows import SAMPLE_SCHEMA

SMALL = samples.RenderOptions(width=400, height=310)
# plan per record index: the faults of its first attempts ("ok" answers), or a permanent failure
PLANS = ["ok", "ok", "429", "500", "timeout", "malformed", "empty", "always500", "400", "always_empty", "ok", "length"]
TIMEOUT_S = 0.5


class FaultServer:
    """A chat-completions server on a free port; ``plans``: image SHA-256 -> plan name; ``sent``: requests per plan."""

    def __init__(self, plans: dict[str, str]):
        self.plans, self.sent, self.lock = plans, {}, threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                server.requests.append(body)
                parts = body["messages"][0]["content"]
                url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
                plan = server.plans[hashlib.sha256(base64.b64decode(url.split(",", 1)[1])).hexdigest()]
                with server.lock:
                    attempt = server.sent.get(plan, 0)
                    server.sent[plan] = attempt + 1
                try:
                    server.answer(self, plan, attempt, body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
                    pass

        self.requests: list[dict] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @staticmethod
    def _send(handler, status: int, body: bytes, headers: dict | None = None) -> None:
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(body)))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(body)

    def answer(self, handler, plan: str, attempt: int, body: dict) -> None:
        first = attempt == 0  # plans are per record, and each record has its own plan
        def error(code, msg):
            return json.dumps({"error": {"message": msg, "type": "x", "code": code}}).encode()

        if plan == "429" and first:
            return self._send(handler, 429, error(429, "slow down"), {"Retry-After": "1"})
        if plan == "always500" or (plan == "500" and first):
            return self._send(handler, 500, error(500, "boom"))
        if plan == "400":
            return self._send(handler, 400, error(400, "image too large for this model"))
        if plan == "timeout" and first:
            time.sleep(TIMEOUT_S * 3)
            return self._send(handler, 200, b"{}")
        if plan == "malformed" and first:
            return self._send(handler, 200, b'{"id": "chatcmpl-1", "choices": [')
        reply = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
                 "choices": [{"index": 0, "finish_reason": "length" if plan == "length" else "stop",
                              "message": {"role": "assistant", "content": "SB; ST" if plan == "length" else "SB"}}],
                 "usage": {"prompt_tokens": 100, "completion_tokens": 2, "total_tokens": 102}}
        if plan == "always_empty" or (plan == "empty" and first):
            reply["choices"] = []
        return self._send(handler, 200, json.dumps(reply).encode())

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def sample_rows(n: int = len(PLANS)) -> pd.DataFrame:
    table = samples.synthetic_batch({"start": [0], "count": [n]}, seed=5, splits={"test": 1.0}, options=SMALL)
    return table.drop(["split"]).cast(SAMPLE_SCHEMA).to_pandas()


def plans_of(frame: pd.DataFrame) -> dict[str, str]:
    return {hashlib.sha256(img).hexdigest(): plan for img, plan in zip(frame["image"], PLANS)}


# what the plans must produce: attempts sent per record, and the cause named by a record that fails
ATTEMPTS = {"ok": 1, "429": 2, "500": 2, "timeout": 2, "malformed": 2, "empty": 2, "always500": 3, "400": 1,
            "always_empty": 3, "length": 1}
CAUSES = {"always500": "after 3 attempts: HTTP 500", "400": "after 1 attempt: HTTP 400",
          "always_empty": "after 3 attempts: empty choice list"}
STAGE = {"model": "fake-vlm", "retries": 2, "timeout_s": TIMEOUT_S, "backoff_s": 0.05, "concurrency": 4}


def test_stage_retries_reports_and_caches(tmp_path):
    from vlm.remote import EndpointStage

    frame = sample_rows()
    with FaultServer(plans_of(frame)) as server:
        stage = EndpointStage({**STAGE, "api_base": server.url, "cache": str(tmp_path / "cache")}, api_key="k",
                              budgets={"code15": 16})
        start = time.perf_counter()
        out = stage(frame)
        took = time.perf_counter() - start
        assert len(server.requests) == sum(ATTEMPTS[p] for p in PLANS) == 21  # counted at the server
        assert out["requests"].sum() == 21 and out["retries"].sum() == 21 - len(PLANS)
        assert took >= 1.0  # the 429's Retry-After: 1 was honoured
        for plan, row in zip(PLANS, out.to_dict("records")):
            assert row["requests"] == ATTEMPTS[plan], plan
            if plan in CAUSES:
                assert row["prediction"] == "" and row["id"] in row["error"] and CAUSES[plan] in row["error"], row
            else:
                assert pd.isna(row["error"]) and row["prediction"] == ("SB; ST" if plan == "length" else "SB"), row
                assert row["truncated"] == (plan == "length") and row["prompt_tokens"] == 100
                assert row["sent_prompt_tokens"] == 100 * (row["requests"] == ATTEMPTS[plan])
        assert list(out["id"]) == list(frame["id"]) and out["model"].eq("openai:fake-vlm").all()
        sent = server.requests[0]
        assert sent["max_tokens"] == 16 and sent["temperature"] == 0.0
        text, image = sent["messages"][0]["content"][1], sent["messages"][0]["content"][0]
        assert "<image>" not in text["text"] and text["text"] == frame["question"][0].replace("<image>", "").strip()
        assert image["image_url"]["detail"] == "low" and image["image_url"]["url"].startswith("data:image/png;base64,")

        # the same rows again, a new stage: answered records come from the cache; only the failures are asked
        again = EndpointStage({**STAGE, "api_base": server.url, "cache": str(tmp_path / "cache")}, api_key="k",
                              budgets={"code15": 16})(frame)
        assert len(server.requests) == 21 + sum(ATTEMPTS[p] for p in CAUSES)
        assert again["cache_hit"].sum() == len(PLANS) - len(CAUSES)
        assert (again["prediction"] == out["prediction"]).all() and again["error"].notna().sum() == len(CAUSES)
        # another budget is another request (decoding settings are part of the key)
        EndpointStage({**STAGE, "api_base": server.url, "cache": str(tmp_path / "cache")}, api_key="k",
                      budgets={"code15": 17})(frame.iloc[:1])
        assert len(server.requests) == 21 + 7 + 1


def test_rate_limiter_waits_for_request_and_token_budgets():
    from vlm.remote import RateLimiter

    now = [0.0]
    waits = []

    def sleep(s):
        waits.append(s)
        now[0] += s

    lim = RateLimiter(requests_per_min=2, tokens_per_min=600, clock=lambda: now[0], sleep=sleep)
    assert lim.acquire(100) == 0 and lim.acquire(100) == 0  # the bucket starts with a minute's allowance
    assert lim.acquire(100) == pytest.approx(30.0)  # 2/min: the third request waits half a minute
    lim.settle(100, 500)  # the reply said it took 500 tokens: 400 more than estimated
    # tokens: min(600, 400 + 30 s x 10/s) - 100 - 400 = 100 left; 500 needed -> 40 s (the request bucket needs 30)
    assert lim.acquire(500) == pytest.approx(40.0)
    # requests: 40 s refilled 1.33, one used -> 0.33 left; the next needs 20 s, longer than a 5 s pause
    lim.pause(5.0)
    assert lim.acquire(1) == pytest.approx(20.0)
    lim.pause(100.0)  # a Retry-After longer than any bucket's wait holds every request back
    assert lim.acquire(1) == pytest.approx(100.0)


def test_retry_after_forms_and_cache_key():
    from vlm.remote import build_messages, cache_key, retry_after_s

    assert retry_after_s({"retry-after": "3"}) == 3.0 and retry_after_s({"retry-after-ms": "250"}) == 0.25
    assert retry_after_s({}) is None and retry_after_s({"retry-after": "soon"}) is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    assert 55 <= retry_after_s({"retry-after": future}) <= 61
    png = sample_rows(1)["image"][0]
    sent, keyed = build_messages("<image>\nWhich rhythm?", png, detail="low")
    assert sent[0]["content"][1] == {"type": "text", "text": "Which rhythm?"}
    assert keyed[0]["content"][0]["image_url"] == {"sha256": hashlib.sha256(png).hexdigest(), "detail": "low"}
    key = cache_key("http://h/v1/", "m", keyed, {"max_tokens": 8, "temperature": 0.0})
    assert key == cache_key("http://h/v1", "m", keyed, {"temperature": 0.0, "max_tokens": 8})  # canonical form
    assert key != cache_key("http://h/v1", "m2", keyed, {"max_tokens": 8, "temperature": 0.0})
    assert key != cache_key("http://h/v1", "m", build_messages("Which?", png, detail="high")[1],
                            {"max_tokens": 8, "temperature": 0.0})
    with pytest.raises(ValueError, match="neither PNG nor JPEG"):
        build_messages("q", b"GIF89a...", detail=None)
    # a multi-turn record: its earlier turns first, the image in the first user turn only
    turns, _ = build_messages("And the rate?", png, detail="low",
                              history=[{"role": "user", "text": "<image>\nRhythm?"}, {"role": "assistant", "text": "AF"}])
    assert [m["role"] for m in turns] == ["user", "assistant", "user"]
    assert turns[0]["content"][0]["type"] == "image_url" and turns[0]["content"][1]["text"] == "Rhythm?"
    assert turns[1]["content"] == [{"type": "text", "text": "AF"}]
    assert turns[2]["content"] == [{"type": "text", "text": "And the rate?"}]


def _write(folder, frame: pd.DataFrame) -> None:
    import pyarrow as pa

    os.makedirs(folder, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, schema=SAMPLE_SCHEMA, preserve_index=False),
                   os.path.join(folder, "part-0.parquet"))


@pytest.mark.slow
def test_evaluate_cli_faults_every_id_once_and_a_rerun_sends_nothing(ray_cluster, tmp_path):
    from ecg import shards
    from pipelines import cli

    frame = sample_rows()
    _write(str(tmp_path / "data" / "test"), frame)
    out, cache = str(tmp_path / "eval"), str(tmp_path / "cache")
    with FaultServer(plans_of(frame)) as server:
        args = ["evaluate", "--model", "openai:fake-vlm", "--api-base", server.url, "--data", str(tmp_path / "data"),
                "--retries", "2", "--timeout-s", str(TIMEOUT_S), "--backoff-s", "0.05", "--concurrency", "4",
                "--decoding", "fast", "--cache", cache, "--batch-size", "6", "--price-input-per-mtok", "2.5",
                "--price-output-per-mtok", "10"]
        assert cli.main(args + ["--out", out]) == 0
        first = len(server.requests)
        assert first == 21
        preds = shards.read_predictions(os.path.join(out, "predictions"))
        ids, dups = shards.predicted_ids(os.path.join(out, "predictions"))
        assert dups == 0 and sorted(ids) == sorted(frame["id"]) and len(preds) == len(PLANS)
        rows = preds.set_index("id").loc[frame["id"]]
        for plan, (_, row) in zip(PLANS, rows.iterrows()):
            if plan in CAUSES:
                assert CAUSES[plan] in row["error"]
            else:
                assert pd.isna(row["error"]) and row["truncated"] == (plan == "length")
        run = json.load(open(os.path.join(out, "run.json")))
        ep = run["endpoint"]
        assert (ep["requests"], ep["retries"], ep["cache_hits"]) == (21, 21 - len(PLANS), 0)
        assert (ep["prompt_tokens"], ep["completion_tokens"]) == (9 * 100, 9 * 2)
        assert ep["cost_usd"] == pytest.approx((900 * 2.5 + 18 * 10) / 1e6)
        assert run["new_errors"] == len(CAUSES) and run["truncated"] == {"code15": 1}
        assert run["max_new_tokens"]["code15"] == 24 and run["decoding"] == "fast"
        report = open(os.path.join(out, "report.md")).read()
        assert "requests sent (retries) | 21 (9)" in report and "code15: 1" in report

        # rerun into the same --out: every id is there, nothing is sent
        assert cli.main(args + ["--out", out]) == 0
        assert len(server.requests) == first
        # a new --out with the same --cache: answered records come from the cache, only the failed ones are asked
        assert cli.main(args + ["--out", str(tmp_path / "eval2")]) == 0
        assert len(server.requests) == first + sum(ATTEMPTS[p] for p in CAUSES)
        ep2 = json.load(open(tmp_path / "eval2" / "run.json"))["endpoint"]
        assert ep2["cache_hits"] == len(PLANS) - len(CAUSES) and ep2["requests"] == 7


def test_evaluate_names_a_missing_api_base_or_key(tmp_path, capsys, monkeypatch):
    from pipelines import cli

    _write(str(tmp_path / "data" / "test"), sample_rows(1))
    base = ["evaluate", "--model", "openai:gpt-4o", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o")]
    assert cli.main(base) == 2 and "needs --api-base" in capsys.readouterr().err
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    assert cli.main(base + ["--api-base", "https://api.example.com/v1", "--api-key-env", "NO_SUCH_KEY"]) == 2
    assert "set $NO_SUCH_KEY" in capsys.readouterr().err and not (tmp_path / "o").exists()
