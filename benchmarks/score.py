"""Scoring 1,000,000 CODE-15 predictions: ours (Ray Data reduction, both protocols) against a plain per-row
Python loop over the reference rules (then scikit-learn, as the reference script does), in the same run.

    .venv/bin/python benchmarks/score.py                 # 1,000,000 rows, with label_scores
    .venv/bin/python benchmarks/score.py --rows 200000 --no-scores

Prints the Ray start-up (excluded), rows/s of each and the ratio, and checks that the ecgbench numbers agree.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

LABELS = ("1dAVb", "RBBB", "LBBB", "SB", "ST", "AF")
WORDS = {"1dAVb": "first degree AV block", "RBBB": "right bundle branch block", "LBBB": "left bundle branch block",
         "SB": "sinus bradycardia", "ST": "sinus tachycardia", "AF": "atrial fibrillation"}


def answer_pool() -> list[tuple[str, ...]]:
    """Every answer a CODE-15 sample can have: NORM, ABNORMAL, or 1-3 labels."""
    sets = [("NORM",), ("ABNORMAL",)]
    for k in (1, 2, 3):
        sets += list(itertools.combinations(LABELS, k))
    return sets


def styles(labels: tuple[str, ...]) -> list[str]:
    """Ways a model writes one answer: canonical, with "Answer:", in words, lower-case (trap for the rules)."""
    canon = "; ".join(labels)
    words = " and ".join(WORDS.get(x, "a normal ECG" if x == "NORM" else "abnormal") for x in labels)
    return [canon, f"Answer: {canon}", f"The ECG shows {words}.", canon.lower()]


def generate(n: int, seed: int, scores: bool) -> pa.Table:
    """n prediction rows (PREDICTION_SCHEMA) drawn with numpy: ~75% right answers in four writing styles."""
    from ecg.rows import PREDICTION_SCHEMA

    rng = np.random.default_rng(seed)
    pool = answer_pool()
    weights = np.array([30.0, 10.0] + [1.0] * (len(pool) - 2))
    gold_i = rng.choice(len(pool), n, p=weights / weights.sum())
    pred_i = np.where(rng.random(n) < 0.75, gold_i, rng.integers(0, len(pool), n))
    table = np.array([styles(s) for s in pool], dtype=object)  # (answers, 4 styles)
    gold = table[gold_i, 0]
    pred = table[pred_i, rng.choice(4, n, p=[0.55, 0.2, 0.15, 0.1])]
    cols = {"id": pc.binary_join_element_wise("c15-", pa.array(np.arange(n)).cast(pa.string()), ""),
            "task": pa.array(["code15"] * n), "question": pa.array(["q"] * n),
            "answer": pa.array(gold.tolist()), "prediction": pa.array(pred.tolist())}
    if scores:  # JSON objects built by Arrow string kernels: a million json.dumps would take longer than scoring
        parts = ["{"]
        for j, label in enumerate(LABELS + ("NORM", "ABNORMAL")):
            s = np.round(rng.random(n), 3)
            parts += [f'{"" if j == 0 else ", "}"{label}": ', pa.array(s).cast(pa.string())]
        parts.append("}")
        cols["label_scores"] = pc.binary_join_element_wise(*parts, "")
    else:
        cols["label_scores"] = pa.nulls(n, pa.string())
    cols.update(model=pa.array(["bench"] * n), error=pa.nulls(n, pa.string()), latency_ms=pa.array(np.zeros(n)),
                prompt_tokens=pa.nulls(n, pa.int64()), truncated=pa.nulls(n, pa.bool_()),
                page_score=pa.nulls(n, pa.float64()), is_page=pa.nulls(n, pa.bool_()))
    # by name, in the schema's order: a column the schema gains later fails here naming it, not as a mismatch
    return pa.table([cols[f.name] for f in PREDICTION_SCHEMA], schema=PREDICTION_SCHEMA)


def reference_loop(gold: list[str], texts: list[str]) -> tuple[float, float, float]:
    """The reference rules, one row at a time (substring search, Answer:, NORM/ABNORMAL), then sklearn."""
    from sklearn.metrics import f1_score, hamming_loss, roc_auc_score
    from sklearn.preprocessing import MultiLabelBinarizer

    y_true, y_pred = [], []
    for g, t in zip(gold, texts):
        y_true.append([g] if g in ("NORM", "ABNORMAL") else [x for x in LABELS if x in g])
        if "Answer:" in t:
            t = t.split("Answer:")[-1]
        head = ["NORM"] if "NORM" in t and "ABNORMAL" not in t else ["ABNORMAL"] if "ABNORMAL" in t else []
        y_pred.append(head + [x for x in LABELS if x in t])
    mlb = MultiLabelBinarizer()
    yt, yp = mlb.fit_transform(y_true), mlb.transform(y_pred)
    aucs = []
    for i in range(yt.shape[1]):
        try:
            aucs.append(roc_auc_score(yt[:, i], yp[:, i]))
        except ValueError:
            aucs.append(np.nan)
    f1 = np.mean(f1_score(yt, yp, average=None))
    return (round(float(f1) * 100, 1), round(float(np.mean(aucs)) * 100, 1),
            round(float(hamming_loss(yt, yp)) * 100, 1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--files", type=int, default=4, help="Parquet shards the rows are split into")
    p.add_argument("--no-scores", action="store_true", help="rows without label_scores")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import ray

    from metrics.score import score_frame
    from pipelines.score import score_dataset

    t = time.perf_counter()
    table = generate(args.rows, args.seed, scores=not args.no_scores)
    print(f"generated {args.rows:,} rows in {time.perf_counter() - t:.1f} s "
          f"({len(set(table['prediction'].to_pylist()))} distinct prediction texts)", flush=True)
    with tempfile.TemporaryDirectory(prefix="ecgvlm-bench-") as tmp:
        step = -(-args.rows // args.files)
        os.makedirs(os.path.join(tmp, "data"))
        for i in range(args.files):
            pq.write_table(table.slice(i * step, step), os.path.join(tmp, "data", f"part-{i:03d}.parquet"))
        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        t_init = time.perf_counter() - t
        # worker processes start and import pandas/pyarrow/metrics on their first task: that is start-up too
        os.makedirs(os.path.join(tmp, "warm"))
        pq.write_table(table.slice(0, 1000), os.path.join(tmp, "warm", "part.parquet"))
        t = time.perf_counter()
        score_dataset(os.path.join(tmp, "warm"))
        print(f"ray start-up (excluded): init {t_init:.1f} s, worker warm-up on 1,000 rows "
              f"{time.perf_counter() - t:.1f} s", flush=True)
        t = time.perf_counter()
        ours = score_dataset(os.path.join(tmp, "data"), protocol="both")["code15"]
        t_ours = time.perf_counter() - t
        ray.shutdown()
    t, c = time.perf_counter(), time.process_time()
    local = score_frame("code15", table.to_pandas())  # the same pure functions, one process, no Ray
    t_local, c_local = time.perf_counter() - t, time.process_time() - c
    gold, texts = table["answer"].to_pylist(), table["prediction"].to_pylist()  # not timed: generous to the loop
    t, c = time.perf_counter(), time.process_time()
    ref = reference_loop(gold, texts)
    t_ref, c_ref = time.perf_counter() - t, time.process_time() - c
    mine = (ours["f1"], ours["auc"], ours["hamming_loss"])
    print(f"ours (Ray Data, ecgbench + strict + bootstrap + ANLS{'' if args.no_scores else ' + score AUC'}): "
          f"{t_ours:.1f} s, {args.rows / t_ours:,.0f} rows/s; F1/AUC/HL {mine}")
    print(f"ours in one process (score_frame, no Ray): {t_local:.1f} s ({c_local:.1f} CPU s), "
          f"{args.rows / t_local:,.0f} rows/s; "
          f"same result: {local['strict'] == ours['strict'] and local['f1'] == ours['f1']}")
    print(f"reference per-row loop (ecgbench only):  {t_ref:.1f} s ({c_ref:.1f} CPU s), "
          f"{args.rows / t_ref:,.0f} rows/s; F1/AUC/HL {ref}")
    print(f"ratio (reference / ours, wall): Ray {t_ref / t_ours:.2f}x, one process {t_ref / t_local:.2f}x; "
          f"CPU-time ratio one process {c_ref / c_local:.2f}x  |  agree: {mine == ref}  |  "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0 if mine == ref else 1


if __name__ == "__main__":
    sys.exit(main())
