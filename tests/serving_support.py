"""What tests/test_serving.py runs against its server: ``ecgvlm serve`` started and stopped as a user does, the
client examples of the serving pages the README links to (read from the pages, run as written), and a Prometheus
scrape.

Example::

    url, metrics_url, proc, log = start_serve(tmp, ["--model", "tiny"], env)
    wait_healthy(url, proc, log)
    run_python_examples(url, key)              # docs/serving.md, docs/serving-clients.md, as written
    stop_serve(proc)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_URL = "http://127.0.0.1:8000"  # the address every example names: moved to the test server's


def start_serve(folder: Path, flags: list[str], env: dict, *, sigint_ignored: bool = False,
                ) -> tuple[str, str, subprocess.Popen, Path]:
    """``ecgvlm serve FLAGS`` (the real CLI) on a free 127.0.0.1 port with Prometheus metrics on another, in a
    session of its own (killing the group ends everything it started), its output in ``folder/serve.log``:
    ``(base URL, metrics URL, process, log path)``. ``sigint_ignored``: start it as a shell starts a background job
    (``ecgvlm serve &``), with SIGINT ignored, so that Python installs no KeyboardInterrupt of its own."""
    from conftest import free_port

    port, metrics_port, log_path = free_port(), free_port(), folder / "serve.log"
    cmd = [sys.executable, "-m", "pipelines.cli", "serve", *flags, "--host", "127.0.0.1", "--port", str(port),
           "--metrics-port", str(metrics_port)]
    with open(log_path, "w") as log:
        ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                preexec_fn=ignore)
    return f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics", proc, log_path


def wait_healthy(url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float = 300) -> None:
    """Until ``/healthz`` answers 200; fails with the log's end if the server exits or ``timeout_s`` passes."""
    import requests

    deadline = time.time() + timeout_s
    while proc.poll() is None and time.time() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            time.sleep(0.5)
    raise AssertionError(log_path.read_text()[-3000:])


def stop_serve(proc: subprocess.Popen) -> None:
    """Ctrl-C (SIGINT) to a server still running; its whole session killed if it has not stopped in 60 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def image_url(png: bytes) -> str:
    """A PNG as the ``data:`` URI an OpenAI chat request carries."""
    import base64

    return "data:image/png;base64," + base64.b64encode(png).decode()


def conversation(png: bytes) -> list[dict]:
    """A follow-up after an image turn, as chat applications send it: the image stays in the first message."""
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url(png)}},
                                         {"type": "text", "text": "Which rhythm is this?"}]},
            {"role": "assistant", "content": "SB"},
            {"role": "user", "content": "And the heart rate?"}]


def write_rows(folder, n: int) -> list[str]:
    """``n`` synthetic sample rows (550 x 425 pages) as ``folder/test/part-0.parquet``; their ids."""
    import pyarrow.parquet as pq

    from ecg import samples
    from ecg.rows import SAMPLE_SCHEMA

    table = samples.synthetic_batch({"start": [0], "count": [n]}, seed=3, splits={"test": 1.0},
                                    options=samples.RenderOptions(width=550, height=425))
    table = table.drop(["split"]).cast(SAMPLE_SCHEMA)
    os.makedirs(os.path.join(folder, "test"), exist_ok=True)
    pq.write_table(table, os.path.join(folder, "test", "part-0.parquet"))
    return table.column("id").to_pylist()


def serving_pages() -> list[Path]:
    """The docs pages on serving that README.md links to, in the README's order."""
    links = re.findall(r"\]\((docs/serving[^)#\s]*\.md)", (REPO / "README.md").read_text())
    pages = [REPO / link for link in dict.fromkeys(links)]
    assert pages, "README.md links to no docs/serving*.md page"
    return pages


def code_blocks(page: Path, lang: str) -> list[str]:
    """The fenced ``lang`` blocks of a Markdown page, as written."""
    return re.findall(rf"```{lang}\n(.*?)```", page.read_text(), re.S)


def curl_blocks(page: Path) -> list[str]:
    """The bash blocks of a page whose every command is a curl request (the server-side blocks are not clients)."""
    return [b for b in code_blocks(page, "bash")
            if all(line.startswith("curl ") for line in b.splitlines() if line.strip())]


