"""``ecgvlm serve``: start a local Ray, deploy serving.app on 127.0.0.1:PORT, serve until Ctrl-C or SIGTERM.

    ecgvlm serve --model tiny --host 127.0.0.1 --port 8000
    ecgvlm serve --config serving/config.yaml --model ./runs/tiny/export --no-batching
    curl -F file=@ecg.png http://127.0.0.1:8000/v1/diagnose

``--config`` takes a Ray Serve config file (serving/config.yaml: the same file ``serve run`` reads); its
``http_options`` and first application's ``args`` are the defaults the flags override.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from pydantic import BaseModel, ConfigDict, Field

from serving.config import AppConfig


class ServeJob(BaseModel):
    """Where to listen and what to serve."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 exposes it to the network")
    port: int = Field(8000, ge=1, le=65535)
    num_cpus: float = Field(2, gt=0, description="CPUs of the local Ray started for serving (ignored when "
                            "RAY_ADDRESS names a cluster)")
    app: AppConfig = Field(default_factory=AppConfig)

    def bundles(self) -> list[dict]:
        """The minimum predictor replicas and the ingress replicas."""
        p, i = self.app.predictor, self.app.ingress
        replica = {"CPU": p.num_cpus, "GPU": p.num_gpus}
        return [replica] * max(1, p.min_replicas) + [{"CPU": i.num_cpus}] * i.num_replicas


def parse_args(argv: list[str] | None) -> ServeJob:
    p = argparse.ArgumentParser(prog="ecgvlm serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="Serve config YAML (serving/config.yaml)")
    p.add_argument("--model", help='"tiny", a Hugging Face id, an export folder, or random:PATH')
    p.add_argument("--adapter", help="LoRA adapter folder")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--num-cpus", type=float, help="CPUs of the local Ray (default 2)")
    p.add_argument("--device", help='"auto", "cpu" or "cuda"')
    p.add_argument("--image-splitting", action=argparse.BooleanOptionalAction, default=None,
                   help="processor image splitting (default: as the model was trained, from its export)")
    p.add_argument("--longest-edge", type=int, help="px pages are resized to (default: as trained)")
    p.add_argument("--no-batching", action="store_true", help="one model call per request")
    p.add_argument("--max-batch-size", type=int)
    p.add_argument("--batch-wait-s", type=float, help="longest wait for a batch to fill, s")
    p.add_argument("--min-replicas", type=int)
    p.add_argument("--max-replicas", type=int)
    args = p.parse_args(argv)

    job: dict = {}
    app: dict = {}
    if args.config:
        from serving.config import load_serve_yaml

        http, cfg = load_serve_yaml(args.config)
        job.update({k: http[k] for k in ("host", "port") if k in http})
        app = cfg.model_dump()
    for key in ("model", "adapter", "device", "image_splitting", "longest_edge"):
        if getattr(args, key) is not None:
            app[key] = getattr(args, key)
    batching, predictor = dict(app.get("batching") or {}), dict(app.get("predictor") or {})
    if args.no_batching:
        batching["enabled"] = False
    if args.max_batch_size is not None:
        batching["max_batch_size"] = args.max_batch_size
    if args.batch_wait_s is not None:
        batching["batch_wait_timeout_s"] = args.batch_wait_s
    for key in ("min_replicas", "max_replicas"):
        if getattr(args, key) is not None:
            predictor[key] = getattr(args, key)
    app.update(batching=batching, predictor=predictor)
    for key in ("host", "port", "num_cpus"):
        if getattr(args, key) is not None:
            job[key] = getattr(args, key)
    return ServeJob.model_validate({**job, "app": app})


def main(argv: list[str] | None = None) -> int:
    job = parse_args(argv)
    import ray
    from ray import serve

    from serving.app import build_app

    from pipelines import launch

    stop = threading.Event()
    launch.start(job.bundles(), what="ecgvlm serve", num_cpus=job.num_cpus,
                 hint="app.predictor num_cpus / num_gpus / min_replicas, app.ingress (or --num-cpus)")
    # after ray.init, which installs its own handler: SIGTERM (a process manager) stops as cleanly as Ctrl-C
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": job.host, "port": job.port})
        serve.run(build_app(job.app), name="ecgvlm", route_prefix="/")
        print(f"ecgvlm serving {job.app.model} at http://{job.host}:{job.port} "
              f"(POST /v1/diagnose, /v1/chat/completions; GET /healthz, /v1/models, /v1/tasks); Ctrl-C stops",
              flush=True)
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
