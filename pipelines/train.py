"""``ecgvlm train``: fine-tune a model on sample shards with Ray Train (TorchTrainer, DDP on gloo or NCCL).

    ecgvlm train --model tiny --data ./data/synth --out ./runs/tiny --config configs/tiny-code15.yaml
    python -m pipelines.train --config configs/train-smolvlm-lora.yaml --data s3://ecg/synth --out s3://ecg/runs/a

Flow: Ray Data reads ``<data>/train`` and encodes rows in CPU actors that load the processor only
(``vlm.load_processor``; decode once, the model's image recipe, processor, answer-only labels:
``vlm.training.encode_rows``). Encoded rows that fit the cache budget are materialized once; bigger data is
streamed, re-encoded every epoch, so nothing per-row outlives its batch (the log says which, and why). Each
worker iterates its shard with ``vlm.training.Collator`` and runs ``vlm.finetune.train_loop``. Checkpoints go
to ``<out>/checkpoints/<name>`` through ``ray.train.report``; rerunning the same command resumes from the
latest one. Rank 0 validates on ``<data>/val`` (each row scored with its own task) and writes ``<out>/export``
(``vlm.load``-able, its ``ecgvlm.json`` recording the image settings) and ``<out>/train_summary.json``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ecg import storage

TEXT_ATTENTION = r".*text_model.*\.(q_proj|k_proj|v_proj|o_proj)"


class TrainConfig(BaseModel):
    """Every setting of a training run; the YAML files in configs/ and command-line flags fill it."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("tiny", description="'tiny', a Hugging Face id, a local folder or 'random:PATH' (vlm.load)")
    data: str = Field(..., description="sample shards (local folder or s3://) with train/ and val/ Parquet")
    out: str = Field(..., description="run folder (local or s3://): checkpoints/, export/, train_summary.json")
    task: str = Field("code15", description="headline task of validation (each val row is scored with its own)")
    name: str = Field("train", description="run name under <out>/checkpoints; the same name resumes")
    tiny: dict[str, Any] = Field(default_factory=dict, description="vlm.tiny.TinySpec overrides (model 'tiny' only)")
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
    cpus_per_worker: float = Field(1.0, gt=0, description="Ray CPUs reserved per worker (fractions leave room)")
    threads_per_worker: int | None = Field(None, ge=1, description="torch threads (None: cores / workers)")
    encode_actors: int = Field(1, ge=1, description="Ray Data actors that encode rows (encode_cpus each)")
    encode_cpus: float = Field(0.5, gt=0, description="CPUs per encode actor")
    cache: Literal["auto", "memory", "stream"] = Field("auto", description="encoded rows: materialized once "
                                                       "(memory), re-encoded every epoch (stream), or by size")
    cache_gb: float | None = Field(None, gt=0, description="auto: cache when the encoded rows' estimate is under "
                                   "this (None: a quarter of the object store)")
    bf16: bool | None = Field(None, description="bf16 autocast (None: on with a GPU)")
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

    def bundles(self) -> list[dict]:
        """What must run at once: the workers and the encode actors (Ray Data's read tasks share their CPUs)."""
        worker = {"CPU": self.cpus_per_worker, "GPU": 1.0 if self.use_gpu else 0.0}
        return [worker] * self.num_workers + [{"CPU": self.encode_cpus}]


def parse_config(argv: list[str] | None) -> TrainConfig:
    """``--config FILE.yaml`` then flags (``pipelines.config``), local paths made absolute."""
    from pipelines import launch
    from pipelines.config import load_config

    # Ray Train runs each worker in its own run folder: local paths travel as absolute paths.
    cfg = load_config(TrainConfig, argv, prog="ecgvlm train", doc=__doc__)
    return launch.absolute_paths(cfg, "data", "out", "model")


