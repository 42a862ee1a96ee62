"""Training throughput: the same loop (vlm.finetune.train_loop) in a plain process, under Ray Train with one
worker, and under Ray Train with two DDP workers (gloo), in one run; prints samples/s, peak memory and the ratios.

    python benchmarks/train.py [--rows 96] [--steps 30] [--batch 8] [--workers 1,2] [--config configs/tiny-code15.yaml]
    # the full-size SmolVLM-256M architecture (random weights), LoRA as the cluster config trains it:
    python benchmarks/train.py --smolvlm ../shared/models/SmolVLM-256M-Instruct --rows 8 --steps 4 --warm 1 --batch 2

samples/s counts training steps only (after encoding, start-up and the first warm-up steps); the Ray rows also
give the whole ``fit()`` wall time, start-up included (as in the plain loop: no MLflow run, ``--tracking none``,
and the patch filters as built, ``--patch-init random``). Both cores of this machine are used in every setting:
the plain process and the one Ray worker run 2 torch threads, the two Ray workers 1 each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def write_shards(root: Path, n: int) -> str:
    from ecg.render import render, to_bytes
    from ecg.rows import SAMPLE_SCHEMA
    from ecg.synth import generate
    from ecgtasks import CODE15

    for split, count, seed in (("train", n, 1), ("val", 4, 2)):
        rows = [{"id": f"{split}-{r.id}", "task": "code15", "image": to_bytes(render(r)), "question": CODE15.question,
                 "answer": CODE15.format_answer(r.labels), "labels": list(r.labels), "source": "synthetic",
                 "meta": "{}"} for r in generate(count, seed=seed)]
        (root / split).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA), root / split / "part-0.parquet")
    return str(root)


def plain(cfg, data: str, steps: int, warm: int) -> dict:
    """The loop in this process: encode once, then ``steps`` steps; samples/s over the steps after ``warm``."""
    import torch

    from vlm import finetune as ft

    import resource

    torch.set_num_threads(2)
    loaded = ft.load_for_training(cfg.model, tiny=cfg.tiny or None, image_splitting=cfg.image_splitting,
                                  config_overrides=cfg.config_overrides or None)
    cached = ft.encode_rows(loaded, pq.read_table(Path(data) / "train").to_pandas())
    model = ft.configure_trainable(loaded.model, mode=cfg.finetune, freeze_vision=cfg.freeze_vision,
                                   lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_targets=cfg.lora_targets)
    opt = ft.build_optimizer(model, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    collate = ft.Collator.for_loaded(loaded)
    settings = ft.LoopSettings(max_steps=steps, lr=cfg.lr, log_every=1)
    state = ft.train_loop(model, opt, lambda e: ft.iter_cached(cached, batch_size=cfg.batch_size, seed=e, collate=collate),
                          settings, hooks=ft.Hooks(log=lambda line: None))
    times = [t for _, _, t in state.losses]  # loop seconds at each step
    timed = (state.step - warm) * cfg.batch_size
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB: this process, model and data
    return {"samples_per_s": timed / (times[-1] - times[warm - 1]), "steps": state.step, "peak_rss_mib": peak}


def ray_train(cfg, data: str, out: str, steps: int, warm: int, workers: int) -> dict:
    from pipelines import train

    per_worker = cfg.batch_size // workers  # the same global batch as the plain process
    argv = ["--config", str(cfg_path), "--data", data, "--out", out, "--max-steps", str(steps), "--log-every", "1",
            *extra_args, "--use-gpu", "false", "--epochs", "null",
            "--num-workers", str(workers), "--batch-size", str(per_worker), "--val-rows", "0",
            "--checkpoint-every", str(10 * steps), "--max-minutes", "60", "--tracking", "none",
            "--patch-init", "random",
            "--cpus-per-worker", "0.5", "--threads-per-worker", str(2 // workers)]
    t0 = time.perf_counter()
    train.main(argv)
    wall = time.perf_counter() - t0
    summary = json.loads((Path(out) / "train_summary.json").read_text())
    times = [t for _, _, t in summary["losses"]]  # loop seconds at each step (log_every 1)
    timed = (summary["step"] - warm) * per_worker * workers
    return {"samples_per_s": timed / (times[-1] - times[warm - 1]), "fit_wall_s": wall, "steps": summary["step"],
            "peak_rss_mib": summary.get("peak_rss_mib")}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warm", type=int, default=5, help="steps left out of the timing")
    ap.add_argument("--batch", type=int, default=8, help="global batch (split across Ray workers)")
    ap.add_argument("--workers", default="1,2", help="Ray Train worker counts to run, comma-separated")
    ap.add_argument("--config", default=str(REPO / "configs" / "tiny-code15.yaml"))
    ap.add_argument("--smolvlm", help="a SmolVLM config folder: the real architecture with random weights, LoRA "
                    "with configs/train-ecginstruct-lora-cluster.yaml (overrides --config)")
    ap.add_argument("--image-splitting", action=argparse.BooleanOptionalAction, default=False,
                    help="with --smolvlm: SmolVLM's image splitting (17 tiles per page; slow on a CPU)")
    args = ap.parse_args()
    cfg_path = Path(args.config)
    extra_args: list[str] = []
    if args.smolvlm:
        cfg_path = REPO / "configs" / "train-ecginstruct-lora-cluster.yaml"
        extra_args = ["--model", f"random:{Path(args.smolvlm).resolve()}", "--grad-accum", "1",
                      "--image-splitting", str(args.image_splitting).lower(), "--encode-actors", "1"]
    import ray

    from pipelines.train import parse_config

    with tempfile.TemporaryDirectory() as tmp:
        data = write_shards(Path(tmp) / "data", args.rows)
        cfg = parse_config(["--config", str(cfg_path), "--data", data, "--out", tmp, "--batch-size", str(args.batch),
                            *extra_args])
        print(f"model {cfg.model} {cfg.tiny}, {args.rows} rows, global batch {args.batch}, {args.steps} steps "
              f"({args.warm} warm-up steps not timed), {os.cpu_count()} cores", flush=True)
        results = {"plain process": plain(cfg, data, args.steps, args.warm)}
        print(f"plain process: {results['plain process']['samples_per_s']:.2f} samples/s", flush=True)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            for workers in [int(w) for w in args.workers.split(",")]:
                name = f"Ray Train, {workers} worker(s)"
                results[name] = ray_train(cfg, data, f"{tmp}/run{workers}", args.steps, args.warm, workers)
                print(f"{name}: {results[name]['samples_per_s']:.2f} samples/s", flush=True)
        finally:
            ray.shutdown()
    base = results["plain process"]["samples_per_s"]
    print(f"\n{'setting':<24} {'samples/s':>10} {'vs plain':>9} {'fit() wall s':>13} {'peak RSS MiB':>13}")
    for name, r in results.items():
        wall = f"{r['fit_wall_s']:.1f}" if "fit_wall_s" in r else "-"
        peak = f"{r['peak_rss_mib']:.0f}" if r.get("peak_rss_mib") else "-"
        print(f"{name:<24} {r['samples_per_s']:>10.2f} {r['samples_per_s'] / base:>8.2f}x {wall:>13} {peak:>13}")
    print("(peak RSS: the plain process holds the model and the encoded rows; a Ray worker its model and batches)")
