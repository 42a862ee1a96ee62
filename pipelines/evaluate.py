"""``ecgvlm evaluate``: stream sample shards through a pool of predictors, write predictions, score, report.

    ecgvlm evaluate --model tiny --data ./data/synth --split test --out ./runs/eval
    ecgvlm evaluate --model ./runs/tiny/export --data s3://ecg/bench --out s3://ecg/eval --num-gpus 1 --max-actors 4
    ecgvlm evaluate --model openai:gpt-4o --api-base https://api.openai.com/v1 --data s3://ecg/bench --out s3://ecg/g4o

Reads ``<data>/<split>/*.parquet`` (or ``<data>`` itself), skips ids already in ``<out>/predictions/``
(resumable: rerun the same command after a crash), maps batches through ``PredictorActor`` (one
``vlm.Predictor`` per actor, ``vlm.predict_rows`` per batch) on an autoscaling actor pool (or, for
``openai:NAME``, through ``vlm.remote.EndpointStage`` on one actor that holds the endpoint's limits), writes the
prediction rows as shards named ``<run>-<k>.parquet``, each made visible only when complete. Then
``metrics.json``, ``report.md`` and ``report.html`` beside them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Literal

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.config import error_exit, load_config


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("tiny", description="tiny, a Hugging Face id, an export folder or random:PATH")
    adapter: str | None = Field(None, description="LoRA adapter folder on top of --model")
    engine: Literal["hf", "vllm"] = Field(
        "hf", description="hf (transformers) or vllm (needs ecgvlm[vllm]; no --adapter: merge it with the export first)")
    data: str = Field(..., description="sample shards: folder or s3:// URI holding <split>/*.parquet")
    out: str = Field(..., description="output folder or s3:// URI (predictions/, metrics.json, report)")
    split: str = Field("test", description="split folder under --data ('' for --data itself)")
    tasks: str | None = Field(None, description="comma-separated task names to keep (default: all)")
    limit: int | None = Field(None, ge=1, description="predict at most this many new rows in this run")
    image_splitting: bool | None = Field(None, description="processor image splitting (None: as the model was "
                                         "trained, from its export, else its processor's own; SmolVLM: 17 tiles)")
    longest_edge: int | None = Field(None, description="resize pages so the longest edge is this many px "
                                     "(None: as trained / the processor's own)")
    device: str = Field("auto", description="auto, cpu, cuda")
    dtype: str = Field("auto", description="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    batch_size: int = Field(8, ge=1, description="rows per predictor call")
    min_actors: int = Field(1, ge=1, description="actor pool minimum size")
    max_actors: int = Field(1, ge=1, description="actor pool maximum size")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (1 on a GPU cluster)")
    num_cpus: float = Field(0.5, gt=0, description="CPUs per actor (fractional on CPU, so read tasks still run)")
    threads: int | None = Field(None, ge=1, description="torch threads per actor (default: Ray's choice)")
    memory_gb: float | None = Field(None, gt=0, description="memory reserved per actor, GiB (256M on CPU: about 2)")
    rows_per_shard: int = Field(256, ge=1, description="prediction rows per output shard")
    max_batches: int | None = Field(None, ge=1, description="stop after this many batches (smoke runs)")
    protocol: str = Field("all", description="scoring protocol: ecgbench, strict, both (the two), smolvlm-study "
                                              "or all (the three)")
    progress_s: float = Field(10.0, description="seconds between progress lines (a bar instead on a terminal)")
    # decoding (every model) and OpenAI-compatible endpoints (--model openai:NAME)
    decoding: Literal["ecgbench", "fast", "smolvlm-study"] = Field(
        "ecgbench", description="ecgbench = greedy, the paper's 1024 tokens per answer (a trained model stops at its "
                                "end token, so it costs nothing); fast = greedy, each task's short budget (smoke runs, "
                                "random-weight models, which never stop); smolvlm-study = the prior study's "
                                "generation: beam search, 4 beams, 32 tokens, one row at a time, its prompt for "
                                "CODE-15 (in-process models, --engine hf)")
    max_new_tokens: str | None = Field(None, description="per-task budgets over --decoding, e.g. code15=64,ecgqa=128")
    api_base: str | None = Field(None, description="openai:NAME: base URL of the chat-completions API")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai:NAME: environment variable holding the API key")
    cache: str | None = Field(None, description="openai:NAME: response cache folder or s3:// (default <out>/cache)")
    concurrency: int = Field(8, ge=1, description="openai:NAME: requests in flight at once")
    requests_per_min: float | None = Field(None, gt=0, description="openai:NAME: request limit, requests/min")
    tokens_per_min: float | None = Field(None, gt=0, description="openai:NAME: token limit, tokens/min")
    retries: int = Field(4, ge=0, description="openai:NAME: retries per record (429/5xx/timeouts/bad replies)")
    timeout_s: float = Field(120.0, gt=0, description="openai:NAME: timeout of one request, s")
    backoff_s: float = Field(1.0, ge=0, description="openai:NAME: first retry wait without Retry-After, s (doubles)")
    image_detail: str | None = Field("low", description="openai:NAME: image_url detail (low, as PULSE sends GPT-4o)")
    price_input_per_mtok: float | None = Field(None, ge=0, description="USD per million prompt tokens (cost estimate)")
    price_output_per_mtok: float | None = Field(None, ge=0, description="USD per million completion tokens")
    compare: str | None = Field(None, description="earlier --out folders (comma-separated) whose CODE-15 rows the "
                                                  "report's comparison table shows, marked as run earlier")
    ray_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray started when none is running "
                                 "(None: every core)")
    max_error_rate: float = Field(0.5, ge=0, le=1, description="exit non-zero (after writing everything) when more "
                                  "than this fraction of the predictions are errors")
    tracking: str = Field("local", description="experiment tracking: 'local' (MLflow file store ./mlruns, or "
                          "$MLFLOW_TRACKING_URI), 'none', or an MLflow tracking URI; logged after scoring")

    def bundles(self) -> list[dict]:
        """The actor pool's minimum (it grows to ``max_actors`` where there is room) and one read task."""
        actor = {"CPU": self.num_cpus, "GPU": self.num_gpus, "memory": (self.memory_gb or 0) * 2**30}
        return [actor] * self.min_actors + [{"CPU": 0.1}]


