"""``ecgvlm evaluate``: stream sample shards through a pool of predictors, write predictions, score, report.

    ecgvlm evaluate --model tiny --data ./data/synth --split test --out ./runs/eval
    ecgvlm evaluate --model ./runs/tiny/export --data s3://ecg/bench --out s3://ecg/eval --num-gpus 1 --max-actors 4

Reads ``<data>/<split>/*.parquet`` (or ``<data>`` itself), skips ids already in ``<out>/predictions/``
(resumable: rerun the same command after a crash), maps batches through ``PredictorActor`` (one
``vlm.Predictor`` per actor, ``vlm.predict_rows`` per batch) on an autoscaling actor pool, and writes the
prediction rows as shards named ``<run>-<k>.parquet``, each made visible only when complete. Then
``metrics.json``, ``report.md`` and ``report.html`` beside them.
"""

from __future__ import annotations

import json
import sys
import time

from pydantic import BaseModel, ConfigDict, Field

from pipelines.prepare import ensure_ray, load_config


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("tiny", description="tiny, a Hugging Face id, an export folder or random:PATH")
    adapter: str | None = Field(None, description="LoRA adapter folder on top of --model")
    data: str = Field(..., description="sample shards: folder or s3:// URI holding <split>/*.parquet")
    out: str = Field(..., description="output folder or s3:// URI (predictions/, metrics.json, report)")
    split: str = Field("test", description="split folder under --data ('' for --data itself)")
    tasks: str | None = Field(None, description="comma-separated task names to keep (default: all)")
    limit: int | None = Field(None, ge=1, description="predict at most this many new rows in this run")
    image_splitting: bool = Field(False, description="processor image splitting (17 tiles per page when on)")
    longest_edge: int | None = Field(None, description="resize pages so the longest edge is this many px")
    device: str = Field("auto", description="auto, cpu, cuda")
    dtype: str = Field("auto", description="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    batch_size: int = Field(8, ge=1, description="rows per predictor call")
    min_actors: int = Field(1, ge=1, description="actor pool minimum size")
    max_actors: int = Field(1, ge=1, description="actor pool maximum size")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (1 on a GPU cluster)")
    num_cpus: float = Field(0.5, gt=0, description="CPUs per actor (fractional on CPU, so read tasks still run)")
    threads: int | None = Field(None, ge=1, description="torch threads per actor (default: Ray's choice)")
    rows_per_shard: int = Field(256, ge=1, description="prediction rows per output shard")
    max_batches: int | None = Field(None, ge=1, description="stop after this many batches (smoke runs)")
    protocol: str = Field("both", description="scoring protocol: ecgbench, strict or both")
    progress_s: float = Field(10.0, description="seconds between progress lines")


class PredictorActor:
    """Loads ``vlm.Predictor`` once per actor; each call is ``vlm.predict_rows`` on a pandas batch."""

    def __init__(self, model: str, *, threads: int | None = None, **options):
        if threads:
            import torch

            torch.set_num_threads(threads)
        import vlm

        self.predictor = vlm.Predictor(model, **options)
        self._predict = vlm.predict_rows

    def __call__(self, batch):
        return self._predict(self.predictor, batch)


def _sample_files(cfg: EvaluateConfig) -> list[str]:
    from ecg import storage

    uri = storage.join(cfg.data, cfg.split) if cfg.split else cfg.data
    files = storage.list_files(uri, ".parquet")
    if not files:
        raise FileNotFoundError(f"no sample shards (*.parquet) under {uri}")
    return files


def build_dataset(cfg: EvaluateConfig, done: set[str]):
    """Sample rows not yet predicted -> prediction rows (a lazy Ray Dataset)."""
    import ray

    import pyarrow as pa

    from ecg import shards, storage

    fs, _ = storage.resolve(cfg.data)
    files = [shards.strip_scheme(f) for f in _sample_files(cfg)]
    ds = ray.data.read_parquet(files, filesystem=fs, columns=["id", "task", "image", "question", "answer"])
    tasks = set(cfg.tasks.split(",")) if cfg.tasks else None
    if done or tasks:
        done = pa.array(sorted(done), pa.string())  # one compact array shipped to every filter task
        ds = ds.map_batches(shards.keep_rows, fn_kwargs={"done": done, "tasks": tasks}, batch_format="pyarrow")
    if cfg.limit:
        ds = ds.limit(cfg.limit)
    options = {"adapter": cfg.adapter, "image_splitting": cfg.image_splitting, "longest_edge": cfg.longest_edge,
               "device": cfg.device, "dtype": cfg.dtype, "threads": cfg.threads}
    return ds.map_batches(
        PredictorActor, fn_constructor_args=(cfg.model,), fn_constructor_kwargs=options,
        compute=ray.data.ActorPoolStrategy(min_size=cfg.min_actors, max_size=cfg.max_actors),
        batch_size=cfg.batch_size, batch_format="pandas", num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus or None)


def run_predictions(cfg: EvaluateConfig, ds, pred_uri: str) -> dict:
    """Pull prediction batches, write atomic shards every ``rows_per_shard`` rows, print progress."""
    from ecg import shards
    from ecg.rows import PREDICTION_SCHEMA

    writer = shards.ShardWriter(pred_uri, rows_per_shard=cfg.rows_per_shard, schema=PREDICTION_SCHEMA)
    start = last = time.perf_counter()
    rows = errors = batches = 0
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        writer.add(batch)
        rows, batches = rows + batch.num_rows, batches + 1
        errors += batch.num_rows - batch.column("error").null_count
        if time.perf_counter() - last >= cfg.progress_s:
            last = time.perf_counter()
            print(f"evaluate: {rows} rows, {rows / (last - start):.2f} rows/s, {errors} errors", flush=True)
        if cfg.max_batches and batches >= cfg.max_batches:
            break
    writer.close()
    wall = time.perf_counter() - start
    return {"new_rows": rows, "new_errors": errors, "shards_written": writer.written, "predict_s": round(wall, 2),
            "rows_per_s": round(rows / wall, 3) if wall else None}


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(EvaluateConfig, argv, prog="ecgvlm evaluate", doc=__doc__)
    from ecg import shards, storage

    start = time.perf_counter()
    pred_uri = storage.join(cfg.out, "predictions")
    done, duplicates = shards.predicted_ids(pred_uri)
    started = ensure_ray()
    try:
        run = run_predictions(cfg, build_dataset(cfg, done), pred_uri)
    finally:
        if started:
            import ray

            ray.shutdown()
    results, totals = score(pred_uri, protocol=cfg.protocol)
    run.update(model=cfg.model, adapter=cfg.adapter, data=cfg.data, split=cfg.split, skipped=len(done),
               duplicates_dropped=duplicates, **totals, wall_s=round(time.perf_counter() - start, 2))
    storage.write_text(storage.join(cfg.out, "metrics.json"), json.dumps(results, indent=2, default=str))
    storage.write_text(storage.join(cfg.out, "run.json"), json.dumps(run, indent=2, default=str))
    report(results, cfg.out, pred_uri)
    print(f"evaluate: {run['new_rows']} new rows ({run['new_errors']} errors), {len(done)} already done, "
          f"{totals['rows']} predictions in all ({totals['errors']} errors), {run['wall_s']:.1f} s -> {cfg.out}",
          flush=True)
    return 0


def score(pred_uri: str, *, protocol: str) -> tuple[dict, dict]:
    """``({task: result}, {"rows": n, "errors": e})`` over the prediction shards, one row per id."""
    from ecg import shards
    from metrics import score_frame

    frame = shards.read_predictions(pred_uri)  # deduplicated by id; text columns only
    results = {task: score_frame(task, part.reset_index(drop=True), protocol=protocol)
               for task, part in frame.groupby("task", sort=True)}
    return results, {"rows": len(frame), "errors": int(frame["error"].notna().sum())}


def report(results: dict, out: str, pred_uri: str) -> None:
    try:
        from metrics.report import write_report
    except ImportError:  # the report module is optional for scoring; say so rather than fail the run
        print("evaluate: metrics.report not available; no report written", file=sys.stderr)
        return
    from ecg import shards

    write_report(results, out, shards.read_predictions(pred_uri).head(20))


if __name__ == "__main__":
    sys.exit(main())
