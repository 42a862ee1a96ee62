"""``ecgvlm train``: fine-tune a model on sample shards with Ray Train (TorchTrainer, DDP on gloo or NCCL).

    ecgvlm train --model tiny --data ./data/synth --out ./runs/tiny --config configs/tiny-code15.yaml
    python -m pipelines.train --config configs/train-smolvlm-lora.yaml --data s3://ecg/synth --out s3://ecg/runs/a

Flow: Ray Data reads ``<data>/train`` and encodes rows in CPU actors that load the processor only
(``vlm.load_processor``; decode once, the model's image recipe, processor, answer-only labels:
``vlm.training.encode_rows``). Encoded rows that fit the cache budget are materialized once; bigger data is
streamed, re-encoded every epoch, so nothing per-row outlives its batch (the log says which, and why)
(``stages.ingest``). Each worker (``stages.raytrain``) iterates its shard with ``vlm.training.Collator`` and runs
``vlm.finetune.train_loop``. Checkpoints go to ``<out>/checkpoints/<name>`` through ``ray.train.report``;
rerunning the same command resumes from the latest one. Rank 0 validates on ``<data>/val`` (each row scored with
its own task), logs the loss and each validation to MLflow as they happen, and writes ``<out>/export``
(``vlm.load``-able, its ``ecgvlm.json`` recording the image settings) and ``<out>/train_summary.json``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ecg import storage

TEXT_ATTENTION = r".*(text_model|language_model).*\.(q_proj|k_proj|v_proj|o_proj)"  # vlm.finetune's


class TrainConfig(BaseModel):
    """Every setting of a training run; the YAML files in configs/ and command-line flags fill it."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("tiny", description="tiny, tiny:FAMILY, a Hugging Face id, a local folder or random:PATH")
    data: str = Field(..., description="sample shards (local folder or s3://) with train/ and val/ Parquet")
    out: str = Field(..., description="run folder (local or s3://): checkpoints/, export/, train_summary.json")
    task: str = Field("code15", description="headline task of validation (each val row is scored with its own)")
    name: str = Field("train", description="run name under <out>/checkpoints; the same name resumes")
    tiny: dict[str, Any] = Field(default_factory=dict, description="overrides of the tiny model's size "
                                 "(image_size, patch_size, ...; --model tiny only)")
    config_overrides: dict[str, Any] = Field(default_factory=dict, description="nested config fields for a "
                                             "random:PATH model, e.g. {text_config: {num_hidden_layers: 2}}")
    image_splitting: bool | None = Field(None, description="processor image splitting (None: the model's own; "
                                         "SmolVLM: on, 17 tiles per page); the export records it")
    longest_edge: int | None = Field(None, ge=1, description="px pages are resized to (None: the model's own)")
    finetune: Literal["lora", "full"] = Field("lora", description="LoRA adapters or full fine-tuning")
    lora_rank: int = Field(8, ge=1, description="LoRA rank r")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha (scale = alpha / r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    lora_targets: str | list[str] = Field(TEXT_ATTENTION, description="modules with adapters (regex or names)")
    freeze_vision: bool = Field(True, description="keep the vision tower frozen (False trains it)")
    patch_init: Literal["random", "pca"] = Field("random", description="a from-scratch model's patch filters: as "
                                                 "built, or the whitened principal patches of the train pages")
    followups: bool = Field(False, description="also train on the questions a row asks after its answer "
                            "(meta['followups']: the measurements of synthetic records), loss on their replies")
    lr: float = Field(2e-4, gt=0, description="peak learning rate (AdamW)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on matrices")
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="fraction of the run with linear warmup")
    cosine: bool = Field(True, description="cosine decay after warmup (else constant)")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="final lr as a fraction of the peak")
    batch_size: int = Field(8, ge=1, description="rows per micro-batch per worker")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps (None: from epochs)")
    epochs: float | None = Field(1.0, gt=0, description="passes over train rows when max_steps is None")
    max_minutes: float | None = Field(None, gt=0, description="wall-clock bound; the lr schedule follows it too")
    train_rows: int | None = Field(None, ge=1, description="use only the first N train rows")
    val_rows: int = Field(200, ge=0, description="val rows generated and scored at each validation (0: none)")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP when > 1)")
    use_gpu: bool = Field(False, description="one GPU per worker")
    cpus_per_worker: float | None = Field(None, gt=0, description="Ray CPUs reserved per worker (fractions leave "
                                          "room; None: 1, scaled down on a local Ray so the workers fit)")
    threads_per_worker: int | None = Field(None, ge=1, description="torch threads (None: cores / workers)")
    encode_actors: int = Field(1, ge=1, description="Ray Data actors that encode rows (encode_cpus each)")
    encode_cpus: float | None = Field(None, gt=0, description="CPUs per encode actor (None: 0.5, scaled down with "
                                      "cpus_per_worker)")
    cache: Literal["auto", "memory", "stream"] = Field("auto", description="encoded rows: materialized once "
                                                       "(memory), re-encoded every epoch (stream), or by size")
    cache_gb: float | None = Field(None, gt=0, description="auto: cache when the encoded rows' estimate is under "
                                   "this (None: a quarter of the object store)")
    bf16: bool | Literal["auto"] | None = Field(None, description="bf16 autocast (None: on with a GPU; auto: also on "
                                                "a CPU that computes bf16 natively, AVX-512 BF16 or AMX)")
    gradient_checkpointing: bool | None = Field(None, description="recompute activations (None: on with a GPU)")
    log_every: int = Field(50, ge=1, description="steps between progress lines")
    checkpoint_every: int = Field(200, ge=1, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept in storage")
    validate_every: int | None = Field(500, ge=1, description="steps between validations (None: only at the end)")
    seed: int = Field(0, description="torch seed for adapters, dropout and data order")
    ray_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray started when none is running "
                                 "(None: every core)")
    object_store_gb: float | None = Field(None, gt=0, description="object store of that local Ray (None: Ray's)")
    stop_after_steps: int | None = Field(None, ge=1, description="tests: stop like a crash after N steps of a run")
    max_error_rate: float = Field(0.5, ge=0, le=1, description="exit non-zero (after writing everything) when more "
                                  "than this fraction of the train rows failed to encode")
    tracking: str = Field("local", description="experiment tracking: 'local' (MLflow file store ./mlruns, or "
                          "$MLFLOW_TRACKING_URI), 'none', or an MLflow tracking URI; the loss and each validation "
                          "are logged as they happen")

    @model_validator(mode="after")
    def _patch_init_from_scratch(self) -> "TrainConfig":
        scratch = self.model == "tiny" or self.model.startswith("random:")  # SmolVLM's vision tower, from scratch
        if self.patch_init == "pca" and not (scratch and self.finetune == "full" and not self.freeze_vision):
            raise ValueError("patch_init: pca replaces the patch filters, so it is for a from-scratch model of the "
                             "SmolVLM architecture (tiny or random:PATH) with finetune: full and freeze_vision: false")
        return self

    def bundles(self) -> list[dict]:
        """What must run at once: the workers and the encode actors (Ray Data's read tasks share their CPUs)."""
        worker = {"CPU": self.cpus_per_worker or 1.0, "GPU": 1.0 if self.use_gpu else 0.0}
        return [worker] * self.num_workers + [{"CPU": self.encode_cpus or 0.5}]