class PredictorActor:
    """Loads ``vlm.Predictor`` once per actor; each call is ``vlm.predict_rows`` on a pandas batch."""

    def __init__(self, model: str, *, threads: int | None = None, engine: str = "hf", budgets: dict | None = None,
                 num_beams: int = 1, questions: dict | None = None, **options):
        if threads:
            import torch

            torch.set_num_threads(threads)
        import vlm

        if engine == "vllm":  # one vLLM engine per actor: continuous batching inside, predict_rows around it
            from vlm.vllm_engine import VLLMPredictor

            if options.pop("adapter", None):
                raise ValueError("--engine vllm takes a merged model: export the adapter merged, then --model EXPORT")
            options.pop("device", None)
            self.predictor = VLLMPredictor(model, **options)
        else:
            self.predictor = vlm.Predictor(model, **options)
        self._predict = vlm.predict_rows
        self.budgets, self.decoding = budgets, {"num_beams": num_beams, "questions": questions}

    def __call__(self, batch):
        return self._predict(self.predictor, batch, budgets=self.budgets, **self.decoding)


class EndpointActor:
    """``vlm.remote.EndpointStage`` (an OpenAI-compatible endpoint) built in the actor, so the driver never
    imports the model stack; each call sends one batch's rows."""

    def __init__(self, config: dict, **options):
        from vlm.remote import EndpointStage

        self.stage = EndpointStage(config, **options)

    def __call__(self, batch):
        return self.stage(batch)


def endpoint_name(model: str) -> str | None:
    """``openai:gpt-4o`` -> ``gpt-4o``; None for an in-process model."""
    return model.split(":", 1)[1] if model.startswith("openai:") else None