class Encode:
    """Ray Data stage: sample rows -> encoded training rows (``vlm.training.encode_rows``), the processor loaded once
    per actor (no model weights). A row that fails keeps its place with an ``error``; the workers count it."""

    def __init__(self, model: str, tiny: dict, image_splitting: bool | None, longest_edge: int | None):
        from vlm.load import load_processor

        self.loaded = load_processor(model, tiny=tiny or None, image_splitting=image_splitting,
                                     longest_edge=longest_edge)

    def __call__(self, batch):
        from vlm.training import encode_rows

        return encode_rows(self.loaded, batch)


def _setup(cfg: TrainConfig, rank: int):
    """Model with its trainable parameters, DDP-wrapped and on the worker's device; optimizer; restored state."""
    import ray.train
    import ray.train.torch

    from vlm import finetune as ft

    loaded = ft.load_for_training(cfg.model, tiny=cfg.tiny or None, image_splitting=cfg.image_splitting,
                                  longest_edge=cfg.longest_edge, config_overrides=cfg.config_overrides or None)
    if rank == 0:
        print(f"train: {loaded.describe_images()}", flush=True)
    model = ft.configure_trainable(loaded.model, mode=cfg.finetune, lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                   lora_dropout=cfg.lora_dropout, lora_targets=cfg.lora_targets,
                                   freeze_vision=cfg.freeze_vision)
    if cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else cfg.use_gpu:
        ft.enable_gradient_checkpointing(model)
    model = ray.train.torch.prepare_model(model)  # DDP when world > 1; moves to the worker's device
    opt = ft.build_optimizer(model, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    state = ft.LoopState()
    if (ckpt := ray.train.get_checkpoint()) is not None:  # the latest checkpoint of this run name in storage
        with ckpt.as_directory() as d:
            state = ft.load_checkpoint(d, model, opt)
        if rank == 0:
            print(f"resuming from checkpoint at step {state.step} ({ckpt.path})", flush=True)
    return loaded, model, opt, state


def _hooks(cfg: TrainConfig, loaded, model, opt, rank: int, has_val: bool):
    """Progress lines, collective checkpoint reports (rank 0 attaches the files), validation on rank 0."""
    import pandas as pd
    import ray.train

    from vlm import finetune as ft

    validator = None

    def validate(st):
        nonlocal validator
        if rank != 0 or not has_val:  # every rank calls; rank 0 alone generates and scores
            return None
        if validator is None:
            it = ray.train.get_dataset_shard("val").iter_batches(batch_size=64, batch_format="pandas")
            from vlm.validation import Validator

            validator = Validator(loaded, model, pd.concat(list(it), ignore_index=True), task=cfg.task)
        result = validator(st)
        print(f"validation at step {st.step}: " + " ".join(f"{k} {v:.1f}" for k, v in result.items()), flush=True)
        return result

    def checkpoint(st):
        metrics = {"step": st.step, "loss": st.losses[-1][1] if st.losses else float("nan")}
        if st.validations:
            metrics.update({f"val_{k}": v for k, v in st.validations[-1].items() if k != "step"})
        with tempfile.TemporaryDirectory() as d:
            if rank == 0:
                ft.save_checkpoint(d, model, opt, st)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d) if rank == 0 else None)

    return ft.Hooks(log=lambda line: print(line, flush=True), checkpoint=checkpoint, validate=validate)


