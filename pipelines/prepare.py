"""``ecgvlm prepare``: a source of ECGs -> sample-row Parquet shards under ``<out>/<split>/`` + ``manifest.json``.

    ecgvlm prepare --source synthetic --n 2000 --seed 0 --out ./data/synth
    ecgvlm prepare --source ptbxl --path ./ptb-xl --out s3://ecg/ptbxl
    ecgvlm prepare --source code15 --path ./code15 --out ./data/code15 --split train=0.9,test=0.1
    ecgvlm prepare --source ecgbench --path ./ECGBench/code15-test.json --out ./data/bench

The driver lists cheap references (chunk ranges, record paths, image paths); Ray tasks read, generate and
render them (``ecg.samples`` / ``ecg.ecgbench`` stages) and Ray Data writes the rows partitioned by split.
A record that fails becomes a failure row: counted and listed with its error in the manifest, never dropped.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.config import error_exit, load_config


class PrepareConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Literal["synthetic", "ptbxl", "code15", "ecgbench"] = Field("synthetic", description="where records come from")
    out: str = Field("./data/synth", description="output folder or s3:// URI")
    path: str | None = Field(None, description="dataset folder (ptbxl, code15) or ECGBench file/folder")
    n: int = Field(2000, ge=1, description="synthetic: number of records")
    seed: int = Field(0, description="seed of the generator, the split hash and augmentation")
    split: str | None = Field(None, description="NAME=FRACTION,... by patient (default train=0.8,val=0.1,test=0.1; ecgbench: test=1)")
    ptbxl_folds: bool = Field(True, description="ptbxl: strat_fold 9 -> val, 10 -> test, others train")
    task: str | None = Field(None, description="task of the rows (default: code15; ptbxl-super; ecgbench: from the file name)")
    chunk: int = Field(50, ge=1, description="records per Ray task")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per rendering task")
    width: int = Field(1100, description="page width, px")
    height: int = Field(850, description="page height, px")
    layout: str = Field("3x4", description="page layout: 3x4, 6x2 or 12x1")
    augment: float = Field(0.0, ge=0, le=1, description="fraction of pages augmented (seeded per record)")
    image_format: Literal["PNG", "JPEG"] = Field("PNG", description="image encoding")
    quality: int = Field(90, description="JPEG quality")
    overwrite: bool = Field(False, description="replace shards already under --out")
    max_error_rate: float = Field(0.5, ge=0, le=1, description="exit non-zero (after writing everything) when more "
                                  "than this fraction of the records failed")


# ---- the job --------------------------------------------------------------------------------------------


def plan(cfg: PrepareConfig, splits: dict):
    """``(dataset, stage_fn, stage_kwargs, batch_size)`` for the source: references in, rows out."""
    import ray

    from ecg import ecgbench, samples, storage

    options = samples.RenderOptions(width=cfg.width, height=cfg.height, layout=cfg.layout, augment=cfg.augment,
                                    image_format=cfg.image_format, quality=cfg.quality)
    common = {"seed": cfg.seed, "splits": splits}
    if cfg.source == "synthetic":
        refs = samples.synthetic_references(cfg.n, cfg.chunk)
        kwargs = {**common, "task": cfg.task or "code15", "options": options}
        return ray.data.from_items(refs, override_num_blocks=len(refs)), samples.synthetic_batch, kwargs, 1
    if not cfg.path:
        raise ValueError(f"--source {cfg.source} needs --path")
    if cfg.source in ("ptbxl", "code15"):
        refs = samples.signal_references(cfg.source, cfg.path)
        kwargs = {**common, "task": cfg.task, "options": options, "folds": cfg.ptbxl_folds}
        blocks = max(1, min(len(refs) // cfg.chunk + 1, 1000))
        return ray.data.from_items(refs, override_num_blocks=blocks), samples.signal_batch, kwargs, cfg.chunk
    task = ecgbench.resolve_task(cfg.task, cfg.path)
    kwargs = {**common, "task": task.name}
    parquet = storage.list_files(cfg.path, ".parquet") if not cfg.path.endswith((".json", ".jsonl")) else []
    if parquet:
        fs, _ = storage.resolve(cfg.path)
        files = [p[len("s3://"):] if storage.is_s3(p) else p for p in parquet]
        return ray.data.read_parquet(files, filesystem=fs), ecgbench.ecgbench_batch, kwargs, cfg.chunk
    files = [cfg.path] if cfg.path.endswith((".json", ".jsonl")) else (
        storage.list_files(cfg.path, ".json") + storage.list_files(cfg.path, ".jsonl"))
    refs = [r for f in files for r in ecgbench.json_references(f)]
    if not refs:
        raise ValueError(f"{cfg.path}: no ECGBench records (.json, .jsonl or .parquet)")
    blocks = max(1, min(len(refs) // cfg.chunk + 1, 1000))
    return ray.data.from_items(refs, override_num_blocks=blocks), ecgbench.ecgbench_batch, kwargs, cfg.chunk


def _clear(out: str, overwrite: bool) -> None:
    from ecg import storage

    if not storage.list_files(out, ".parquet") and not storage.exists(storage.join(out, "manifest.json")):
        return
    if not overwrite:
        raise FileExistsError(f"{out} already holds shards or a manifest; pass --overwrite to replace them")
    fs, path = storage.resolve(out)
    fs.delete_dir_contents(path)


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(PrepareConfig, argv, prog="ecgvlm prepare", doc=__doc__)
    from ecg import samples, storage

    start = time.perf_counter()
    default = "test=1" if cfg.source == "ecgbench" else None
    splits = samples.parse_splits(cfg.split or default)
    _clear(cfg.out, cfg.overwrite)
    from pipelines import launch

    from pipelines.progress import attached

    started = launch.start([{"CPU": cfg.num_cpus}], what="ecgvlm prepare", hint="num_cpus")
    ray_data = __import__("ray").data.DataContext.get_current()
    ray_data.enable_progress_bars = ray_data.enable_operator_progress_bars = attached()  # plain logs otherwise
    try:
        ds, fn, kwargs, batch_size = plan(cfg, splits)
        rows = ds.map_batches(fn, fn_kwargs=kwargs, batch_size=batch_size, num_cpus=cfg.num_cpus)
        fs, path = storage.resolve(cfg.out)
        # Directory partitioning: <out>/<split>/*.parquet (the split column lives in the folder name).
        rows.write_parquet(path, filesystem=fs, partition_cols=["split"], partitioning_flavor=None)
    finally:
        if started:
            import ray

            ray.shutdown()
    info = {"source": cfg.source, "path": cfg.path, "seed": cfg.seed, "n": cfg.n if cfg.source == "synthetic" else None,
            "splits": splits, "out": cfg.out, "config": cfg.model_dump()}
    manifest = samples.build_manifest(cfg.out, list(splits), info=info)
    fs, path = storage.resolve(storage.join(cfg.out, samples.FAILED))
    if storage.exists(storage.join(cfg.out, samples.FAILED)):
        fs.delete_dir(path)  # failures now live in the manifest; the folder would only confuse readers
    manifest["n"] = manifest["n"] or manifest["rows"] + manifest["failed"]  # records attempted
    manifest["wall_s"] = round(time.perf_counter() - start, 2)
    storage.write_text(storage.join(cfg.out, "manifest.json"), json.dumps(manifest, indent=2))
    per_split = ", ".join(f"{s} {n}" for s, n in manifest["counts"]["splits"].items())
    print(f"prepare: {manifest['rows']} rows ({per_split}), {manifest['failed']} failed, "
          f"{manifest['wall_s']:.1f} s -> {cfg.out}", flush=True)
    for failure in manifest["failures"][:20]:
        print(f"  failed {failure['id']}: {failure['error']}", file=sys.stderr)
    return error_exit("prepare", manifest["failed"], manifest["n"], cfg.max_error_rate)


if __name__ == "__main__":
    sys.exit(main())