def parse_config(argv: list[str] | None) -> TrainConfig:
    """``--config FILE.yaml`` then flags (``ecgconfig``), local paths made absolute."""
    from pipelines import launch
    from ecgconfig import load_config

    # Ray Train runs each worker in its own run folder: local paths travel as absolute paths.
    cfg = load_config(TrainConfig, argv, prog="ecgvlm train", doc=__doc__,
                      main=("model", "data", "out", "task", "finetune", "max_steps", "epochs", "max_minutes",
                            "batch_size", "lr", "num_workers", "use_gpu"))
    cfg = launch.absolute_paths(cfg, "data", "out", "model")
    if cfg.followups and cfg.model == "tiny":  # the from-scratch tokenizer learns the follow-ups' words too
        cfg.tiny = {**cfg.tiny, "measurements": True}
    return cfg


def worker(c: dict) -> None:
    """The Ray Train worker: the job's config back from its dict, then ``stages.raytrain.run_worker``."""
    from stages.raytrain import EXTRA, run_worker

    run_worker(TrainConfig(**{k: v for k, v in c.items() if k not in EXTRA}), c)


def run(cfg: TrainConfig) -> dict:
    """Train, checkpoint, validate and export; returns the summary written to ``<out>/train_summary.json``."""
    import ray

    from metrics import tracking
    from pipelines import launch
    from stages.ingest import datasets_for
    from stages.raytrain import fit

    store = int(cfg.object_store_gb * 2**30) if cfg.object_store_gb else None
    local = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
    if local:  # the controller polls its workers every 2 s by default: whole seconds of a short laptop fit
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # read by the Ray this job starts
    cpus = launch.cpu_shares(cfg.num_workers, cfg.cpus_per_worker, cfg.encode_cpus,
                             total=(cfg.ray_cpus or os.cpu_count() or 1) if local else None)  # fmt: skip
    if (cpus["cpus_per_worker"], cpus["encode_cpus"]) != (cfg.cpus_per_worker, cfg.encode_cpus):
        print(f"train: CPU shares {cpus['cpus_per_worker']:g} per worker x {cfg.num_workers} + {cpus['encode_cpus']:g} "
              f"for encoding{' (scaled to fit the local Ray)' if cpus['scaled'] else ''}", flush=True)
    cfg = cfg.model_copy(update={k: cpus[k] for k in ("cpus_per_worker", "encode_cpus")})
    started = launch.start(cfg.bundles(), what="ecgvlm train", num_cpus=cfg.ray_cpus, object_store_memory=store,
                           hint="num_workers, cpus_per_worker, use_gpu, encode_cpus (or ray_cpus for a local Ray)")
    # the MLflow run opens now, with the config as params; rank 0 logs the curves into it while training runs
    tracked = tracking.track(cfg.tracking, experiment="ecgvlm-train", run_name=cfg.name, config=cfg.model_dump())
    try:
        with tracked:  # a job that fails, here or in a worker, ends its MLflow run as FAILED
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False  # progress lines come from the loop; bars would bury them
            ctx.enable_operator_progress_bars = False
            datasets, n_train, ingest = datasets_for(cfg)
            print(f"train rows: {n_train}; val rows: {datasets['val'].count() if 'val' in datasets else 0}",
                  flush=True)
            result = fit(cfg, worker, datasets, n_train=n_train, ingest=ingest, tracked=tracked.handle())
            summary = json.loads(storage.read_text(storage.join(cfg.out, "train_summary.json")))
            if summary.get("export"):  # evaluation warns when it meets these ids again
                record_training_ids(cfg.data, summary["export"])
            tracking.log_training(tracked, summary)
    finally:
        if started:
            ray.shutdown()
    tracked.close(ok=not summary["interrupted"])
    print(f"done: step {summary['step']} (started at {summary['start_step']}), last loss {summary['last_loss']}, "
          f"{summary.get('failed_rows', 0)} rows failed to encode, validation {summary.get('validation')}, "
          f"export {summary.get('export')}, checkpoint {result.checkpoint.path if result.checkpoint else None}",
          flush=True)
    return summary


def record_training_ids(data: str, export: str) -> None:
    """The train split's ids, hashed, beside the export (``ecg.provenance``)."""
    from ecg import provenance, shards

    ds = shards.parquet_dataset(storage.join(data, "train"))
    ids = ds.to_table(columns=["id"]).column("id").to_pylist() if ds is not None else []
    provenance.write_training_ids(export, ids, data=data, split="train")


def main(argv: list[str] | None = None) -> int:
    from ecgconfig import error_exit

    from pipelines import launch

    cfg = parse_config(argv)
    launch.check_paths("ecgvlm train", model=cfg.model, data=cfg.data, split="train", out=cfg.out)
    summary = run(cfg)
    return error_exit("train", summary.get("failed_rows", 0), summary.get("train_rows", 0), cfg.max_error_rate)


if __name__ == "__main__":
    sys.exit(main())
