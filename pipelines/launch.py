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

import os
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
    import ray

    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        _check(bundles, local_nodes(num_cpus), what, hint, fatal=True)
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=int(num_cpus) if num_cpus else None, include_dashboard=False, **init_kwargs)
        return True
    started = not ray.is_initialized()
    if started:
        ray.init(address=os.environ["RAY_ADDRESS"])
    _check(bundles, cluster_nodes(), what, hint, fatal=False)
    return started


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
               headroom: float = 0.9) -> dict:
    """CPU shares of training's workers and encode actor: the given ones, else 1 per worker and 0.5 to encode,
    scaled down so that both fit in ``headroom`` of ``total`` CPUs (a local Ray; None: a cluster, not scaled).

    Example: ``cpu_shares(2, None, None, total=2)`` -> ``{"cpus_per_worker": 0.72, "encode_cpus": 0.36,
    "scaled": True}`` (2 x 0.72 + 0.36 = 1.8 of 2 cores; the rest for Ray Data's read tasks).
    """
    worker, enc = per_worker or 1.0, encode or 0.5
    need = workers * worker + enc
    scale = 1.0
    if total and (per_worker is None or encode is None) and need > headroom * total:
        scale = headroom * total / need
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
