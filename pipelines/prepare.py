"""``ecgvlm prepare``: a source of ECGs -> sample-row Parquet shards under ``<out>/<split>/`` + ``_manifest.json``.

    ecgvlm prepare --source synthetic --n 2000 --seed 0 --out ./data/synth
    ecgvlm prepare --source ptbxl --path ./ptb-xl --out s3://ecg/ptbxl
    ecgvlm prepare --source code15 --path ./code15 --out ./data/code15 --split train=0.9,test=0.1
    ecgvlm prepare --source wfdb --task cpsc --path ./cpsc2018 --out ./data/cpsc   # Challenge WFDB, # Dx: SNOMED-CT
    ecgvlm prepare --source clinical --path ./exports --labels ./labels.csv --out ./data/clinical
    ecgvlm prepare --source images --path ./pages --out ./data/pages
    ecgvlm prepare --source mimic-ecg --path ./mimic-iv-ecg --out ./data/mimic
    ecgvlm prepare --source ecgbench --path ./ECGBench/code15-test --out ./data/bench
    ecgvlm prepare --source ecginstruct --path ./ECGInstruct.json --out ./data/ecginstruct --split train=0.99,val=0.01

The driver lists cheap references (chunk ranges, record paths); ECGBench / ECGInstruct JSON is parsed as a
stream inside a Ray task (``ecg.jsonrecords``). Ray tasks read, generate and render (``ecg.samples`` /
``ecg.ecgbench`` stages) and Ray Data writes the rows partitioned by split. A record that fails becomes a
failure row: counted by kind and listed with its error in the manifest, never dropped. Every ``<out>/<split>``
folder, and ``<out>`` itself, is a plain Parquet dataset (the manifest's leading ``_`` makes readers skip it).
"""

from __future__ import annotations

import sys
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ecgconfig import error_exit, load_config


class PrepareConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Literal["synthetic", "ptbxl", "code15", "wfdb", "mimic-ecg", "clinical", "images", "ecgbench",
                    "ecginstruct"] = Field(
        "synthetic", description="where records come from (wfdb: Challenge WFDB with # Dx: SNOMED-CT codes; clinical: "
        "DICOM, MUSE, CardioSoft, aECG, Sierra exports; images: page images; ecginstruct: one JSON of many tasks)")
    out: str = Field("./data/synth", description="output folder or s3:// URI")
    path: str | None = Field(None, description="dataset folder (ptbxl, code15, wfdb) or ECGBench / ECGInstruct file or folder")
    labels: str | None = Field(None, description="clinical, images: CSV of gold labels by file (columns file, labels; "
                               "labels separated by ';')")
    image_root: str | None = Field(None, description="ecgbench/ecginstruct: folder image paths are relative to "
                                   "(default: the JSON's folder); paths leaving it are refused")
    n: int = Field(2000, ge=1, description="synthetic: number of records")
    seed: int = Field(0, description="seed of the generator, the split hash and augmentation")
    split: str | None = Field(None, description="NAME=FRACTION,... by patient (default train=0.8,val=0.1,test=0.1; "
                              "ecgbench: test=1; ecginstruct: train=0.99,val=0.01, by image)")
    ptbxl_folds: bool = Field(True, description="ptbxl: strat_fold 9 -> val, 10 -> test, others train")
    task: str | None = Field(None, description="task of the rows (default: code15; ptbxl-super; ecgbench and "
                             "ecginstruct: auto, each row's own from its question and id; a name forces it)")
    chunk: int = Field(50, ge=1, description="records per Ray task")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per rendering task")
    width: int = Field(1100, description="page width, px")
    height: int = Field(850, description="page height, px")
    pages: str = Field("clean", description="page preset: clean, varied (layouts, speeds, gains, headers, fonts, "
                       "grids), photo (varied + scan/phone artifacts), or a mix such as clean=0.3,varied=0.4,photo=0.3")
    layout: str = Field("3x4", description="clean pages' layout: 3x4 (= 3x4+1), 3x4+0, 3x4+3, 6x2, 2x6 or 12x1")
    augment: float = Field(0.0, ge=0, le=1, description="fraction of clean pages lightly augmented (seeded per record)")
    image_format: Literal["PNG", "JPEG"] = Field("PNG", description="image encoding")
    quality: int = Field(90, description="JPEG quality")
    overwrite: bool = Field(False, description="replace shards already under --out")
    max_error_rate: float = Field(0.5, ge=0, le=1, description="exit non-zero (after writing everything) when more "
                                  "than this fraction of the records failed")

    @field_validator("pages")
    @classmethod
    def _known_pages(cls, value: str) -> str:
        from ecg.pages import presets_mix

        presets_mix(value)  # raises a one-line ValueError naming the presets
        return value


# ---- the job --------------------------------------------------------------------------------------------


