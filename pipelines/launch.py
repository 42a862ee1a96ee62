"""Starting the jobs on Ray: one way to connect (a remote cluster or a local one), local paths made absolute, and
a check that what a job asks for can be scheduled before it waits forever for it.

    from pipelines import launch
    cfg = launch.absolute_paths(cfg, "data", "out", "model")     # workers run in other folders
    started = launch.start(cfg.bundles(), what="ecgvlm train", hint="num_workers / cpus_per_worker / use_gpu",
                           num_cpus=cfg.ray_cpus)                 # RAY_ADDRESS -> that cluster, else a local one

Resource *bundles* are dicts like ``{"CPU": 1, "GPU": 1, "memory": 2 * 2**30}``: one per Ray Train worker, actor
or task that must run at the same time. :func:`fits` places them first-fit on nodes (dicts of the same keys).
"""

from __future__ import annotations

import atexit
import io
import os
import re
import sys
import threading
from typing import Iterable

RESOURCES = ("CPU", "GPU", "memory")


def start(bundles: list[dict] | None = None, *, what: str = "ecgvlm", hint: str = "", num_cpus: float | None = None,
          **init_kwargs) -> bool:
    """Connect to Ray, after checking that ``bundles`` can be scheduled there; True when Ray was started here
    (the caller shuts it down).

    Ray already initialised (a caller, a test) or ``RAY_ADDRESS`` set (``ray job submit`` sets it): that cluster,
    whose live nodes are checked; an autoscaling cluster may add nodes, so a shortfall is printed, not fatal.
    Otherwise a new local cluster with ``num_cpus`` (None: every core), this machine's GPUs and no dashboard; a
    request it could never hold ends the job here, before anything starts, naming ``hint`` (the config fields
    that decide the request) instead of waiting forever.
    """
    if not os.environ.get("ECGVLM_VERBOSE"):
        init_kwargs = {**quiet_ray(), **init_kwargs}
    import ray

    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        _check(bundles, local_nodes(num_cpus), what, hint, fatal=True)
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=int(num_cpus) if num_cpus else None, include_dashboard=False, **init_kwargs)
        _quiet_core_lines()
        return True
    started = not ray.is_initialized()
    if started:
        ray.init(address=os.environ["RAY_ADDRESS"], **{k: v for k, v in init_kwargs.items() if k == "logging_level"})
        _quiet_core_lines()
    _check(bundles, cluster_nodes(), what, hint, fatal=False)
    return started


