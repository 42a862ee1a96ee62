"""Every script in benchmarks/ runs at its smallest size, as a user runs it (``python benchmarks/X.py ...``), and
prints its figures: a benchmark that no longer runs (a changed schema, a renamed function) fails here, not in
``make bench``. Speed is not asserted: these are the same scripts, at a few rows each."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# script -> (its smallest arguments, a line its output must hold: the figure it exists to print)
SMALLEST = {
    "anls.py": (["--pairs", "200"], "ratio"),
    "jsonrecords.py": (["--records", "200"], "ratio"),
    "render.py": (["--n", "2"], "ratio"),
    "synth.py": (["--n", "5", "--nk", "1"], "ratio"),
    "score.py": (["--rows", "2000", "--files", "2"], "agree: True"),
    "beam.py": (["--model", "tiny", "--rows", "2", "--batch-size", "2", "--new-tokens", "4", "--rounds", "1"], "beam"),
    "stages.py": (["--model", "tiny", "--dtypes", "float32", "--rows", "2", "--batch-size", "2", "--distinct", "2",
                   "--new-tokens", "2", "--rounds", "1"], "ours"),
    "evaluate.py": (["--models", "tiny", "--rows", "8", "--batch-size", "4"], "ratio"),
    "train.py": (["--rows", "16", "--steps", "3", "--warm", "1", "--batch", "4", "--workers", "1"], "vs plain"),
    "endpoint.py": (["--rows", "8", "--batch-size", "4", "--concurrency", "2"], "ratio endpoint / in-process"),
    "serve_load.py": (["--clients", "2", "--seconds", "2", "--rounds", "1", "--warmup", "1"], "on / off"),
    "sim2real.py": (["--smoke"], "synthetic"),
}


def test_every_benchmark_is_listed():
    """Every script (a .py with a __main__, or a .sh); modules the scripts import (other_pages.py) are not."""
    scripts = {p.name for p in (REPO / "benchmarks").iterdir()
               if p.suffix == ".sh" or (p.suffix == ".py" and '__name__ == "__main__"' in p.read_text())}
    assert scripts == set(SMALLEST) | {"gpu.sh"}, "a benchmark without its smallest run here"


def _run(cmd: list[str], timeout: int, env: dict | None = None) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", **(env or {})}
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env,
                         start_new_session=True)
    assert out.returncode == 0, f"{' '.join(cmd)} exited {out.returncode}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SMALLEST))
def test_benchmark_runs_at_its_smallest_size(script):
    args, expected = SMALLEST[script]
    stdout = _run([sys.executable, f"benchmarks/{script}", *args], timeout=300)
    assert expected in stdout, f"{script} printed no {expected!r}:\n{stdout[-2000:]}"


@pytest.mark.slow
def test_gpu_script_runs_its_cpu_smoke(tmp_path):
    """``benchmarks/gpu.sh --cpu-smoke``: the GPU script's commands on the CPU with tiny sizes and the tiny model."""
    stdout = _run(["bash", "benchmarks/gpu.sh", "--cpu-smoke"], timeout=400,
                  env={"PYTHON": sys.executable, "VLLM_PYTHON": sys.executable, "MODEL": "tiny", "OUT": str(tmp_path)})
    assert "failed" not in stdout, stdout
    assert stdout.count("== ") >= 3 and sorted(p.name for p in tmp_path.glob("*.txt"))
