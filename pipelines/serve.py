"""``ecgvlm serve``: serve a model over HTTP with Ray Serve on 127.0.0.1:PORT until Ctrl-C or SIGTERM.

    ecgvlm serve --model tiny --host 127.0.0.1 --port 8000
    ecgvlm serve --config serving/config.yaml --model ./runs/tiny/export --no-batching
    curl -F file=@ecg.png http://127.0.0.1:8000/v1/diagnose

``--config`` takes a Ray Serve config file (serving/config.yaml: the same file ``serve run`` reads); its
``http_options`` and first application's ``args`` are the defaults the flags override. Every field of the
application is a flag (``--app.batching.max-batch-size 4``); the short forms ``--model``, ``--no-batching``,
``--max-batch-size``, ``--batch-wait-s``, ``--min-replicas``, ``--max-replicas`` set the same fields.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from pydantic import BaseModel, ConfigDict, Field

from serving.config import AppConfig


class ServeJob(BaseModel):
    """Where to listen and what to serve."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 exposes it to the network")
    port: int = Field(8000, ge=1, le=65535, description="port to bind")
    num_cpus: float = Field(2, gt=0, description="CPUs of the local Ray started for serving (ignored when "
                            "RAY_ADDRESS names a cluster)")
    metrics_port: int | None = Field(None, ge=1, le=65535, description="port of the local Ray's Prometheus "
                                     "metrics, scraped at http://127.0.0.1:PORT/metrics (None: a port Ray picks; "
                                     "ignored when RAY_ADDRESS names a cluster, whose nodes set their own)")
    app: AppConfig = Field(default_factory=AppConfig, description="the application: model, batching, "
                           "replicas, limits (each also a flag of its own below)")

    def bundles(self) -> list[dict]:
        """The minimum predictor replicas and the ingress replicas."""
        p, i = self.app.predictor, self.app.ingress
        replica = {"CPU": p.num_cpus, "GPU": p.num_gpus}
        return [replica] * max(1, p.min_replicas) + [{"CPU": i.num_cpus}] * i.num_replicas


# the flags ``ecgvlm serve`` had before every field got its own (``--app.batching.max-batch-size``)
ALIASES = {name: "app." + name for name in ("model", "adapter", "device", "dtype", "image-splitting", "longest-edge")}
ALIASES.update({"batching": "app.batching.enabled", "max-batch-size": "app.batching.max-batch-size",
                "batch-wait-s": "app.batching.batch-wait-timeout-s", "min-replicas": "app.predictor.min-replicas",
                "max-replicas": "app.predictor.max-replicas"})


def _serve_yaml(path: str) -> dict:
    """A Serve config file's ``http_options`` host / port and its first application's ``args`` as job fields."""
    from serving.config import load_serve_yaml

    http, app = load_serve_yaml(path)
    return {**{k: http[k] for k in ("host", "port") if k in http}, "app": app.model_dump(exclude_unset=True)}


def parse_args(argv: list[str] | None) -> ServeJob:
    """``--config`` (a Serve config YAML) then flags (``ecgconfig``); the old short flags still work
    (``--model``, ``--no-batching``, ``--max-batch-size``, ...)."""
    from ecgconfig import load_config

    return load_config(ServeJob, argv, prog="ecgvlm serve", doc=__doc__, aliases=ALIASES, read_yaml=_serve_yaml,
                       main=("app.model", "app.adapter", "host", "port", "app.engine", "app.batching.enabled"))


def preflight(job: ServeJob) -> str | None:
    """What stops this job before Ray starts (a missing model folder, a required key not set), or None."""
    from serving.config import check_model
    from serving.security import load_keys

    try:
        check_model(job.app)
    except ValueError as err:
        return str(err)
    if job.app.require_api_key and not load_keys(job.app.api_key_env):
        return f"this config requires an API key: set {job.app.api_key_env} (comma-separated keys)"
    if job.host not in ("127.0.0.1", "localhost", "::1") and not load_keys(job.app.api_key_env):
        print(f"ecgvlm serve: warning: listening on {job.host} with no API key ({job.app.api_key_env} unset)",
              file=sys.stderr, flush=True)
    return None


def main(argv: list[str] | None = None) -> int:
    job = parse_args(argv)
    from pipelines import launch

    problem = preflight(job)  # the model and the key, in one line, before Ray
    if problem:
        print(f"ecgvlm serve: error: {problem}", file=sys.stderr, flush=True)
        return 2
    launch.check_paths("ecgvlm serve", model=job.app.model, adapter=job.app.adapter)
    import ray
    from ray import serve

    from serving.app import build_app
    from serving.security import load_keys

    stop = threading.Event()
    metrics = {"_metrics_export_port": job.metrics_port} if job.metrics_port else {}
    local = launch.start(job.bundles(), what="ecgvlm serve", num_cpus=job.num_cpus, **metrics,
                         hint="app.predictor num_cpus / num_gpus / min_replicas, app.ingress (or --num-cpus)")
    # after ray.init, which installs its own handler: SIGTERM (a process manager) stops as cleanly as Ctrl-C. Ctrl-C
    # gets Python's own KeyboardInterrupt back explicitly: a process a shell starts in the background inherits SIGINT
    # ignored, and Python then installs none (kill -INT would do nothing)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        quiet = None if os.environ.get("ECGVLM_VERBOSE") else {"log_level": "WARNING"}  # no INFO / access lines
        serve.start(http_options={"host": job.host, "port": job.port}, logging_config=quiet)
        serve.run(build_app(job.app), name="ecgvlm", route_prefix="/", logging_config=quiet)
        keys = "API key required" if load_keys(job.app.api_key_env) else f"no API key ({job.app.api_key_env} unset)"
        print(f"ecgvlm serving {job.app.served_id()} ({job.app.model}) at http://{job.host}:{job.port}, {keys} "
              f"(POST /v1/diagnose, /v1/chat/completions; GET /healthz, /v1/models, /v1/tasks)"
              + (f", metrics at http://127.0.0.1:{job.metrics_port}/metrics" if job.metrics_port and local else "")
              + "; Ctrl-C stops", flush=True)
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        print("ecgvlm serve: shutting down", flush=True)
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