def tasks_budgets(cfg: EvaluateConfig) -> dict[str, int]:
    from metrics.tasks import budgets

    return budgets(cfg.decoding, cfg.max_new_tokens)


def endpoint_config(cfg: EvaluateConfig) -> dict:
    """The ``vlm.remote.EndpointConfig`` of ``--model openai:NAME`` (the cache under ``<out>/cache`` by default)."""
    from ecg import storage

    if not cfg.api_base:
        raise ValueError(f"--model {cfg.model} needs --api-base (e.g. https://api.openai.com/v1)")
    return {"model": endpoint_name(cfg.model), "api_base": cfg.api_base,
            "cache": cfg.cache or storage.join(cfg.out, "cache"), "concurrency": cfg.concurrency,
            "requests_per_min": cfg.requests_per_min, "tokens_per_min": cfg.tokens_per_min, "retries": cfg.retries,
            "timeout_s": cfg.timeout_s, "backoff_s": cfg.backoff_s, "image_detail": cfg.image_detail}


def api_key(cfg: EvaluateConfig) -> str:
    """The key in ``$api_key_env``. A server on this machine (``ecgvlm serve``, a local vLLM) may need none; any
    other endpoint without a key fails here, not with one 401 per record later."""
    from urllib.parse import urlparse

    key = os.environ.get(cfg.api_key_env, "")
    if not key and (urlparse(cfg.api_base or "").hostname or "") not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"no API key: set ${cfg.api_key_env} (or name another variable with --api-key-env)")
    return key or "unused"


def _samples_uri(cfg: EvaluateConfig) -> str:
    from ecg import storage

    uri = storage.join(cfg.data, cfg.split) if cfg.split else cfg.data
    if not storage.list_files(uri, ".parquet"):
        raise FileNotFoundError(f"no sample shards (*.parquet) under {uri}")
    return uri


def count_todo(cfg: EvaluateConfig, done) -> int:
    """Rows this run will predict: sample ids (read alone: Parquet is columnar) not yet done, task-filtered."""
    from ecg import shards

    ids = shards.parquet_dataset(_samples_uri(cfg)).to_table(columns=["id", "task"])
    todo = shards.keep_rows(ids, done=done, tasks=set(cfg.tasks.split(",")) if cfg.tasks else None).num_rows
    return min(todo, cfg.limit) if cfg.limit else todo


def build_dataset(cfg: EvaluateConfig, done):
    """Sample rows not yet predicted -> prediction rows (a lazy Ray Dataset)."""
    import ray

    from ecg import shards, storage

    fs, _ = storage.resolve(cfg.data)
    files = [shards.strip_scheme(f) for f in storage.list_files(_samples_uri(cfg), ".parquet")]
    ds = ray.data.read_parquet(files, filesystem=fs).select_columns(["id", "task", "image", "question", "answer",
                                                                     "meta"])
    tasks = set(cfg.tasks.split(",")) if cfg.tasks else None
    if len(done) or tasks:
        ds = ds.map_batches(shards.keep_rows, fn_kwargs={"done": done, "tasks": tasks}, batch_format="pyarrow")
    if cfg.limit:
        ds = ds.limit(cfg.limit)
    # One block per predictor batch: an actor task's output reaches the driver (and a shard) per batch,
    # not per input file, so progress is live and a killed run loses at most the rows in flight.
    ds = ds.repartition(target_num_rows_per_block=cfg.batch_size)
    budgets = tasks_budgets(cfg)
    if endpoint_name(cfg.model):
        # one actor: it holds the endpoint's concurrency and rate limits; its threads wait on the network
        return ds.map_batches(
            EndpointActor, fn_constructor_args=(endpoint_config(cfg),),
            fn_constructor_kwargs={"api_key": api_key(cfg), "budgets": budgets},
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1), batch_size=cfg.batch_size,
            batch_format="pandas", num_cpus=min(cfg.num_cpus, 0.25))
    from ecgtasks.registry import decoding_options  # num_beams and questions of the --decoding

    options = {"adapter": cfg.adapter, "image_splitting": cfg.image_splitting, "longest_edge": cfg.longest_edge,
               "device": cfg.device, "dtype": cfg.dtype, "threads": cfg.threads, "budgets": budgets,
               "engine": cfg.engine, **decoding_options(cfg.decoding)}
    return ds.map_batches(
        PredictorActor, fn_constructor_args=(cfg.model,), fn_constructor_kwargs=options,
        compute=ray.data.ActorPoolStrategy(min_size=cfg.min_actors, max_size=cfg.max_actors),
        batch_size=cfg.batch_size, batch_format="pandas", num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus or None,
        memory=cfg.memory_gb * 2**30 if cfg.memory_gb else None)


