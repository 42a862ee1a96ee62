"""Batch evaluation on Ray Data: the predictor actors, the dataset of rows still to predict, the loop that writes
prediction shards, and the record of a run (``run.json``). ``ecgvlm evaluate`` (pipelines/evaluate.py) builds
these from its config; ``cfg`` below is that job's ``EvaluateConfig`` (any object with its fields).

Example::

    done = pa.array([], pa.string())                        # ids already predicted (resume)
    ds = build_dataset(cfg, done)                           # sample rows -> prediction rows, lazily
    run = run_predictions(cfg, ds, "runs/eval/predictions", count_todo(cfg, done))   # {"new_rows": 40, ...}
"""

from __future__ import annotations

import os
import time

from ecg.pagegate import THRESHOLD
from vlm.remote import endpoint_name


class PredictorActor:
    """Loads ``vlm.Predictor`` once per actor; each call is ``vlm.predict_rows`` on a pandas batch."""

    def __init__(self, model: str, *, threads: int | None = None, engine: str = "hf", budgets: dict | None = None,
                 num_beams: int = 1, questions: dict | None = None, page_gate: dict | None = None, **options):
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
        elif engine in ("openvino", "onnxruntime"):  # a compiled CPU runtime behind vlm.Predictor (vlm/cpu_engine.py)
            from vlm.cpu_engine import cpu_predictor

            self.predictor = cpu_predictor(model, engine=engine, threads=threads, **options)
        else:
            self.predictor = vlm.Predictor(model, **options)
        self._predict = vlm.predict_rows
        self.budgets, self.decoding = budgets, {"num_beams": num_beams, "questions": questions}
        self.gate = page_gate or {}

    def __call__(self, batch):
        predict = lambda rows: self._predict(self.predictor, rows, budgets=self.budgets, **self.decoding)  # noqa: E731
        return predict_gated(predict, batch, model=self.predictor.name, **self.gate)


class EndpointActor:
    """``vlm.remote.EndpointStage`` (an OpenAI-compatible endpoint) built in the actor, so the driver never
    imports the model stack; each call sends one batch's rows."""

    def __init__(self, config: dict, *, page_gate: dict | None = None, **options):
        from vlm.remote import EndpointStage

        self.stage = EndpointStage(config, **options)
        self.gate = page_gate or {}

    def __call__(self, batch):
        return predict_gated(self.stage, batch, model=self.stage.name, **self.gate)


# an endpoint row's usage counts (ecg.rows.USAGE_COLUMNS) for a row never sent
_UNSENT = {"requests": 0, "retries": 0, "cache_hit": False, "sent_prompt_tokens": 0, "sent_completion_tokens": 0}


def predict_gated(predict, batch, *, model: str, reject: bool = False, threshold: float = THRESHOLD):
    """``predict(batch)`` (sample rows -> prediction rows, in order) with the page gate's ``page_score`` and
    ``is_page`` (``ecg.pagegate.gate_rows``, run as the stage before) carried onto the prediction rows; a batch
    without them (the gate off) is predicted as it is. ``reject``: a row that is not an ECG page is not predicted:
    it becomes an error row ("record ID: not an ECG page ..."), counted with the errors, never dropped."""
    import numpy as np
    import pandas as pd

    if "is_page" not in batch:
        return predict(batch)
    refused = batch["is_page"].eq(False).to_numpy() if reject else np.zeros(len(batch), dtype=bool)
    out = predict(batch[~refused].reset_index(drop=True))
    if refused.any():
        rows = batch[refused]
        errors = pd.DataFrame({c: [_UNSENT.get(c)] * len(rows) for c in out.columns})
        errors["id"], errors["task"] = rows["id"].astype(str).to_numpy(), rows["task"].to_numpy()
        errors["question"], errors["answer"] = rows["question"].to_numpy(), rows["answer"].to_numpy()
        errors["prediction"], errors["model"], errors["latency_ms"] = "", model, 0.0
        errors["error"] = [f"record {i}: not an ECG page (page score {s:.2f} < {threshold}); --page-gate flag "
                           f"predicts it anyway" for i, s in zip(errors["id"], rows["page_score"])]
        order = np.r_[np.flatnonzero(~refused), np.flatnonzero(refused)]  # out's rows, then the refused ones
        out = pd.concat([out, errors], ignore_index=True)
        out = out.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)  # back in the batch's order
    # nullable dtypes: Ray Data hands a bool column with nulls over as pd.NA, which a plain object column would pickle
    out["page_score"] = batch["page_score"].astype("Float64").to_numpy(dtype="float64", na_value=np.nan)
    out["is_page"] = batch["is_page"].astype("boolean").array
    return out


def tasks_budgets(cfg) -> dict[str, int]:
    from metrics.tasks import budgets

    return budgets(cfg.decoding, cfg.max_new_tokens)


def endpoint_config(cfg) -> dict:
    """The ``vlm.remote.EndpointConfig`` of ``--model openai:NAME``: the job's ``EndpointSettings`` fields, the
    cache under ``<out>/cache`` by default."""
    from ecg import storage
    from vlm.remote import EndpointSettings

    if not cfg.api_base:
        raise ValueError(f"--model {cfg.model} needs --api-base (e.g. https://api.openai.com/v1)")
    return {**{k: getattr(cfg, k) for k in EndpointSettings.model_fields}, "model": endpoint_name(cfg.model),
            "api_base": cfg.api_base, "cache": cfg.cache or storage.join(cfg.out, "cache")}