def quiet_ray() -> dict:
    """Keep Ray's own Python log lines (its INFO start-up lines, Ray Data's execution plans and warnings, Train's
    and Serve's INFO lines) out of a job's output; returns the ``ray.init`` arguments that do so. A job's ``-v``
    (``ECGVLM_VERBOSE=1``) skips this. Errors still surface: a failed task raises in the driver. (The C++ core's
    own lines are left alone: ``RAY_BACKEND_LOG_LEVEL`` would add a line of its own from every Ray process.)

    Example: ``ray.init(num_cpus=2, **quiet_ray())``.
    """
    import logging

    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")  # read again whenever ray.data configures its logger
    for name in ("ray.data", "ray.train", "ray.serve", "ray.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return {"logging_level": logging.ERROR}


# A line of Ray's C++ core ("[2026-12-06 03:40:43,291 E 13483 13483] core_worker.cc:2465: ..."), alone or as a
# worker's line forwarded to the driver ("(TrainController pid=28431) [...] ..."), colour codes included; the
# raylet's "Task ServeController.graceful_shutdown failed" that every clean Serve shutdown prints; and Ray Train's
# placement-group cleaner, which asks the State API (served by the dashboard, which a local Ray here runs without)
# whether the controller lives, every second of a run, and warns each time it cannot.
_CORE_LINE = re.compile(rb"^(\x1b\[\d+m)?(\([^)]*\))?(\x1b\[0m)? ?(\[\d{4}-\d\d-\d\d [\d:,]+ [IWE] \d+ \d+\] \S+:\d+: "
                        rb"|Task \S+\.graceful_shutdown failed"  # Serve's controller, killed at shutdown as meant
                        rb"|Failed to query Ray Train Controller actor state\. State API may be temporarily unavailable)")


def _quiet_core_lines() -> None:
    """Leave Ray's core log lines (``core_worker.cc`` E lines on benign actor restarts, Serve's shutdown line) out of
    this process's output, after ``ray.init`` (whose own processes keep the real stderr). Workers' lines forwarded
    to the driver are filtered where Ray prints them; the driver's own C++ lines go to fd 2, which becomes a pipe
    that a thread copies to the real stderr without them, while Python's ``sys.stderr`` writes to the real one
    directly (a terminal stays a terminal for progress bars). Undone at exit; a job's ``-v`` never installs it, nor
    does a process whose stderr is not the interpreter's own (a test runner capturing it)."""
    if os.environ.get("ECGVLM_VERBOSE") or getattr(_quiet_core_lines, "installed", False):
        return
    _quiet_core_lines.installed = True
    try:  # Ray's own printer of forwarded lines (a private hook: a Ray that moves it only loses the filtering)
        from ray._private import ray_logging

        def kept(data: dict) -> dict:
            return {**data, "lines": [line for line in data.get("lines", []) if not _CORE_LINE.match(line.encode())]}

        def keep(handler):
            return lambda data: handler(kept(data)) if kept(data)["lines"] else None

        def keep_flushed(flush):  # the lines a deduplicator still holds are printed at shutdown, not through a handler
            return lambda: [b for b in map(kept, flush()) if b["lines"]]

        dispatcher = ray_logging.global_worker_stdstream_dispatcher
        dispatcher.handlers = [(name, keep(h) if name == "ray_print_logs" else h) for name, h in dispatcher.handlers]
        for dedup in (ray_logging.stdout_deduplicator, ray_logging.stderr_deduplicator):
            dedup.flush = keep_flushed(dedup.flush)
    except (ImportError, AttributeError):
        pass
    if sys.stderr is not sys.__stderr__ or sys.stderr is None:
        return
    sys.stderr.flush()
    real, (read, write) = os.dup(2), os.pipe()
    os.dup2(write, 2)
    os.close(write)
    sys.stderr = io.TextIOWrapper(io.FileIO(os.dup(real), "w"), encoding=sys.__stderr__.encoding,
                                  errors="backslashreplace", line_buffering=True)

    def pump() -> None:
        pending = b""
        while chunk := os.read(read, 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            kept = [line + b"\n" for line in lines if not _CORE_LINE.match(line)]
            if kept:
                os.write(real, b"".join(kept))
        if pending:
            os.write(real, pending)

    thread = threading.Thread(target=pump, name="ecgvlm-stderr", daemon=True)
    thread.start()

    def restore() -> None:
        sys.stderr.flush()
        sys.stderr = sys.__stderr__
        os.dup2(real, 2)  # the pipe's last writer closes: the thread reads to its end, then stops
        thread.join(timeout=5)

    atexit.register(restore)


def _check(bundles, nodes, what: str, hint: str, *, fatal: bool) -> None:
    if not bundles:
        return
    ok, why = fits(bundles, nodes)
    if ok:
        return
    message = f"{what}: the requested resources cannot be scheduled: {why}" + (f". Set {hint}" if hint else "")
    if fatal:
        raise SystemExit(message)
    print(f"warning: {message}; waiting for the cluster (an autoscaler may add nodes)", flush=True)


def absolute_paths(cfg, *fields: str, outputs: tuple[str, ...] = ("data", "out")):
    """``cfg`` with each named field that is a local path made absolute: Ray Train workers and Ray Data actors do
    not share the driver's working directory. Fields in ``outputs`` always are; others when the path exists
    (``random:PATH`` included). s3:// URIs and model names (``tiny``, a hub id, ``openai:NAME``) stay as given."""
    from ecg import storage

    update = {}
    for name in fields:
        value = getattr(cfg, name)
        if not isinstance(value, str) or not value or storage.is_s3(value):
            continue
        if value.startswith("random:") and os.path.exists(value[len("random:"):]):
            update[name] = "random:" + storage.absolute(value[len("random:"):])
        elif name in outputs or os.path.exists(value):
            update[name] = storage.absolute(value)
    return cfg.model_copy(update=update)


def check_paths(prog: str, *, model: str | None = None, adapter: str | None = None, data: str | None = None,
                split: str | None = None, out: str | None = None, path: str | None = None) -> None:
    """End the job with one line and exit status 2, before Ray starts, when a path it was given cannot be used:
    ``model`` / ``adapter`` (``vlm.load.check_model``), ``data`` (and its ``split`` folder, naming the splits that
    exist), ``path`` (a dataset to read) and ``out`` (not a file; a local one under a writable folder).

    Example: ``check_paths("ecgvlm evaluate", data="/wrong", out="./eval")`` prints
    ``ecgvlm evaluate: --data /wrong: no such folder`` and exits 2.
    """
    from ecg import storage
    from ecgconfig import fail

    try:
        if model is not None:
            from vlm.load import check_model

            check_model(model, adapter)
        for flag, uri in (("--path", path), ("--data", data)):
            if uri and not storage.exists(uri):
                raise ValueError(f"{flag} {uri}: no such {'bucket prefix' if storage.is_s3(uri) else 'file or folder'}")
        if data and split and not storage.exists(storage.join(data, split)):
            have = splits_in(data)
            raise ValueError(f"--split {split}: {data} has no such split; it has "
                             f"{', '.join(have) if have else 'none (run ecgvlm prepare into it first)'}")
        shards = storage.join(data, split) if data and split else data
        if shards and not storage.list_files(shards, ".parquet"):
            raise ValueError(f"--data {data}: no sample shards (*.parquet) under {shards} (ecgvlm prepare writes them)")
        if out:
            _check_out(out)
    except (ValueError, OSError) as err:
        fail(prog, str(err).splitlines()[0])


def splits_in(data: str) -> list[str]:
    """The split folders of a prepared dataset (``["test", "train", "val"]``); side files (``_*``) left out."""
    from ecg import storage

    fs, root = storage.resolve(data)
    from pyarrow import fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name[:1] not in ("_", "."))


def _check_out(out: str) -> None:
    from ecg import storage

    if storage.is_s3(out):
        return  # created on write; credentials and the bucket are checked by the first request
    target = os.path.abspath(os.path.expanduser(out))
    if os.path.isfile(target):
        raise ValueError(f"--out {out}: is a file; give a folder")
    parent = target
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise ValueError(f"--out {out}: cannot create it: {parent} is not a writable folder")


def local_nodes(num_cpus: float | None = None) -> list[dict]:
    """The one node a local Ray started here would have: ``num_cpus`` (None: every core), this machine's GPUs."""
    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch or no driver: no GPUs
        pass
    return [{"CPU": float(num_cpus or os.cpu_count() or 1), "GPU": float(gpus), "memory": float("inf")}]


def cluster_nodes() -> list[dict]:
    """The live nodes of the connected Ray cluster, as resource dicts."""
    import ray

    return [{k: float(n["Resources"].get(k, 0.0)) for k in RESOURCES} for n in ray.nodes() if n.get("Alive")]


def cpu_shares(workers: int, per_worker: float | None, encode: float | None, *, total: float | None,
               reserve: float = 0.3) -> dict:
    """CPU shares of training's workers and encode actor: the given ones, else 1 per worker and 0.5 to encode,
    scaled down so that both fit in ``total`` CPUs less ``reserve`` (a local Ray; None: a cluster, not scaled).
    The reserve is room for a Ray Data read task (0.25 CPU, ``stages.ingest``): streamed ingest reads shards while
    the workers train, and without that room the read waits for a CPU forever.

    Example: ``cpu_shares(2, None, None, total=2)`` -> ``{"cpus_per_worker": 0.68, "encode_cpus": 0.34,
    "scaled": True}`` (2 x 0.68 + 0.34 = 1.7 of 2 cores; 0.3 left for the reads).
    """
    worker, enc = per_worker or 1.0, encode or 0.5
    need = workers * worker + enc
    scale = 1.0
    if total and (per_worker is None or encode is None) and need > total - reserve:
        scale = max(total - reserve, 0.1) / need
    return {"cpus_per_worker": per_worker or round(worker * scale, 3), "encode_cpus": encode or round(enc * scale, 3),
            "scaled": scale < 1.0}


def fits(bundles: Iterable[dict], nodes: list[dict]) -> tuple[bool, str]:
    """``(True, "")`` when every bundle can be placed at once on ``nodes`` (first fit, biggest bundle first),
    else ``(False, why)`` naming the first bundle that finds no room.

    Example: ``fits([{"CPU": 4, "GPU": 1}], [{"CPU": 2, "GPU": 0}])`` -> ``(False, "... needs CPU 4, GPU 1 ...")``.
    """
    free = [{k: float(n.get(k, 0.0)) for k in RESOURCES} for n in nodes]
    order = sorted(bundles, key=lambda b: (b.get("GPU", 0), b.get("CPU", 0), b.get("memory", 0)), reverse=True)
    for k, bundle in enumerate(order):
        need = {r: float(bundle.get(r, 0.0)) for r in RESOURCES}
        node = next((n for n in free if all(n[r] + 1e-9 >= need[r] for r in RESOURCES)), None)
        if node is None:
            have = ", ".join(_show(n) for n in nodes) or "no nodes"
            return False, (f"{len(order)} bundle(s) to place; bundle {k + 1} needs {_show(need)} and finds no room "
                           f"(nodes: {have})")
        for r in RESOURCES:
            node[r] -= need[r]
    return True, ""


def _show(res: dict) -> str:
    parts = []
    for r in RESOURCES:
        v = res.get(r, 0.0)
        if v and v != float("inf"):
            parts.append(f"memory {v / 2**30:.1f} GiB" if r == "memory" else f"{r} {v:g}")
    return "{" + ", ".join(parts) + "}"
