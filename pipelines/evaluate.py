"""``ecgvlm evaluate``: stream sample shards through a pool of predictors, write predictions, score, report.

    ecgvlm evaluate --model tiny --data ./data/synth --split test --out ./runs/eval
    ecgvlm evaluate --model ./runs/tiny/export --data s3://ecg/bench --out s3://ecg/eval --num-gpus 1 --max-actors 4
    ecgvlm evaluate --model openai:gpt-4o --api-base https://api.openai.com/v1 --data s3://ecg/bench --out s3://ecg/g4o

Reads ``<data>/<split>/*.parquet`` (or ``<data>`` itself), skips ids already in ``<out>/predictions/``
(resumable: rerun the same command after a crash), maps batches through ``stages.evaluation.PredictorActor`` (one
``vlm.Predictor`` per actor, ``vlm.predict_rows`` per batch) on an autoscaling actor pool (or, for
``openai:NAME``, through ``vlm.remote.EndpointStage`` on one actor that holds the endpoint's limits), writes the
prediction rows as shards named ``<run>-<k>.parquet``, each made visible only when complete. Then
``metrics.json``, ``run.json``, ``report.md`` and ``report.html`` beside them. The MLflow run opens at the start
(the config as params), follows the rows done and failed while predicting, then holds the metrics and the report.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Literal

from pydantic import ConfigDict, Field

from ecgconfig import error_exit, load_config
from vlm.remote import EndpointSettings


class EvaluateConfig(EndpointSettings):
    """Every setting of an evaluation; the endpoint settings (``--concurrency``, ``--retries``, ...) are
    ``vlm.remote.EndpointSettings``' fields, the one definition ``vlm.remote.EndpointConfig`` shares."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("tiny", description="tiny, a Hugging Face id, an export folder or random:PATH")
    adapter: str | None = Field(None, description="LoRA adapter folder on top of --model")
    engine: Literal["auto", "hf", "vllm", "openvino", "onnxruntime"] = Field(
        "auto", description="auto (the fastest installed for the device: openvino on a CPU where installed, else hf), "
                            "hf (transformers), vllm (needs ecgvlm[vllm]; no --adapter: merge it with the export "
                            "first), openvino (ecgvlm[openvino]) or onnxruntime (ecgvlm[onnxruntime]): "
                            "docs/cpu-engines.md")
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
    dtype: str = Field("auto", description="auto (bf16 on GPU, fp32 on CPU with hf; the CPU engines: bf16 where the "
                       "CPU has it), float32, bfloat16, int8 (CPU engines: int8 weights)")
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
    # decoding (every model); OpenAI-compatible endpoints (--model openai:NAME) also take EndpointSettings' fields
    decoding: Literal["ecgbench", "fast", "smolvlm-study"] = Field(
        "ecgbench", description="ecgbench = greedy, the paper's 1024 tokens per answer (a trained model stops at its "
                                "end token, so it costs nothing); fast = greedy, each task's short budget (smoke runs, "
                                "random-weight models, which never stop); smolvlm-study = the prior study's "
                                "generation: beam search, 4 beams, 32 tokens, one row at a time, its prompt for "
                                "CODE-15 (in-process models, --engine hf)")
    max_new_tokens: str | None = Field(None, description="per-task budgets over --decoding, e.g. code15=64,ecgqa=128")
    page_gate: Literal["flag", "reject", "off"] = Field(
        "flag", description="the ECG page check on every image (trace and grid structure, ~30 ms a page beside the model): flag = "
                            "predict every row and record its page_score / is_page; reject = a row that is not an ECG "
                            "page is not predicted, but recorded as an error 'not an ECG page'; off")
    page_threshold: float = Field(0.6, ge=0, le=1, description="page score at or above which an image is an ECG page")
    api_base: str | None = Field(None, description="openai:NAME: base URL of the chat-completions API")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai:NAME: environment variable holding the API key")
    price_input_per_mtok: float | None = Field(None, ge=0, description="USD per million prompt tokens (cost estimate)")
    price_output_per_mtok: float | None = Field(None, ge=0, description="USD per million completion tokens")
    compare: str | None = Field(None, description="earlier --out folders (comma-separated) whose CODE-15 rows the "
                                                  "report's comparison table shows, marked as run earlier")
    ray_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray started when none is running "
                                 "(None: every core)")
    max_error_rate: float = Field(0.5, ge=0, le=1, description="exit non-zero (after writing everything) when more "
                                  "than this fraction of the predictions are errors")
    tracking: str = Field("local", description="experiment tracking: 'local' (MLflow file store ./mlruns, or "
                          "$MLFLOW_TRACKING_URI), 'none', or an MLflow tracking URI; progress logged while predicting")

    def bundles(self) -> list[dict]:
        """The actor pool's minimum (it grows to ``max_actors`` where there is room) and one read task."""
        actor = {"CPU": self.num_cpus, "GPU": self.num_gpus, "memory": (self.memory_gb or 0) * 2**30}
        return [actor] * self.min_actors + [{"CPU": 0.1}]


# the flags --help lists first
MAIN = ("model", "data", "split", "out", "decoding", "tasks", "limit", "engine", "batch_size", "num_gpus",
        "max_actors")


