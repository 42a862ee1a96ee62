"""Rows/s of ``ecgvlm evaluate --model openai:tiny`` against ``ecgvlm serve --model tiny`` beside the in-process tiny
model, in one run, plus the requests a cached rerun sends.

    python benchmarks/endpoint.py                  # 64 rows, batch 8, concurrency 8
    python benchmarks/endpoint.py --rows 128 --concurrency 16

Both paths are the evaluate job's own dataset (``stages.evaluation.build_dataset``) on a local Ray with 2 CPUs,
the same rows (synthetic 1100 x 850 pages), ``--decoding fast`` (the code15 budget). The in-process path runs
``vlm.predict_rows`` (greedy answers plus label scores for multi-label tasks) on one actor; the endpoint path sends
one chat request per row from one actor's threads to ``ecgvlm serve`` (its own Ray, one batching replica), which
generates the answer only. The server shares the machine's cores with the job. Printed: rows/s from submission
(actor start-up included) and after the first output batch, the requests sent, and the same for a rerun that finds
every answer in the response cache.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
if sys.path[1:2] == [str(REPO / "benchmarks")]:  # benchmarks/stages.py would hide the stages package
    del sys.path[1]


def make_rows(folder: str, n: int) -> None:
    import pyarrow.parquet as pq

    from ecg import samples
    from ecg.rows import SAMPLE_SCHEMA

    table = samples.synthetic_batch({"start": [0], "count": [n]}, seed=11, splits={"test": 1.0})
    os.makedirs(os.path.join(folder, "test"), exist_ok=True)
    pq.write_table(table.drop(["split"]).cast(SAMPLE_SCHEMA), os.path.join(folder, "test", "part-0.parquet"))


def start_server(log_path: str) -> tuple[subprocess.Popen, str]:
    """``ecgvlm serve --model tiny`` on a free port, started and not waited for: ``(process, its URL)``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "pipelines.cli", "serve", "--model", "tiny", "--host", "127.0.0.1", "--port",
           str(port), "--max-replicas", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def wait_server(proc: subprocess.Popen, url: str, log_path: str) -> str:
    """The server's OpenAI API base once its /healthz answers."""
    import requests

    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                return f"{url}/v1"
        except requests.RequestException:
            time.sleep(0.5)
    raise RuntimeError(f"ecgvlm serve did not come up; see {log_path}")


def stop_server(proc: subprocess.Popen) -> None:
    """Wait for the server to end after its SIGINT (Ctrl-C); its whole group is killed after 60 s."""
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def timed(cfg) -> dict:
    """Run the evaluate dataset of ``cfg``: rows/s cold and warm, and the endpoint requests its rows report."""
    from ecg.rows import add_usage
    from stages.evaluation import build_dataset

    start = time.perf_counter()
    first_at, first_rows, rows, usage = None, 0, 0, {}
    for batch in build_dataset(cfg, ()).iter_batches(batch_format="pyarrow", batch_size=None):
        rows += batch.num_rows
        add_usage(usage, batch)
        if first_at is None:
            first_at, first_rows = time.perf_counter(), batch.num_rows
    end = time.perf_counter()
    warm = (rows - first_rows) / (end - first_at) if rows > first_rows and end > first_at else float("nan")
    return {"rows": rows, "cold": rows / (end - start), "warm": warm, **usage}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    from pipelines.evaluate import EvaluateConfig

    with tempfile.TemporaryDirectory(prefix="ecgvlm-bench-") as folder:
        log = os.path.join(folder, "serve.log")
        proc, url = start_server(log)
        try:  # the rows and this side's Ray start while the server comes up (start-up that neither path times)
            make_rows(folder, args.rows)
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            ray.data.DataContext.get_current().enable_progress_bars = False
            api = wait_server(proc, url, log)
            common = {"data": folder, "out": folder, "batch_size": args.batch_size, "decoding": "fast"}
            local = timed(EvaluateConfig(model="tiny", threads=1, **common))
            endpoint = {"model": "openai:tiny", "api_base": api, "concurrency": args.concurrency,
                        "cache": os.path.join(folder, "cache"), **common}
            remote = timed(EvaluateConfig(**endpoint))
            rerun = timed(EvaluateConfig(**endpoint))
        finally:  # both stop side by side: the server's Ray while this one shuts down
            proc.send_signal(signal.SIGINT)
            ray.shutdown()
            stop_server(proc)
    for name, r in (("in-process tiny", local), ("endpoint (ecgvlm serve)", remote), ("endpoint, rerun", rerun)):
        sent = f"   requests {r.get('requests', '-')}, cache hits {r.get('cache_hits', '-')}" if "requests" in r else ""
        print(f"{name:<24} rows {r['rows']:>4}  {r['cold']:6.2f} rows/s with start-up  {r['warm']:6.2f} rows/s warm"
              f"{sent}", flush=True)
    print(f"\nratio endpoint / in-process: {remote['cold'] / local['cold']:.2f} with start-up, "
          f"{remote['warm'] / local['warm']:.2f} warm; batch {args.batch_size}, concurrency {args.concurrency}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