def api_key(cfg) -> str:
    """The key in ``$api_key_env``. A server on this machine (``ecgvlm serve``, a local vLLM) may need none; any
    other endpoint without a key fails here, not with one 401 per record later."""
    from urllib.parse import urlparse

    key = os.environ.get(cfg.api_key_env, "")
    if not key and (urlparse(cfg.api_base or "").hostname or "") not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"no API key: set ${cfg.api_key_env} (or name another variable with --api-key-env)")
    return key or "unused"


def _samples_uri(cfg) -> str:
    from ecg import storage

    uri = storage.join(cfg.data, cfg.split) if cfg.split else cfg.data
    if not storage.list_files(uri, ".parquet"):
        raise FileNotFoundError(f"no sample shards (*.parquet) under {uri}")
    return uri


def count_todo(cfg, done) -> int:
    """Rows this run will predict: sample ids (read alone: Parquet is columnar) not yet done, task-filtered."""
    from ecg import shards

    ids = shards.parquet_dataset(_samples_uri(cfg)).to_table(columns=["id", "task"])
    todo = shards.keep_rows(ids, done=done, tasks=set(cfg.tasks.split(",")) if cfg.tasks else None).num_rows
    return min(todo, cfg.limit) if cfg.limit else todo


def build_dataset(cfg, done):
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
    gate = {}
    if cfg.page_gate != "off":
        from ecg.pagegate import gate_rows

        # in the read tasks (CPU, ~30 ms a page), beside the model, not in its actor; before the repartition, whose
        # blocks then reach the actors as without the gate (gate tasks after it finish out of order, and a short
        # block that overtakes a full one shares its actor call)
        ds = ds.map_batches(gate_rows, fn_kwargs={"threshold": cfg.page_threshold}, batch_format="pyarrow",
                            batch_size=None)
        gate = {"reject": cfg.page_gate == "reject", "threshold": cfg.page_threshold}
    # One block per predictor batch: an actor task's output reaches the driver (and a shard) per batch,
    # not per input file, so progress is live and a killed run loses at most the rows in flight.
    ds = ds.repartition(target_num_rows_per_block=cfg.batch_size)
    budgets = tasks_budgets(cfg)
    if endpoint_name(cfg.model):
        # one actor: it holds the endpoint's concurrency and rate limits; its threads wait on the network
        return ds.map_batches(
            EndpointActor, fn_constructor_args=(endpoint_config(cfg),),
            fn_constructor_kwargs={"api_key": api_key(cfg), "budgets": budgets, "page_gate": gate},
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1), batch_size=cfg.batch_size,
            batch_format="pandas", num_cpus=min(cfg.num_cpus, 0.25))
    from ecgtasks.registry import decoding_options  # num_beams and questions of the --decoding

    options = {"adapter": cfg.adapter, "image_splitting": cfg.image_splitting, "longest_edge": cfg.longest_edge,
               "device": cfg.device, "dtype": cfg.dtype, "threads": cfg.threads, "budgets": budgets,
               "engine": cfg.engine, "page_gate": gate, **decoding_options(cfg.decoding)}
    return ds.map_batches(
        PredictorActor, fn_constructor_args=(cfg.model,), fn_constructor_kwargs=options,
        compute=ray.data.ActorPoolStrategy(min_size=cfg.min_actors, max_size=cfg.max_actors),
        batch_size=cfg.batch_size, batch_format="pandas", num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus or None,
        memory=cfg.memory_gb * 2**30 if cfg.memory_gb else None)


def run_predictions(cfg, ds, pred_uri: str, todo: int, *, report=None) -> dict:
    """Pull prediction batches, write atomic shards every ``rows_per_shard`` rows, print progress (and hand it to
    ``report(rows_done, rows_failed)`` at the same pace: the job's live tracking)."""
    from ecg import shards
    from ecg.rows import PREDICTION_SCHEMA, add_usage, cost_usd

    from ecg.progress import Progress

    writer = shards.ShardWriter(pred_uri, rows_per_shard=cfg.rows_per_shard, schema=PREDICTION_SCHEMA)
    start = time.perf_counter()
    rows = errors = batches = 0
    usage: dict = {}
    with Progress(todo, what="evaluate", every_s=cfg.progress_s, report=report) as progress:
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


def describe_images(cfg) -> tuple[str, dict]:
    """``(a line for the log, the run.json "images" entry)``: how pages reach the model (an endpoint's own
    processor prepares them; an in-process model's image settings, and where they came from)."""
    from vlm.load import load_processor

    if endpoint_name(cfg.model):  # the stored page goes as it is; the endpoint's own processor prepares it
        return "pages sent as stored (the endpoint prepares them)", {"from": "endpoint"}
    images = load_processor(cfg.model, image_splitting=cfg.image_splitting, longest_edge=cfg.longest_edge)
    return images.describe_images(), {**images.images.to_dict(), "from": images.images_from}


def run_record(cfg, run: dict, results: dict, totals: dict, *, skipped: int, images: dict, start: float) -> dict:
    """``run.json``: the prediction loop's figures (``run``), what ran on what, the totals over every prediction,
    each task's truncated answers, and the wall time since ``start`` (``time.perf_counter()``)."""
    return {**run, "model": cfg.model, "adapter": cfg.adapter, "data": cfg.data, "split": cfg.split,
            "skipped": skipped, **totals, "decoding": cfg.decoding, "max_new_tokens": tasks_budgets(cfg),
            "truncated": {t: r.get("truncated", 0) for t, r in results.items()}, "images": images,
            "page_gate": {"mode": cfg.page_gate, "threshold": cfg.page_threshold,
                          **{k: sum(int((r.get("page_gate") or {}).get(k, 0)) for r in results.values())
                             for k in ("checked", "not_pages")}},
            "wall_s": round(time.perf_counter() - start, 2)}