def _peak_rss_mib() -> float:
    """This process's peak resident memory, MiB (Linux reports KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def worker(c: dict) -> None:
    """The Ray Train worker: set up, resume, run ``vlm.finetune.train_loop``, validate, checkpoint, export."""
    import dataclasses
    import math

    import ray.train
    import torch

    from vlm import finetune as ft

    cfg = TrainConfig(**{k: v for k, v in c.items() if k not in ("n_train", "has_val", "ingest")})
    n_train, has_val = c["n_train"], c.get("has_val", True)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.threads_per_worker or max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(cfg.seed + rank)
    loaded, model, opt, state = _setup(cfg, rank)
    per_step = cfg.batch_size * cfg.grad_accum * world
    max_steps = cfg.max_steps or max(1, math.ceil((cfg.epochs or 1.0) * n_train / per_step))
    if rank == 0 and state.step == 0:
        trainable, total = ft.count_parameters(model)
        print(f"training {cfg.model} ({cfg.finetune}): {trainable:,} of {total:,} parameters, {world} worker(s), "
              f"{n_train} rows, {per_step} rows/step, up to {max_steps} steps / {cfg.max_minutes} min", flush=True)
    shard = ray.train.get_dataset_shard("train")
    collators: dict[int, ft.Collator] = {}  # per epoch: rows that failed to encode, counted once per pass

    def batches(epoch: int):
        collate = collators.setdefault(epoch, ft.Collator.for_loaded(loaded))
        return shard.iter_torch_batches(batch_size=cfg.batch_size, collate_fn=collate, drop_last=True,
                                        local_shuffle_buffer_size=max(4 * cfg.batch_size, 64),
                                        local_shuffle_seed=cfg.seed + 1000 * epoch + rank)

    settings = ft.LoopSettings(
        max_steps=max_steps, max_minutes=cfg.max_minutes, lr=cfg.lr, warmup_fraction=cfg.warmup_fraction,
        min_lr_ratio=cfg.min_lr_ratio, cosine=cfg.cosine, grad_accum=cfg.grad_accum, clip=1.0,
        bf16=cfg.bf16 if cfg.bf16 is not None else cfg.use_gpu, log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every, validate_every=cfg.validate_every,
        stop_after_steps=cfg.stop_after_steps)
    hooks = _hooks(cfg, loaded, model, opt, rank, has_val)
    state = ft.train_loop(model, opt, batches, settings, state, hooks)
    summary = {"step": state.step, "start_step": state.start_step, "interrupted": state.interrupted,
               "minutes": round(state.elapsed_s / 60, 2), "samples": state.samples, "epochs": state.epoch,
               "losses": state.losses, "last_loss": state.losses[-1][1] if state.losses else None,
               "first_loss": state.losses[0][1] if state.losses else None, "workers": world,
               # rows that failed to encode in one pass over the data, over all workers (each is named on stderr)
               "failed_rows": int(ft._reduce(max((c.failed for c in collators.values()), default=0), "sum")),
               "images": loaded.images.to_dict(), "ingest": c.get("ingest"), "peak_rss_mib": _peak_rss_mib()}
    if not state.interrupted:
        if not state.validations or state.validations[-1]["step"] != state.step:
            ft.run_validation(model, state, hooks)  # every rank calls; rank 0 computes
        if state.step % cfg.checkpoint_every:
            hooks.checkpoint(state)
        summary.update(validation=state.validations[-1] if state.validations else None, validations=state.validations)
        if rank == 0:
            summary["export"] = storage.join(cfg.out, "export")
            with tempfile.TemporaryDirectory() as d:
                import vlm

                vlm.export(dataclasses.replace(loaded, model=ft.unwrap(model).eval()), d, merge_adapter=True)
                storage.upload_dir(d, summary["export"])
    if rank == 0:
        storage.write_text(storage.join(cfg.out, "train_summary.json"), json.dumps(summary, indent=1))


def _read(cfg: TrainConfig, split: str):
    import ray

    fs, path = storage.resolve(storage.join(cfg.data, split))
    return ray.data.read_parquet(path, filesystem=fs).select_columns(["id", "task", "image", "question", "answer", "meta"])


def _ingest(cfg: TrainConfig, train, n_rows: int) -> str:
    """"memory" or "stream": cache the encoded rows when their estimated size fits the budget (a few rows are
    encoded here to measure it). Prints the decision with its figures."""
    import ray

    from vlm.load import load_processor
    from vlm.training import encode_rows, encoded_nbytes

    store = ray.cluster_resources().get("object_store_memory", 0.0)
    budget = cfg.cache_gb * 2**30 if cfg.cache_gb else store / 4
    sample = train.limit(4).to_pandas()
    per_row = encoded_nbytes(encode_rows(load_processor(cfg.model, tiny=cfg.tiny or None,
                                                        image_splitting=cfg.image_splitting,
                                                        longest_edge=cfg.longest_edge), sample)) / max(1, len(sample))
    total = per_row * n_rows
    mode = cfg.cache if cfg.cache != "auto" else ("memory" if total <= budget else "stream")
    how = ("materialized once, every epoch reads the cache" if mode == "memory" else
           "streamed: Ray Data re-encodes the rows every epoch, nothing per-row is kept")
    print(f"train ingest: {n_rows} rows x ~{per_row / 2**20:.2f} MiB encoded = ~{total / 2**30:.2f} GiB; "
          f"cache budget {budget / 2**30:.2f} GiB (object store {store / 2**30:.2f} GiB, cache={cfg.cache}): {how}",
          flush=True)
    return mode


def _datasets(cfg: TrainConfig):
    """``(datasets, n_train, ingest)``: the encoded train dataset (materialized or streamed) and the val rows."""
    import ray

    train = _read(cfg, "train")
    if cfg.train_rows:
        train = train.limit(cfg.train_rows)
    n_train = train.count()  # Parquet metadata: no rows are read
    if n_train == 0:
        raise ValueError(f"{cfg.data}/train: no rows")
    mode = _ingest(cfg, train, n_train)
    encoded = train.map_batches(
        Encode, fn_constructor_kwargs={"model": cfg.model, "tiny": cfg.tiny, "image_splitting": cfg.image_splitting,
                                       "longest_edge": cfg.longest_edge},
        batch_size=max(1, min(cfg.batch_size, 16)), batch_format="pandas", num_cpus=cfg.encode_cpus,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cfg.encode_actors))
    datasets = {"train": encoded.materialize() if mode == "memory" else encoded}
    if cfg.val_rows and storage.list_files(storage.join(cfg.data, "val"), ".parquet"):
        datasets["val"] = _read(cfg, "val").limit(cfg.val_rows).materialize()
    return datasets, n_train, mode


def run(cfg: TrainConfig) -> dict:
    """Train, checkpoint, validate and export; returns the summary written to ``<out>/train_summary.json``."""
    import ray
    from ray.train import CheckpointConfig, DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines import launch

    store = int(cfg.object_store_gb * 2**30) if cfg.object_store_gb else None
    started = launch.start(cfg.bundles(), what="ecgvlm train", num_cpus=cfg.ray_cpus, object_store_memory=store,
                           hint="num_workers, cpus_per_worker, use_gpu, encode_cpus (or ray_cpus for a local Ray)")
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # progress lines come from the loop; bars would bury them
        ctx.enable_operator_progress_bars = False
        datasets, n_train, ingest = _datasets(cfg)
        print(f"train rows: {n_train}; val rows: {datasets['val'].count() if 'val' in datasets else 0}", flush=True)
        storage_uri = storage.join(cfg.out, "checkpoints")
        fs, path = storage.resolve(storage_uri)
        if not storage.is_s3(storage_uri):
            os.makedirs(path, exist_ok=True)
        trainer = TorchTrainer(
            worker,
            train_loop_config={**cfg.model_dump(), "n_train": n_train, "has_val": "val" in datasets, "ingest": ingest},
            scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                         resources_per_worker={"CPU": cfg.cpus_per_worker}),
            run_config=RunConfig(name=cfg.name, storage_path=path, storage_filesystem=fs,
                                 checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints)),
            datasets=datasets,
            dataset_config=DataConfig(datasets_to_split=["train"]),
        )
        result = trainer.fit()
    finally:
        if started:
            ray.shutdown()
    summary = json.loads(storage.read_text(storage.join(cfg.out, "train_summary.json")))
    print(f"done: step {summary['step']} (started at {summary['start_step']}), last loss {summary['last_loss']}, "
          f"{summary.get('failed_rows', 0)} rows failed to encode, validation {summary.get('validation')}, "
          f"export {summary.get('export')}, checkpoint {result.checkpoint.path if result.checkpoint else None}",
          flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
