"""Throughput of ``ecgvlm evaluate``'s Ray Data job against a plain single-process loop, in one run.

    python benchmarks/evaluate.py                               # tiny and random:<SmolVLM-256M config folder>
    python benchmarks/evaluate.py --models tiny --rows 64 --batch-size 8
    ECGVLM_SMOLVLM_DIR=/path/to/SmolVLM-256M-Instruct python benchmarks/evaluate.py
    python benchmarks/evaluate.py --stages [benchmarks/stages.py options]   # where the model's time goes, per stage

Both paths run the same model (``vlm.Predictor``, image splitting off), the same rows (synthetic 1100 x 850
pages) and the same per-batch function (``vlm.predict_rows``) with the same torch thread count. The Ray path
is the job's own dataset (``stages.evaluation.build_dataset``: read_parquet -> actor pool of one). Printed:
images/s of the loop (after a warm-up batch; timed before and after the Ray job, averaged), of the Ray job from submission (actor start-up included) and
after its first output batch (warm), and the ratios. Timings on a shared machine vary: run it twice.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
if sys.path[1:2] == [str(REPO / "benchmarks")]:  # python benchmarks/evaluate.py: benchmarks/stages.py would hide
    del sys.path[1]                                 # the stages package (the Ray stages) from this script
DEFAULT_SMOLVLM = os.environ.get("ECGVLM_SMOLVLM_DIR", str(REPO.parent / "shared" / "models" / "SmolVLM-256M-Instruct"))


def make_rows(folder: str, n: int):
    """``n`` synthetic code15 sample rows (full-size pages) as one Parquet shard under ``folder/test``."""
    import pyarrow.parquet as pq

    from ecg import samples
    from ecg.rows import SAMPLE_SCHEMA

    table = samples.synthetic_batch({"start": [0], "count": [n]}, seed=11, splits={"test": 1.0})
    table = table.drop(["split"]).cast(SAMPLE_SCHEMA)
    os.makedirs(os.path.join(folder, "test"), exist_ok=True)
    pq.write_table(table, os.path.join(folder, "test", "part-0.parquet"))
    return table.to_pandas()


class PlainLoop:
    """``vlm.predict_rows`` over the rows in this process: the baseline, loaded once, timed on demand."""

    def __init__(self, model: str, frame, batch_size: int, threads: int):
        import torch

        import vlm

        torch.set_num_threads(threads)
        self.vlm, self.frame, self.batch_size = vlm, frame, batch_size
        self.predictor = vlm.Predictor(model, image_splitting=False)
        vlm.predict_rows(self.predictor, frame.iloc[:batch_size])  # warm-up: first-call allocations, lazy imports

    def images_per_s(self) -> float:
        start = time.perf_counter()
        for i in range(0, len(self.frame), self.batch_size):
            self.vlm.predict_rows(self.predictor, self.frame.iloc[i:i + self.batch_size])
        return len(self.frame) / (time.perf_counter() - start)


def ray_job(model: str, data: str, n: int, batch_size: int, threads: int) -> tuple[float, float]:
    """``(images/s from submission, images/s after the first output batch)`` of the evaluate dataset."""
    from pipelines.evaluate import EvaluateConfig
    from stages.evaluation import build_dataset

    cfg = EvaluateConfig(model=model, data=data, out=data, batch_size=batch_size, threads=threads,
                         min_actors=1, max_actors=1, num_cpus=0.5, decoding="fast",  # the loop's task budgets
                         page_gate="off")  # the loop checks no pages either
    start = time.perf_counter()
    first_at, first_rows, rows = None, 0, 0
    for batch in build_dataset(cfg, ()).iter_batches(batch_format="pyarrow", batch_size=None):
        rows += batch.num_rows
        if first_at is None:
            first_at, first_rows = time.perf_counter(), batch.num_rows
    end = time.perf_counter()
    assert rows == n, f"the job returned {rows} rows for {n}"
    warm = (rows - first_rows) / (end - first_at) if end > first_at and rows > first_rows else float("nan")
    return rows / (end - start), warm


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--stages" in argv:  # vision tower / prefill / decode / label scoring per image, engines side by side
        import importlib.util

        spec = importlib.util.spec_from_file_location("stages_benchmark", REPO / "benchmarks" / "stages.py")
        stages_benchmark = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(stages_benchmark)
        stages_main = stages_benchmark.main

        return stages_main([a for a in argv if a != "--stages"])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=f"tiny,random:{DEFAULT_SMOLVLM}", help="comma-separated models")
    p.add_argument("--rows", type=int, default=None, help="rows per model (default: 64 tiny, 12 others)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per batch (default: 8 tiny, 4 others)")
    p.add_argument("--threads", type=int, default=2, help="torch threads, the same in both paths")
    p.add_argument("--loop-twice", action="store_true", help="also time the loop after the Ray job for big models")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    lines = []
    try:
        for model in args.models.split(","):
            tiny = model == "tiny"
            n, bs = args.rows or (64 if tiny else 12), args.batch_size or (8 if tiny else 4)
            with tempfile.TemporaryDirectory(prefix="ecgvlm-bench-") as folder:
                frame = make_rows(folder, n)
                baseline = PlainLoop(model, frame, bs, args.threads)
                before = baseline.images_per_s()
                cold, warm = ray_job(model, folder, n, bs, args.threads)
                after = baseline.images_per_s() if tiny or args.loop_twice else before
                del baseline
            # The machine is shared: the loop is timed before and after the Ray job and averaged.
            loop = (before + after) / 2
            name = model if tiny else "random:SmolVLM-256M-Instruct"
            lines.append(f"{name:<30} rows {n:>3} batch {bs}  loop {loop:7.2f} img/s ({before:.2f} before, "
                         f"{after:.2f} after)   ray {cold:7.2f} img/s (with start-up, ratio {cold / loop:.2f})   "
                         f"ray warm {warm:7.2f} img/s (ratio {warm / loop:.2f})")
            print(lines[-1], flush=True)
    finally:
        ray.shutdown()
    print(f"\nthreads {args.threads}, image splitting off, 1 actor (num_cpus 0.5), CPU; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