def run_predictions(cfg: EvaluateConfig, ds, pred_uri: str, todo: int) -> dict:
    """Pull prediction batches, write atomic shards every ``rows_per_shard`` rows, print progress."""
    from ecg import shards
    from ecg.rows import PREDICTION_SCHEMA, add_usage, cost_usd

    from pipelines.progress import Progress

    writer = shards.ShardWriter(pred_uri, rows_per_shard=cfg.rows_per_shard, schema=PREDICTION_SCHEMA)
    start = time.perf_counter()
    rows = errors = batches = 0
    usage: dict = {}
    with Progress(todo, what="evaluate", every_s=cfg.progress_s) as progress:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None) if todo else ():
            add_usage(usage, batch)  # endpoint rows carry requests, retries, cache hits and tokens
            writer.add(batch)
            failed = batch.num_rows - batch.column("error").null_count
            rows, batches, errors = rows + batch.num_rows, batches + 1, errors + failed
            progress.update(batch.num_rows, errors=failed)
            if cfg.max_batches and batches >= cfg.max_batches:
                break
    writer.close()
    wall = time.perf_counter() - start
    out = {"new_rows": rows, "new_errors": errors, "shards_written": writer.written, "predict_s": round(wall, 2),
           "rows_per_s": round(rows / wall, 3) if rows else None}
    if endpoint_name(cfg.model):
        out["endpoint"] = {"api_base": cfg.api_base, "model": endpoint_name(cfg.model),
                           "cache": endpoint_config(cfg)["cache"], **usage,
                           "cost_usd": cost_usd(usage, cfg.price_input_per_mtok, cfg.price_output_per_mtok)}
    return out


