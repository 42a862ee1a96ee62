"""Load test of the Serve app: N concurrent clients on 127.0.0.1, dynamic batching on vs off (and the vLLM
engine's continuous batching with ``--modes on,off,vllm``), in one run.

Starts a local Ray (2 CPUs) and Serve on a free port and deploys ``serving.app:build_app`` once per mode,
batching on at /on, off at /off and ``engine: vllm`` at /vllm (needs vLLM and a folder or ``random:DIR`` model),
one predictor replica each (no autoscaling: the ratio measures batching alone).
``--clients`` threads each POST the same upload to /v1/diagnose back to back for ``--seconds``; the
measured windows alternate between the two apps for ``--rounds`` rounds, so a busy machine's changing load
hits both alike. Prints requests/s, p50/p95/p99 latency, errors and the mean batch size per mode, then the
throughput ratio of each mode to batching off.

    python benchmarks/serve_load.py --model tiny --clients 16 --seconds 10 --rounds 3
    python benchmarks/serve_load.py --payload csv      # signal upload: adds parsing + rendering per request
    .venv-vllm/bin/python benchmarks/serve_load.py --model random:../shared/models/SmolVLM-256M-Instruct \
        --modes on,off,vllm
    python benchmarks/serve_load.py --chat --max-tokens 32   # chat completions: streamed vs not, time to first token

``--chat`` drives /v1/chat/completions on one app (batching on) instead, alternating windows of streamed
(``stream=true``) and non-streamed requests: time to first token (first content chunk; a non-streamed answer's
first token arrives with the whole answer), full latency, and the streamed / non-streamed throughput ratio.

Example output (figures depend on the machine and its load)::

    batching  clients  requests  req/s  p50_ms  p95_ms  p99_ms  errors  mean_batch
    on             16       ...
    off            16       ...
    batching on / off throughput: 3.2x
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def payload(kind: str) -> tuple[list, dict]:
    """(multipart files, form fields) of one synthetic 12-lead ECG as a PNG page or a CSV signal."""
    from ecg.samples import RenderOptions, render_bytes
    from ecg.synth import generate

    rec = next(generate(1, seed=7))  # (12, 5000) mV at 500 Hz
    if kind == "png":
        return [("file", ("ecg.png", render_bytes(rec, RenderOptions()), "image/png"))], {}
    import pandas as pd

    csv = pd.DataFrame(rec.signal.T, columns=list(rec.leads)).to_csv(index=False, float_format="%.4f")
    return [("file", ("ecg.csv", csv.encode(), "text/csv"))], {"sampling_rate": "500"}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; NaN for no values. Example: percentile([1, 2, 3], 50) == 2."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n q / 100), at least 1
    return ordered[int(rank) - 1]


def run_clients(client, clients: int) -> float:
    """Run ``client`` on ``clients`` threads until each returns; the wall seconds it took."""
    start = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def drive(url: str, clients: int, seconds: float, files, fields) -> dict:
    """``clients`` threads POST back to back until ``seconds`` have passed.

    Returns raw figures: ``latencies`` (ms) and ``batches`` (the server's batch size) of the successful
    requests, ``errors`` (one entry per failed request) and ``elapsed`` (s, until the last request ended).
    """
    import requests

    latencies, batches, errors, lock = [], [], [], threading.Lock()
    deadline = time.perf_counter() + seconds

    def client():
        session = requests.Session()
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                resp = session.post(f"{url}/v1/diagnose", files=files, data=fields, timeout=300)
                ok, body = resp.status_code == 200, resp.json() if resp.status_code == 200 else resp.text[:200]
            except Exception as err:  # noqa: BLE001 - a failed request is counted, not fatal
                ok, body = False, repr(err)
            with lock:
                if ok:
                    latencies.append((time.perf_counter() - t0) * 1000)
                    batches.append(body.get("batch_size", 1))
                else:
                    errors.append(body)

    elapsed = run_clients(client, clients)
    return {"latencies": latencies, "batches": batches, "errors": errors, "elapsed": elapsed}


def drive_chat(url: str, clients: int, seconds: float, png: bytes, *, stream: bool, max_tokens: int) -> dict:
    """``clients`` threads send chat completions back to back for ``seconds``; per request the time to the first
    content token (ms; the whole answer when not streamed) and the full latency (ms)."""
    import base64

    import requests

    image = "data:image/png;base64," + base64.b64encode(png).decode()
    body = {"model": "tiny", "max_tokens": max_tokens, "stream": stream, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "Which rhythm is this?"}]}]}
    latencies, firsts, errors, lock = [], [], [], threading.Lock()
    deadline = time.perf_counter() + seconds

    def client():
        session = requests.Session()
        while time.perf_counter() < deadline:
            t0, first, ok = time.perf_counter(), None, False
            try:
                with session.post(f"{url}/v1/chat/completions", json=body, stream=stream, timeout=300) as resp:
                    ok = resp.status_code == 200
                    if ok and stream:
                        for line in resp.iter_lines():
                            if first is None and b'"content":"' in line and b'"content":""' not in line:
                                first = time.perf_counter()
                    elif ok:
                        resp.json()
            except Exception:  # noqa: BLE001 - a failed request is counted, not fatal
                ok = False
            end = time.perf_counter()
            with lock:
                if ok:
                    latencies.append((end - t0) * 1000)
                    firsts.append(((first or end) - t0) * 1000)
                else:
                    errors.append("status")

    elapsed = run_clients(client, clients)
    return {"latencies": latencies, "batches": [1] * len(latencies), "firsts": firsts, "errors": errors,
            "elapsed": elapsed}


def chat_main(args) -> int:
    """Streamed vs non-streamed chat completions on one app: time to first token, latency, throughput."""
    import ray
    from ray import serve

    from serving.app import build_app

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import free_port

    png = payload("png")[0][0][1][1]
    port = free_port()
    url, runs = f"http://127.0.0.1:{port}/chat", {"stream": [], "whole": []}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        cfg = {"model": args.model, "predictor": {"num_cpus": 1.5, "min_replicas": 1, "max_replicas": 1},
               "ingress": {"num_cpus": 0.1}, "batching": {"max_batch_size": args.max_batch_size,
                                                          "batch_wait_timeout_s": args.batch_wait_s}}
        serve.run(build_app(cfg), name="ecgvlm-chat", route_prefix="/chat")
        wait_healthy(url)
        for mode in runs:  # warm both paths
            drive_chat(url, args.clients, args.warmup, png, stream=mode == "stream", max_tokens=args.max_tokens)
        for i in range(args.rounds):
            for mode in (list(runs) if i % 2 == 0 else list(runs)[::-1]):
                runs[mode].append(drive_chat(url, args.clients, args.seconds, png, stream=mode == "stream",
                                             max_tokens=args.max_tokens))
    finally:
        serve.shutdown()
        ray.shutdown()
    print(f"model={args.model} chat max_tokens={args.max_tokens} clients={args.clients} rounds={args.rounds}x"
          f"{args.seconds}s cpus={os.cpu_count()} load_avg_1min={os.getloadavg()[0]:.1f}")
    print(f"{'mode':<8}  {'requests':>8}  {'req/s':>7}  {'ttft_p50':>8}  {'ttft_p95':>8}  {'p50_ms':>8}  "
          f"{'p95_ms':>8}  {'errors':>6}")
    out = {}
    for mode, r in runs.items():
        sm, firsts = summarize(r, args.clients), [x for run in r for x in run["firsts"]]
        out[mode] = {**sm, "ttft_p50": round(percentile(firsts, 50), 1), "ttft_p95": round(percentile(firsts, 95), 1)}
        o = out[mode]
        print(f"{mode:<8}  {o['requests']:>8}  {o['rps']:>7}  {o['ttft_p50']:>8}  {o['ttft_p95']:>8}  "
              f"{o['p50_ms']:>8}  {o['p95_ms']:>8}  {o['errors']:>6}")
    s, w = out["stream"], out["whole"]
    print(f"streamed / non-streamed: throughput {s['rps'] / w['rps']:.2f}x, p50 latency {s['p50_ms'] / w['p50_ms']:.2f}x, "
          f"time to first token {s['ttft_p50'] / w['ttft_p50']:.2f}x of the whole answer's")
    if args.json:
        print(json.dumps(out))
    return 0 if all(o["errors"] == 0 for o in out.values()) else 1


def summarize(runs: list[dict], clients: int) -> dict:
    """requests/s over all windows of one mode, p50/p99 latency (ms), errors, mean batch size."""
    lat = [x for r in runs for x in r["latencies"]]
    batches = [x for r in runs for x in r["batches"]]
    errors = [x for r in runs for x in r["errors"]]
    elapsed = sum(r["elapsed"] for r in runs)
    return {"clients": clients, "seconds": round(elapsed, 1), "requests": len(lat),
            "rps": round(len(lat) / elapsed, 3), "p50_ms": round(percentile(lat, 50), 1),
            "p95_ms": round(percentile(lat, 95), 1), "p99_ms": round(percentile(lat, 99), 1), "errors": len(errors),
            "mean_batch": round(sum(batches) / len(batches), 2) if batches else 0.0,
            "first_error": errors[0] if errors else None}


def wait_healthy(url: str, timeout: float = 300) -> None:
    import requests

    end = time.time() + timeout
    while time.time() < end:
        try:
            if requests.get(f"{url}/healthz", timeout=10).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0, help="measured load per window, s")
    p.add_argument("--rounds", type=int, default=3, help="measured windows per mode, alternating on/off")
    p.add_argument("--warmup", type=float, default=5.0, help="unmeasured load per mode before the first window, s")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--batch-wait-s", type=float, default=0.01)
    p.add_argument("--payload", choices=("png", "csv"), default="png")
    p.add_argument("--modes", default="on,off", help="comma list of on (@serve.batch), off, vllm (continuous)")
    p.add_argument("--splitting", choices=("off", "on"), default=None, help="image splitting (default: as trained)")
    p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    p.add_argument("--chat", action="store_true", help="chat completions, streamed vs not (time to first token)")
    p.add_argument("--max-tokens", type=int, default=32, help="--chat: max_tokens per request")
    args = p.parse_args(argv)
    if args.chat:
        return chat_main(args)

    import ray
    from ray import serve

    from serving.app import build_app

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import free_port

    files, fields = payload(args.payload)
    port = free_port()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if "off" not in modes or set(modes) - {"on", "off", "vllm"}:
        p.error(f"--modes {args.modes!r}: a comma list of on, off, vllm that includes off (the baseline)")
    urls = {mode: f"http://127.0.0.1:{port}/{mode}" for mode in modes}
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    splitting = None if args.splitting is None else args.splitting == "on"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        # both apps stay up and the measured windows alternate, so a change in the machine's load (other
        # processes) hits both modes alike; one predictor replica each, so the ratio measures batching alone.
        # Deployed in one call: the replicas start (imports, model load) side by side, not one after the other
        targets = []
        for mode in urls:
            # all apps share the 2 CPUs: fractional shares that fit (one torch thread per replica alike)
            share = {"num_cpus": round(1.5 / len(modes), 2), "min_replicas": 1, "max_replicas": 1}
            cfg = {"model": args.model, "predictor": share, "ingress": {"num_cpus": 0.1},
                   "image_splitting": splitting,
                   "batching": {"enabled": mode == "on", "max_batch_size": args.max_batch_size,
                                "batch_wait_timeout_s": args.batch_wait_s}}
            if mode == "vllm":  # one engine, its running batch as large as the HF batch
                cfg.update(engine="vllm", dtype="bfloat16", vllm={"max_num_seqs": args.max_batch_size,
                                                                   "engine_kwargs": {"enforce_eager": True}})
            targets.append(serve.RunTarget(build_app(cfg), name=f"ecgvlm-{mode}", route_prefix=f"/{mode}"))
        serve.run_many(targets)
        for mode, url in urls.items():
            wait_healthy(url)
            drive(url, args.clients, args.warmup, files, fields)
        for i in range(args.rounds):
            for mode in (modes if i % 2 == 0 else modes[::-1]):
                runs[mode].append(drive(urls[mode], args.clients, args.seconds, files, fields))
                r = summarize(runs[mode][-1:], args.clients)
                print(f"round {i} batching {mode}: {r}", file=sys.stderr, flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()

    results = {mode: summarize(r, args.clients) for mode, r in runs.items()}
    cols = ("clients", "seconds", "requests", "rps", "p50_ms", "p95_ms", "p99_ms", "errors", "mean_batch")
    print(f"model={args.model} payload={args.payload} rounds={args.rounds}x{args.seconds}s "
          f"max_batch_size={args.max_batch_size} batch_wait_s={args.batch_wait_s} cpus={os.cpu_count()} "
          f"load_avg_1min={os.getloadavg()[0]:.1f}")
    print("batching  " + "  ".join(f"{c:>10}" for c in cols))
    for mode, r in results.items():
        print(f"{mode:<8}  " + "  ".join(f"{r[c]:>10}" for c in cols))
    off = results["off"]["rps"]
    ratios = {m: (results[m]["rps"] / off if off else float("inf")) for m in modes if m != "off"}
    for mode, ratio in ratios.items():
        print(f"{'batching on' if mode == 'on' else 'vllm continuous'} / off throughput: {ratio:.2f}x")
    if args.json:
        print(json.dumps({"results": results, "ratios": ratios}))
    return 0 if all(r["errors"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