def main(argv: list[str] | None = None) -> int:
    from pipelines import launch
    from stages import evaluation as ev

    cfg = load_config(EvaluateConfig, argv, prog="ecgvlm evaluate", doc=__doc__, main=MAIN,
                      endpoint=("api_base", "api_key_env", "price_input_per_mtok", "price_output_per_mtok"))
    # Predictor actors need not share the driver's working directory: local paths travel as absolute paths.
    cfg = launch.absolute_paths(cfg, "data", "out", "model", "adapter", "cache", outputs=("data", "out", "cache"))
    launch.check_paths("ecgvlm evaluate", model=cfg.model, adapter=cfg.adapter, data=cfg.data, split=cfg.split,
                       out=cfg.out)
    if cfg.decoding == "smolvlm-study" and (ev.endpoint_name(cfg.model) or cfg.engine not in ("hf", "auto")):
        print("ecgvlm evaluate: --decoding smolvlm-study searches beams in-process: it needs --engine hf and a "
              "model that is not openai:NAME", file=sys.stderr)
        return 2
    if not ev.endpoint_name(cfg.model):
        from vlm.cpu_engine import choose_engine

        engine, why = choose_engine(cfg.engine, model=cfg.model, device=cfg.device, num_gpus=cfg.num_gpus,
                                    decoding=cfg.decoding)  # fmt: skip
        print(f"evaluate: engine {engine} ({why})", flush=True)
        cfg = cfg.model_copy(update={"engine": engine})
    if ev.endpoint_name(cfg.model):
        try:  # a missing --api-base or key fails here, before any cluster starts
            ev.endpoint_config(cfg), ev.api_key(cfg)
        except ValueError as err:
            print(f"ecgvlm evaluate: {err}", file=sys.stderr)
            return 2
    import pyarrow as pa

    from ecg import shards, storage
    from metrics import tracking
    from metrics.report import earlier_runs, headline, write_report

    earlier = earlier_runs(cfg.compare)  # read first: a wrong folder fails now, not after the predictions
    start = time.perf_counter()
    pred_uri = storage.join(cfg.out, "predictions")
    done_ids, _ = shards.predicted_ids(pred_uri)
    done = pa.array(sorted(done_ids), pa.string())  # one compact array shipped to every filter task
    todo = ev.count_todo(cfg, done)
    described, images_run = ev.describe_images(cfg)
    print(f"evaluate: {todo} rows to predict, {len(done)} already in {pred_uri}; {described}", flush=True)
    tracked = tracking.track(cfg.tracking, experiment="ecgvlm-evaluate", run_name=cfg.model, config=cfg.model_dump())
    started = False  # nothing left to predict: no cluster, no model load
    with tracked:  # a job that fails ends its MLflow run as FAILED
        if todo:
            started = launch.start(cfg.bundles(), what="ecgvlm evaluate", num_cpus=cfg.ray_cpus,
                                   hint="min_actors, num_cpus, num_gpus, memory_gb (or ray_cpus for a local Ray)")
        try:
            run = ev.run_predictions(cfg, ev.build_dataset(cfg, done) if todo else None, pred_uri, todo,
                                     report=lambda n, failed: tracking.log_progress(tracked, n, failed))
            results, totals = score(pred_uri, protocol=cfg.protocol)
            for warning in name_the_data(cfg, results, pred_uri):
                print(f"evaluate: WARNING {warning}", file=sys.stderr, flush=True)
        finally:
            if started:
                import ray

                ray.shutdown()
        run = ev.run_record(cfg, run, results, totals, skipped=len(done), images=images_run, start=start)
        storage.write_text(storage.join(cfg.out, "metrics.json"), json.dumps(results, indent=2, default=str))
        storage.write_text(storage.join(cfg.out, "run.json"), json.dumps(run, indent=2, default=str))
        write_report(results, cfg.out, shards.read_predictions(pred_uri, first_files=1).head(20), run=run,
                     earlier=earlier)
        reports = {name: storage.read_text(storage.join(cfg.out, name)) for name in ("report.md", "report.html")}
        tracking.log_evaluation(tracked, results, run, reports)
    tracked.close()
    print(f"evaluate: {run['new_rows']} new rows ({run['new_errors']} errors), {len(done)} already done, "
          f"{totals['rows']} predictions in all ({totals['errors']} errors), {run['wall_s']:.1f} s -> {cfg.out}",
          flush=True)
    gate = run["page_gate"]
    if gate["not_pages"]:
        print(f"evaluate: {gate['not_pages']} of {gate['checked']} images are not an ECG page (page gate: "
              f"{'recorded as errors' if cfg.page_gate == 'reject' else 'predicted, flagged is_page=false'})",
              file=sys.stderr, flush=True)
    print(f"\n{headline(results)}\n\nreport: {storage.join(cfg.out, 'report.html')}", flush=True)
    return error_exit("evaluate", totals["errors"], totals["rows"], cfg.max_error_rate)


def name_the_data(cfg: EvaluateConfig, results: dict, pred_uri: str) -> list[str]:
    """Each task's result says what its references are (``data``) and how many of its ids the model trained on."""
    from ecg import provenance, shards

    frame = shards.read_predictions(pred_uri, columns=["id", "task"])
    ids = frame.groupby("task")["id"].apply(list).to_dict() if len(frame) else {}
    return provenance.annotate(results, data_uri=cfg.data, split=cfg.split, model=cfg.model, ids_by_task=ids)


def score(pred_uri: str, *, protocol: str) -> tuple[dict, dict]:
    """``({task: result}, {"rows": n, "errors": e, "duplicates_dropped": d})``, one prediction per id: scored on the
    driver (``metrics.score_frame``), or, for a large set, by the Ray reduction (``pipelines.score.score_dataset``)."""
    from metrics.score import score_predictions
    from pipelines.score import score_dataset

    return score_predictions(pred_uri, protocol=protocol, reduce=score_dataset)


if __name__ == "__main__":
    sys.exit(main())
