"""Every script in benchmarks/ runs at its smallest size, as a user runs it (``python benchmarks/X.py ...``), and
prints its figures: a benchmark that no longer runs (a changed schema, a renamed function) fails here, not in
``make bench``. Speed is not asserted: these are the same scripts, at a few rows each."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# script -> (its smallest arguments, a line its output must hold: the figure it exists to print)
SMALLEST = {
    "anls.py": (["--pairs", "200"], "speed-up"),
    "jsonrecords.py": (["--records", "200"], "streamed / json.load"),
    "render.py": (["--n", "2"], "ratio"),
    "synth.py": (["--n", "5", "--nk", "1"], "ratio"),
    "score.py": (["--rows", "2000", "--files", "2"], "agree: True"),
    "beam.py": (["--model", "tiny", "--rows", "2", "--batch-size", "2", "--new-tokens", "4", "--rounds", "1"], "beam"),
    "evaluate.py": (["--models", "tiny", "--rows", "8", "--batch-size", "4"], "ratio"),
    "train.py": (["--rows", "16", "--steps", "3", "--warm", "1", "--batch", "4", "--workers", "1"], "vs plain"),
    "endpoint.py": (["--rows", "8", "--batch-size", "4", "--concurrency", "2"], "ratio endpoint / in-process"),
    "serve_load.py": (["--clients", "2", "--seconds", "1", "--rounds", "1", "--warmup", "1"], "on / off"),
    "sim2real.py": (["--smoke"], "pages/s"),
    "readers.py": (["--n", "2"], "ours/base"),  # the real exports of make real-ecgs ($ECGVLM_REAL_ECGS)
    "cpu_engines.py": (["--model", "tiny", "--variants", "hf-fp32", "--splitting", "off", "--rows", "1",
                        "--new-tokens", "2"], "vs hf-fp32"),  # the runtimes (make test-cpu-engines) are optional
}

# rough seconds of each smallest run on an idle 2-core machine: the longest start first, so the pool ends together
COST = {"endpoint.py": 60, "train.py": 52, "evaluate.py": 38, "serve_load.py": 30, "sim2real.py": 30, "gpu.sh": 26,
        "score.py": 21, "beam.py": 10, "cpu_engines.py": 9, "synth.py": 3, "render.py": 2}


def test_every_benchmark_is_listed():
    """Every script (a .py with a __main__, or a .sh); modules the scripts import (other_pages.py) are not."""
    scripts = {p.name for p in (REPO / "benchmarks").iterdir()
               if p.suffix == ".sh" or (p.suffix == ".py" and '__name__ == "__main__"' in p.read_text())}
    assert scripts == set(SMALLEST) | {"gpu.sh", "stages.py"}, "a benchmark without its smallest run here"


def _run(cmd: list[str], timeout: int, env: dict | None = None) -> tuple[int, str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", **(env or {})}
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # its own group: a run out of time is ended with all it started
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the script's finally blocks stop what it started elsewhere
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        return -9, out, f"ran over {timeout} s\n{err}"
    return proc.returncode, out, err


def _smallest(script: str, tmp: Path) -> str | None:
    """None when ``script`` ran at its smallest size and printed its figure, else what went wrong."""
    if script == "gpu.sh":  # its commands on the CPU at tiny sizes: stages.py three times (HF split off and on,
        # then beside the previous predictor and the one-sample loop), so stages.py needs no run of its own
        code, out, err = _run(["bash", "benchmarks/gpu.sh", "--cpu-smoke"], 400, env={
            "PYTHON": sys.executable, "VLLM_PYTHON": sys.executable, "MODEL": "tiny", "OUT": str(tmp)})
        ok = code == 0 and "failed" not in out and out.count("== ") >= 3 and list(tmp.glob("*.txt"))
    else:
        args, expected = SMALLEST[script]
        code, out, err = _run([sys.executable, f"benchmarks/{script}", *args], 600)
        ok = code == 0 and expected in out
    return None if ok else f"{script} exited {code}:\n{out[-1500:]}\n{err[-2500:]}"


@pytest.mark.slow
def test_every_benchmark_runs_at_its_smallest_size(tmp_path):
    """Two at a time: most of a small run is start-up (imports, Ray, Serve) that leaves a core idle. Speed is
    not checked; every script must end with status 0 and print the figure it exists for."""
    scripts = sorted([*SMALLEST, "gpu.sh"], key=lambda s: -COST.get(s, 1))
    with ThreadPoolExecutor(max_workers=2) as pool:
        problems = [p for p in pool.map(lambda s: _smallest(s, tmp_path / s), scripts) if p]
    assert not problems, "\n\n".join(problems)
