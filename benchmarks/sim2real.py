"""Sim-to-real: a model trained on synthetic pages only, read on real ECGs. One run, every set side by side.

    python benchmarks/sim2real.py --model ./demo-run/run/export --synthetic ./demo-run/data
    python benchmarks/sim2real.py --train --workdir ./sim2real-run          # the demo's recipe, then the table
    python benchmarks/sim2real.py --smoke                                   # a few pages, the untrained tiny model

The sets (each row of the table names its data):
- synthetic held-out: the test split of the synthetic data the model was trained beside (ecg.synth).
- real records, our pages: the labelled real 12-lead recordings of ``ecg/data/real_ecgs.csv`` that PyPI packages
  ship (clinical exports in DICOM, GE MUSE, GE CardioSoft and Philips Sierra XML, read by ecg.clinical; CPSC 2018,
  Chapman-Shaoxing and PTB-XL records in WFDB, read by ecg.challenge; found by ecg.examples), drawn by ecg.pages in
  each preset (clean, varied, photo), ``--pages-per-record`` pages each.
- real records, other software: the same recordings drawn by ecg_plot and pmecg in six layouts
  (benchmarks/other_pages.py).
- pages other software drew: pmecg's own example pages of PTB-XL records 1-5, as its sdist ships them (six layouts
  a record), labelled from the measurements printed on them.
- what the model reads: synthetic counterfactual pairs (``ecg.synth.COUNTERFACTUALS``: one record drawn twice, one
  physiological change apart, such as PR 160 -> 280 ms): how often the finding is answered before and after the
  change. A model that learned a shortcut (the rate for 1dAVb) shows it here, whatever the real sets hold.
Labels live in ``ecg/data/real_ecgs.csv`` with the device statements or printed measurements they come from.
The real files come from ``make real-ecgs`` (``.cache/real-ecgs``). Scores: ECGBench protocol, code15, x100.
27 real recordings (10 NORM, 6 AF, 4 SB, 4 ABNORMAL, 3 RBBB) are few: read the real rows as a signal of
sim-to-real, not as a benchmark result.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def synthetic_pages(data: str, limit: int) -> dict[str, list[tuple[str, bytes, tuple]]]:
    """Up to ``limit`` rows of ``<data>/test`` as labelled pages, by page preset (``meta["page"]["preset"]``)."""
    import json

    from ecg import shards, storage

    ds = shards.parquet_dataset(storage.join(data, "test"))
    if ds is None:
        return {}
    out: dict[str, list] = {}
    for r in ds.head(limit, columns=["id", "image", "labels", "meta"]).to_pylist():
        preset = (json.loads(r["meta"] or "{}").get("page") or {}).get("preset", "clean")
        out.setdefault(preset, []).append((r["id"], r["image"], tuple(r["labels"])))
    return out


def train(args) -> tuple[str, str]:
    """The demo's recipe (prepare synthetic pages, train the tiny model) into ``--workdir``: (export, data)."""
    from pipelines import demo

    argv = ["--workdir", args.workdir, "--pages", args.pages, "--real-check", "false"]
    if args.n:
        argv += ["--n", str(args.n)]
    if args.minutes:
        argv += ["--max-minutes", str(args.minutes)]
    if demo.main(argv):
        raise SystemExit("training failed")
    return os.path.join(args.workdir, "run", "export"), os.path.join(args.workdir, "data")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="export folder (or preset) to read the sets with")
    parser.add_argument("--synthetic", help="prepared synthetic data whose test split is the held-out set")
    parser.add_argument("--train", action="store_true", help="train the demo's recipe first (into --workdir)")
    parser.add_argument("--workdir", default="./sim2real-run")
    parser.add_argument("--n", type=int, default=None, help="--train: synthetic records (default: the demo's)")
    parser.add_argument("--pages", default=None, help="--train: page mix (default: the demo's)")
    parser.add_argument("--minutes", type=float, default=None, help="--train: training minutes (default: the demo's)")
    parser.add_argument("--real", default=str(REPO / ".cache" / "real-ecgs"), help="folder of make real-ecgs")
    parser.add_argument("--pages-per-record", type=int, default=4, help="pages a real record in each preset")
    parser.add_argument("--synthetic-rows", type=int, default=300)
    parser.add_argument("--counterfactuals", type=int, default=40,
                        help="synthetic counterfactual pairs of each kind (0: none): what the model reads")
    parser.add_argument("--smoke", action="store_true", help="smallest run: untrained tiny, 1 page a record")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.pages is None:
        from pipelines.demo import DemoConfig

        args.pages = DemoConfig.model_fields["pages"].default
    if args.smoke:
        args.model, args.pages_per_record, args.synthetic_rows = args.model or "tiny", 1, 8
    model, data = (train(args) if args.train else (args.model or "tiny", args.synthetic))
    from benchmarks.other_pages import available, other_pages
    from vlm.predict import Predictor
    from vlm.realcheck import PRESETS, real_sets, score_pages

    from ecg.examples import real_examples

    found = real_examples(args.real)
    records = found.records
    print(found.describe())
    sets = []  # (name, data, pages)
    if data:
        held_out = synthetic_pages(data, args.synthetic_rows)
        sets.append(("synthetic held-out, all pages", "synthetic ECGs (ecg.synth), test split",
                     [p for pages in held_out.values() for p in pages]))
        sets += [(f"synthetic held-out, {preset} pages", "the same split, one preset", pages)
                 for preset, pages in sorted(held_out.items())]
    if not records and not found.pages:
        print(f"no real files under {args.real}: run `make real-ecgs` first", file=sys.stderr)
    real = real_sets(found, pages_per_record=args.pages_per_record, shipped_limit=6 if args.smoke else None)
    sets += real[:len(PRESETS)]
    missing = available()
    if missing:
        print(f"other software: {missing}", file=sys.stderr)
    else:
        drawn = [(f"{r.id}#{name}", png, tuple(r.labels)) for r in records[:2 if args.smoke else None]
                 for name, png in other_pages(r)]
        sets.append(("real records, other software", "the real recordings drawn by ecg_plot and pmecg (6 layouts)",
                     drawn))
    sets += real[len(PRESETS):]
    predictor = Predictor(model)
    print(f"model: {model}\n{'set':38s} {'pages':>5s} {'F1':>6s} {'AUC':>6s} {'HL':>6s} {'pages/s':>8s}  data; top answers")
    for name, what, pages in sets:
        if not pages:
            print(f"{name:38s} {0:5d} {'-':>6s} {'-':>6s} {'-':>6s} {'-':>8s}  {what}; none found")
            continue
        start = time.perf_counter()
        r = score_pages(predictor, pages)
        rate = len(pages) / (time.perf_counter() - start)
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        answers = ", ".join(f"{k[:30]!r} x{v}" for k, v in list(r["answers"].items())[:3])
        print(f"{name:38s} {len(pages):5d} {fmt(r.get('f1')):>6s} {fmt(r.get('auc')):>6s} "
              f"{fmt(r.get('hamming_loss')):>6s} {rate:8.1f}  {what}; {answers}", flush=True)
    if args.counterfactuals:
        print_counterfactuals(predictor, 4 if args.smoke else args.counterfactuals)
    return 0


def print_counterfactuals(predictor, n: int) -> None:
    """What the model reads: synthetic counterfactual pairs (ecg.synth.COUNTERFACTUALS), clean pages."""
    from vlm.realcheck import counterfactuals

    print(f"\nwhat the model reads: {n} synthetic counterfactual pairs each (ecg.synth, clean pages; one record drawn "
          "twice, one physiological change apart)")
    print(f"{'change':28s} {'finding':8s} {'answered before':>15s} {'after':>6s} {'answer changed':>15s}")
    for row in counterfactuals(predictor, n=n):
        fmt = lambda v: "-" if v is None else f"{v:.0f}%"  # noqa: E731
        print(f"{row['change']:28s} {row['finding'] or '(none)':8s} {fmt(row['before']):>15s} "
              f"{fmt(row['after']):>6s} {fmt(row['changed']):>15s}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