def plan(cfg: PrepareConfig, splits: dict):
    """``(dataset, stage_fn, stage_kwargs, batch_size)`` for the source: references in, rows out."""
    import ray

    from ecg import samples

    options = samples.RenderOptions(width=cfg.width, height=cfg.height, layout=cfg.layout, augment=cfg.augment,
                                    pages=cfg.pages, image_format=cfg.image_format, quality=cfg.quality)
    common = {"seed": cfg.seed, "splits": splits}
    if cfg.source == "synthetic":
        refs = samples.synthetic_references(cfg.n, cfg.chunk)
        kwargs = {**common, "task": cfg.task or "code15", "options": options}
        return ray.data.from_items(refs, override_num_blocks=len(refs)), samples.synthetic_batch, kwargs, 1
    if not cfg.path:
        raise ValueError(f"--source {cfg.source} needs --path")
    if cfg.source in ("ptbxl", "code15", "wfdb", "clinical", "images", "mimic-ecg"):
        from ecg import sources

        if cfg.source in ("ptbxl", "code15", "wfdb"):
            refs, fn = samples.signal_references(cfg.source, cfg.path, task=cfg.task), samples.signal_batch
            kwargs = {"task": cfg.task, "options": options, "folds": cfg.ptbxl_folds}
        else:
            refs, fn, kwargs = sources.folder_stage(cfg.source, cfg.path, labels=cfg.labels, task=cfg.task,
                                                    options=options)
        blocks = max(1, min(len(refs) // cfg.chunk + 1, 1000))
        return ray.data.from_items(refs, override_num_blocks=blocks), fn, {**common, **kwargs}, cfg.chunk
    return _conversation_plan(cfg, common)


def _conversation_plan(cfg: PrepareConfig, common: dict):
    """ECGBench / ECGInstruct: Parquet rows, or JSON streamed into reference chunks by a Ray task per file."""
    import ray

    from ecg import ecgbench, jsonrecords, storage

    task = ecgbench.AUTO if cfg.task in (None, ecgbench.AUTO) else ecgbench.resolve_task(cfg.task).name
    path = storage.absolute(cfg.path)  # Ray workers do not share the driver's working directory
    is_json = path.endswith((".json", ".jsonl"))
    root = storage.absolute(cfg.image_root) if cfg.image_root else (
        path if not is_json and not path.endswith(".parquet") else path.rsplit("/", 1)[0])
    kwargs = {**common, "task": task, "source": cfg.source, "image_root": root}
    parquet = storage.list_files(path, ".parquet") if not is_json else []
    if parquet:
        fs, _ = storage.resolve(path)
        files = [p[len("s3://"):] if storage.is_s3(p) else p for p in parquet]
        ds = ray.data.read_parquet(files, filesystem=fs, include_paths=cfg.source == "ecgbench")
        return ds, ecgbench.ecgbench_batch, kwargs, cfg.chunk
    files = [path] if is_json else storage.list_files(path, ".json") + storage.list_files(path, ".jsonl")
    if not files:
        raise ValueError(f"{cfg.path}: no {cfg.source} records (.json, .jsonl or .parquet)")
    # Each file is parsed by one Ray task that yields reference blocks of `chunk` records: the driver never
    # reads the JSON. A CPU share unlike the image stage's keeps Ray Data from fusing the two, which would
    # read the images on the parser's one core.
    refs = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files)).map_batches(
        jsonrecords.reference_batches, batch_size=1, num_cpus=cfg.num_cpus / 4,
        fn_kwargs={"chunk": cfg.chunk, "file_hint": cfg.source == "ecgbench", "image_root": cfg.image_root and root})
    return refs, ecgbench.ecgbench_batch, kwargs, cfg.chunk


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(PrepareConfig, argv, prog="ecgvlm prepare", doc=__doc__)
    from ecg import manifest as manifests
    from ecg import samples, storage

    start = time.perf_counter()
    default = {"ecgbench": "test=1", "ecginstruct": "train=0.99,val=0.01", "clinical": "test=1",
               "images": "test=1"}.get(cfg.source)
    splits = samples.parse_splits(cfg.split or default)
    manifests.clear_output(cfg.out, cfg.overwrite)
    from pipelines import launch

    from ecg.progress import attached

    started = launch.start([{"CPU": cfg.num_cpus}], what="ecgvlm prepare", hint="num_cpus")
    ray_data = __import__("ray").data.DataContext.get_current()
    ray_data.enable_progress_bars = ray_data.enable_operator_progress_bars = attached()  # plain logs otherwise
    try:
        try:
            ds, fn, kwargs, batch_size = plan(cfg, splits)
        except (ValueError, FileNotFoundError) as exc:  # no records, a missing table, a task with no labels here
            print(f"ecgvlm prepare: {exc}", file=sys.stderr)
            return 2
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
    manifest = manifests.finish(cfg.out, splits, info=info, wall_s=time.perf_counter() - start)
    per_split = ", ".join(f"{s} {n}" for s, n in manifest["counts"]["splits"].items())
    kinds = ", ".join(f"{k} {n}" for k, n in manifest["counts"]["failures"].items())
    print(f"prepare: {manifest['rows']} rows ({per_split}) from {manifest['records']} records, "
          f"{manifest['failed']} failed{f' ({kinds})' if kinds else ''}, {manifest['wall_s']:.1f} s -> {cfg.out}",
          flush=True)
    for failure in manifest["failures"][:20]:
        print(f"  failed {failure['id']}: {failure['error']}", file=sys.stderr)
    return error_exit("prepare", manifest["failed"], manifest["n"], cfg.max_error_rate)


if __name__ == "__main__":
    sys.exit(main())