def run_python_examples(server: str, key: str) -> list[tuple[str, str]]:
    """Every Python block of the serving pages, as written but for the address (``EXAMPLE_URL`` -> ``server``) and
    a placeholder key (``api_key="unused"`` -> ``key``); a page's blocks in order in one namespace, as a reader runs
    them (later blocks use earlier names). Run in the current folder; ``[(block, what it printed)]``."""
    import contextlib
    import io

    ran = []
    for page in serving_pages():
        namespace: dict = {}
        for block in code_blocks(page, "python"):
            code = block.replace(EXAMPLE_URL, server).replace('api_key="unused"', f'api_key="{key}"')
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile(code, f"{page.name}: python example", "exec"), namespace)  # noqa: S102 - our docs
            ran.append((block, printed.getvalue()))
    return ran


def run_curl_examples(server: str, key: str, folder: Path) -> list[tuple[str, str]]:
    """Every curl line of the serving pages, as written but for the address, run by bash in ``folder`` with the key
    sent from a ``.curlrc`` there (and ``--fail-with-body``); ``[(line, its stdout)]``, each checked to exit 0."""
    (folder / ".curlrc").write_text(f'header = "Authorization: Bearer {key}"\nsilent\nshow-error\n'
                                    'fail-with-body\n')
    env = {**os.environ, "CURL_HOME": str(folder), "HOME": str(folder)}
    ran = []
    for line in [ln for page in serving_pages() for b in curl_blocks(page) for ln in b.splitlines() if ln.strip()]:
        out = subprocess.run(["bash", "-c", line.replace(EXAMPLE_URL, server)], cwd=folder, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (line, out.stdout, out.stderr)
        ran.append((line, out.stdout))
    return ran


def write_example_inputs(folder: Path) -> None:
    """The files the examples open, in ``folder``: an ECG page as ``page.png`` and ``ecg.png``, and one synthetic
    12-lead record as ``record.csv`` (500 Hz), ``rec.hea`` + ``rec.dat`` (WFDB) and ``exams.hdf5`` (CODE-15
    layout: 4 exams at 400 Hz, the record in each)."""
    import h5py
    import numpy as np
    import pandas as pd
    import wfdb
    from test_serving_inputs import page_png, synth_record

    from ecg.readers import resample

    png, rec = page_png(), synth_record()
    (folder / "page.png").write_bytes(png)
    (folder / "ecg.png").write_bytes(png)
    pd.DataFrame(rec.signal.T, columns=list(rec.leads)).to_csv(folder / "record.csv", index=False)
    wfdb.wrsamp("rec", fs=rec.fs, units=["mV"] * 12, sig_name=list(rec.leads), p_signal=rec.signal.T.astype(float),
                fmt=["16"] * 12, write_dir=str(folder))
    tracings = np.zeros((4, 4096, 12), np.float32)  # (exams, samples, leads): 10 s at 400 Hz, zero-padded 48 + 48
    tracings[:, 48:4048] = resample(rec, 400.0).signal.T
    with h5py.File(folder / "exams.hdf5", "w") as f:
        f["tracings"], f["exam_id"] = tracings, np.arange(1, 5)


def scrape(url: str, until, timeout_s: float = 30.0) -> dict:
    """``{(name, ((label, value), ...)): value}`` of the Prometheus text at ``url``, polled until ``until(samples)``
    holds (Ray's processes export their metrics to the node's agent once a ``RAY_metrics_report_interval_ms``) or
    ``timeout_s`` passes; then the last scrape."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    deadline, samples = time.time() + timeout_s, {}
    while True:
        try:
            text = requests.get(url, timeout=10).text
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for family in text_string_to_metric_families(text) for s in family.samples}
        except requests.RequestException:
            pass
        if until(samples) or time.time() > deadline:
            return samples
        time.sleep(0.5)


def total(samples: dict, name: str, **labels) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (Ray adds its own: node, replica, ...)."""
    return sum(v for (n, have), v in samples.items() if n == name and set(labels.items()) <= set(have))
