"""Fine-tuning on Ray Train: ``fit`` builds the TorchTrainer (checkpoints in ``<out>/checkpoints/<name>``, the
same name resumes) and runs ``run_worker`` on every worker: set up, resume, ``vlm.finetune.train_loop``, validate,
checkpoint, export. The datasets it iterates come from ``stages.ingest``. ``cfg`` is ``ecgvlm train``'s
``TrainConfig`` (any object with its fields).

Example (what ``pipelines/train.py`` does)::

    datasets, n_train, ingest = stages.ingest.datasets_for(cfg)
    result = fit(cfg, worker, datasets, n_train=n_train, ingest=ingest, tracked=run.handle())

Rank 0 logs the loss at every logging step and each validation into the job's MLflow run as they happen
(``metrics.tracking.attach``): the loss is known there at once, while Ray Train's reports are collective and
carry checkpoints, so reaching the driver through them would add a barrier on every rank at every logging step.
"""

from __future__ import annotations

import json
import os
import tempfile

from ecg import storage
from stages.ingest import EpochBatches

EXTRA = ("n_train", "has_val", "ingest", "tracked")  # what fit adds to the job's config for its workers


def _setup(cfg, rank: int, patch_filters: dict | None = None):
    """Model with its trainable parameters, DDP-wrapped and on the worker's device; optimizer; restored state.
    ``patch_filters`` (``stages.ingest.patch_filters``) replace the built patch embedding's (a checkpoint, when there
    is one, then restores the trained weights over them)."""
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
    if patch_filters is not None:
        from vlm.patch_init import set_patch_filters

        set_patch_filters(model, patch_filters["weight"], patch_filters["bias"])
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


def _hooks(cfg, loaded, model, opt, rank: int, has_val: bool, tracked):
    """Progress lines, collective checkpoint reports (rank 0 attaches the files), validation on rank 0, and the
    live MLflow curves (``tracked``: the job's run on rank 0, an inactive one elsewhere)."""
    import pandas as pd
    import ray.train

    from metrics import tracking
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
        tracking.log_losses(tracked, [], [{"step": st.step, **result}])
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

    return ft.Hooks(log=lambda line: print(line, flush=True), checkpoint=checkpoint, validate=validate,
                    logged=lambda st: tracking.log_losses(tracked, st.losses[-1:]))


def _peak_rss_mib() -> float:
    """This process's peak resident memory, MiB (Linux reports KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_worker(cfg, c: dict) -> None:
    """One Ray Train worker: set up, resume, run ``vlm.finetune.train_loop``, validate, checkpoint, export, and
    (rank 0) write ``<out>/train_summary.json``. ``c`` is the train loop config :func:`fit` made (its ``EXTRA``)."""
    import dataclasses
    import math

    import ray.train
    import torch

    from vlm import finetune as ft

    from metrics import tracking

    n_train, has_val = c["n_train"], c.get("has_val", True)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.threads_per_worker or max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(cfg.seed + rank)
    loaded, model, opt, state = _setup(cfg, rank, c["ingest"].get("patch_filters"))
    per_step = cfg.batch_size * cfg.grad_accum * world
    max_steps = cfg.max_steps or max(1, math.ceil((cfg.epochs or 1.0) * n_train / per_step))
    bf16 = ft.autocast_bf16(cfg.bf16, cfg.use_gpu)
    if rank == 0 and state.step == 0:
        trainable, total = ft.count_parameters(model)
        print(f"training {cfg.model} ({cfg.finetune}): {trainable:,} of {total:,} parameters, {world} worker(s), "
              f"{n_train} rows, {per_step} rows/step, up to {max_steps} steps / {cfg.max_minutes} min"
              f"{', bf16 autocast' if bf16 else ''}", flush=True)
    epochs = EpochBatches(ray.train.get_dataset_shard("train"), c["ingest"], batch_size=cfg.batch_size,
                          seed=cfg.seed, rank=rank)
    collators: dict[int, ft.Collator] = {}  # per epoch: rows that failed to encode, counted once per pass

    def batches(epoch: int):
        return epochs(epoch, collators.setdefault(epoch, ft.Collator.for_loaded(loaded)))

    settings = ft.LoopSettings(
        max_steps=max_steps, max_minutes=cfg.max_minutes, lr=cfg.lr, warmup_fraction=cfg.warmup_fraction,
        min_lr_ratio=cfg.min_lr_ratio, cosine=cfg.cosine, grad_accum=cfg.grad_accum, clip=1.0,
        bf16=bf16, log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every, validate_every=cfg.validate_every,
        stop_after_steps=cfg.stop_after_steps)
    tracked = tracking.attach(c.get("tracked") if rank == 0 else None)
    tracking.log_losses(tracked, state.losses, state.validations)  # a resumed run's restored curve
    hooks = _hooks(cfg, loaded, model, opt, rank, has_val, tracked)
    state = ft.train_loop(model, opt, batches, settings, state, hooks)
    summary = {"step": state.step, "start_step": state.start_step, "interrupted": state.interrupted,
               "minutes": round(state.elapsed_s / 60, 2), "samples": state.samples, "epochs": state.epoch,
               "losses": state.losses, "last_loss": state.losses[-1][1] if state.losses else None,
               "first_loss": state.losses[0][1] if state.losses else None, "workers": world,
               # rows that failed to encode in one pass over the data, over all workers (each is named on stderr)
               "failed_rows": int(ft._reduce(max((c.failed for c in collators.values()), default=0), "sum")),
               "train_rows": n_train, "images": loaded.images.to_dict(), "ingest": c["ingest"]["mode"],
               "ingest_row_mib": c["ingest"]["row_mib"], "peak_rss_mib": _peak_rss_mib(),
               "patch_init": (c["ingest"].get("patch_filters") or {}).get("stats")}
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


def fit(cfg, worker, datasets: dict, *, n_train: int, ingest: dict, tracked: dict | None):
    """Run ``worker`` (a function of the train loop config that calls :func:`run_worker`) on ``cfg.num_workers``
    Ray Train workers over ``datasets`` (train split across them); returns Ray Train's ``Result``."""
    from ray.train import CheckpointConfig, DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage_uri = storage.join(cfg.out, "checkpoints")
    fs, path = storage.resolve(storage_uri)
    if not storage.is_s3(storage_uri):
        os.makedirs(path, exist_ok=True)
    trainer = TorchTrainer(
        worker,
        train_loop_config={**cfg.model_dump(), "n_train": n_train, "has_val": "val" in datasets, "ingest": ingest,
                           "tracked": tracked},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name=cfg.name, storage_path=path, storage_filesystem=fs,
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints)),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    return trainer.fit()