def main(argv: list[str] | None = None) -> int:
    from pipelines import launch

    cfg = load_config(EvaluateConfig, argv, prog="ecgvlm evaluate", doc=__doc__)
    # Predictor actors need not share the driver's working directory: local paths travel as absolute paths.
    cfg = launch.absolute_paths(cfg, "data", "out", "model", "adapter", "cache", outputs=("data", "out", "cache"))
    if cfg.decoding == "smolvlm-study" and (endpoint_name(cfg.model) or cfg.engine != "hf"):
        print("ecgvlm evaluate: --decoding smolvlm-study searches beams in-process: it needs --engine hf and a "
              "model that is not openai:NAME", file=sys.stderr)
        return 2
    if endpoint_name(cfg.model):
        try:  # a missing --api-base or key fails here, before any cluster starts
            endpoint_config(cfg), api_key(cfg)
        except ValueError as err:
            print(f"ecgvlm evaluate: {err}", file=sys.stderr)
            return 2
    import pyarrow as pa

    from ecg import shards, storage
    from metrics.report import earlier_runs, write_report
    from vlm.load import load_processor

    earlier = earlier_runs(cfg.compare)  # read first: a wrong folder fails now, not after the predictions
    start = time.perf_counter()
    pred_uri = storage.join(cfg.out, "predictions")
    done_ids, _ = shards.predicted_ids(pred_uri)
    done = pa.array(sorted(done_ids), pa.string())  # one compact array shipped to every filter task
    todo = count_todo(cfg, done)
    if endpoint_name(cfg.model):  # the stored page goes as it is; the endpoint's own processor prepares it
        described, images_run = "pages sent as stored (the endpoint prepares them)", {"from": "endpoint"}
    else:
        images = load_processor(cfg.model, image_splitting=cfg.image_splitting, longest_edge=cfg.longest_edge)
        described, images_run = images.describe_images(), {**images.images.to_dict(), "from": images.images_from}
    print(f"evaluate: {todo} rows to predict, {len(done)} already in {pred_uri}; {described}", flush=True)
    started = False  # nothing left to predict: no cluster, no model load
    if todo:
        started = launch.start(cfg.bundles(), what="ecgvlm evaluate", num_cpus=cfg.ray_cpus,
                               hint="min_actors, num_cpus, num_gpus, memory_gb (or ray_cpus for a local Ray)")
    try:
        run = run_predictions(cfg, build_dataset(cfg, done) if todo else None, pred_uri, todo)
        results, totals = score(pred_uri, protocol=cfg.protocol)
    finally:
        if started:
            import ray

            ray.shutdown()
    run.update(model=cfg.model, adapter=cfg.adapter, data=cfg.data, split=cfg.split, skipped=len(done), **totals,
               decoding=cfg.decoding, max_new_tokens=tasks_budgets(cfg),
               truncated={t: r.get("truncated", 0) for t, r in results.items()},
               images=images_run,
               wall_s=round(time.perf_counter() - start, 2))
    storage.write_text(storage.join(cfg.out, "metrics.json"), json.dumps(results, indent=2, default=str))
    storage.write_text(storage.join(cfg.out, "run.json"), json.dumps(run, indent=2, default=str))
    write_report(results, cfg.out, shards.read_predictions(pred_uri, first_files=1).head(20), run=run,
                 earlier=earlier)
    from metrics import tracking

    tracked = tracking.track(cfg.tracking, experiment="ecgvlm-evaluate", run_name=cfg.model, config=cfg.model_dump())
    reports = {name: storage.read_text(storage.join(cfg.out, name)) for name in ("report.md", "report.html")}
    tracking.log_evaluation(tracked, results, run, reports)
    tracked.close()
    print(f"evaluate: {run['new_rows']} new rows ({run['new_errors']} errors), {len(done)} already done, "
          f"{totals['rows']} predictions in all ({totals['errors']} errors), {run['wall_s']:.1f} s -> {cfg.out}",
          flush=True)
    return error_exit("evaluate", totals["errors"], totals["rows"], cfg.max_error_rate)


def score(pred_uri: str, *, protocol: str, driver_rows: int = 200_000) -> tuple[dict, dict]:
    """``({task: result}, {"rows": n, "errors": e, "duplicates_dropped": d})``, one prediction per id.

    Up to ``driver_rows`` predictions (text only, a few hundred bytes each) are scored here with
    ``metrics.score_frame``, which takes seconds where starting a Ray job takes longer; bigger sets go
    through the Ray reduction (``pipelines.score.score_dataset``), which needs each id written once, as
    this job writes them. Duplicates (two runs into one folder at once) are dropped by id before scoring.
    """
    from ecg import shards
    from metrics import score_frame
    from pipelines.score import score_dataset

    ids, duplicates = shards.predicted_ids(pred_uri)
    if duplicates:
        print(f"evaluate: {duplicates} duplicate ids in {pred_uri}; scoring one row per id", file=sys.stderr)
    if len(ids) > driver_rows and not duplicates:
        results = score_dataset(pred_uri, protocol=protocol)
    else:
        frame = shards.read_predictions(pred_uri)
        results = {task: score_frame(task, part.reset_index(drop=True), protocol=protocol)
                   for task, part in frame.groupby("task", sort=True)}
    errors = sum(int(r.get("errors", 0) or 0) for r in results.values())
    return results, {"rows": len(ids), "errors": errors, "duplicates_dropped": duplicates}


if __name__ == "__main__":
    sys.exit(main())
