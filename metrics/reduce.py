"""Per-batch sufficient statistics for every metric, and their merge: the map and reduce of scoring.

``batch_stats(task, frame)`` turns a batch of prediction rows (pandas) into small count arrays; ``merge``
adds two of them; ``metrics.score.finalize`` turns the merged counts into numbers. ``score_frame`` is
``finalize(batch_stats(frame))``, so one batch and a million rows merged from many blocks give the same
numbers by construction.

What a stats dict holds (G = ``N_BUCKETS`` id-hash buckets, L = the task's labels)::

    n, errors, empty                      ints: rows, rows with `error` set, rows with an empty prediction
    bucket_n (G,), anls_bucket (G,)       rows and ANLS sums per bucket (the bootstrap resamples buckets)
    eb_counts (L, 4)                      ecgbench tp, fp, fn, tn per label        (multi-label)
    st_counts (G, L, 4), st_exact (G,)    strict counts per bucket; rows whose label set is exactly right
    score_rows, score_hist (L, 2, SCORE_BINS), score_boot (G, L, 2, BOOT_BINS)
                                          label_scores histograms per label and gold value (AUC from scores)
    eb_correct, eb_unparsed_gold          ecgbench correct count; gold of unparsable rows, in row order
                                          (the seeded random letters are drawn at the end, in that order)
    st_correct (G,), st_unparsed, st_out_of_range    strict choice / set match

Example::

    stats = merge(batch_stats(task, frame.iloc[:500]), batch_stats(task, frame.iloc[500:]))
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from metrics import parsing
from metrics.anls import anls_rows
from metrics.tasks import CHOICE, MULTILABEL, SETMATCH, Task

N_BUCKETS = 100  # id-hash buckets: bootstrap units that do not depend on how rows are split into blocks
SCORE_BINS = 10_001  # label scores quantised to 1e-4 for AUC (exact for scores given to 4 decimals)
BOOT_BINS = 32  # coarser score histogram per bucket, only for the AUC interval
NEEDED = ("id", "answer", "prediction")


def _buckets(ids) -> np.ndarray:
    # pandas' hash is keyed and stable across processes and machines, unlike Python's hash()
    h = pd.util.hash_pandas_object(pd.Series(ids, dtype=object).astype(str), index=False).to_numpy()
    return (h % np.uint64(N_BUCKETS)).astype(np.int64)


def _per_bucket(bucket: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(G, ...) sums of ``values`` (n, ...) per bucket."""
    flat = values.reshape(len(values), -1).astype(np.float64)
    out = np.stack([np.bincount(bucket, weights=flat[:, j], minlength=N_BUCKETS) for j in range(flat.shape[1])], 1)
    return out.reshape((N_BUCKETS,) + values.shape[1:])


def _error_mask(frame: pd.DataFrame) -> np.ndarray:
    if "error" not in frame:
        return np.zeros(len(frame), dtype=bool)
    err = frame["error"]
    return (err.notna() & (err.astype(str).str.len() > 0)).to_numpy()


def _parse_scores(values, labels) -> tuple[np.ndarray, int]:
    """(n, L) float scores (0 where a row gives none: an unscored label ranks lowest), rows that had any."""
    out = np.zeros((len(values), len(labels)))
    index = {label: j for j, label in enumerate(labels)}
    rows = 0
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and v != v) or v == "":
            continue
        d = json.loads(v) if isinstance(v, (str, bytes)) else dict(v)
        rows += 1
        for label, s in d.items():
            if label in index and s is not None:
                out[i, index[label]] = float(s)
    return out, rows


def _multilabel_stats(task: Task, gold, text, frame, bucket) -> dict:
    y_eb, p_eb = parsing.ecgbench_gold(task, gold), parsing.ecgbench_labels(task, text)  # (n, L) bool
    y_st, p_st = parsing.strict_labels(task, gold), parsing.strict_labels(task, text)

    def counts(y, p):  # (n, L, 4): one-hot of tp, fp, fn, tn
        return np.stack([y & p, ~y & p, y & ~p, ~y & ~p], axis=-1)

    st = {"eb_counts": counts(y_eb, p_eb).sum(0).astype(np.int64),
          "st_counts": _per_bucket(bucket, counts(y_st, p_st)),
          "st_exact": _per_bucket(bucket, (y_st == p_st).all(1)),
          "score_rows": 0, "score_hist": None, "score_boot": None}
    if "label_scores" in frame and frame["label_scores"].notna().any():
        scores, rows = _parse_scores(frame["label_scores"].tolist(), task.labels)
        fine = np.clip(np.rint(scores * (SCORE_BINS - 1)), 0, SCORE_BINS - 1).astype(np.int64)
        coarse = np.clip((scores * BOOT_BINS).astype(np.int64), 0, BOOT_BINS - 1)
        hist = np.zeros((len(task.labels), 2, SCORE_BINS), dtype=np.int64)
        boot = np.zeros((N_BUCKETS, len(task.labels), 2, BOOT_BINS), dtype=np.int64)
        for j in range(len(task.labels)):
            g = y_st[:, j].astype(np.int64)
            np.add.at(hist[j], (g, fine[:, j]), 1)
            np.add.at(boot[:, j], (bucket, g, coarse[:, j]), 1)
        st.update(score_rows=rows, score_hist=hist, score_boot=boot)
    return st


def _choice_stats(task: Task, gold, text, bucket) -> dict:
    letters = parsing.ecgbench_letters(text)
    gold_eb = parsing.ecgbench_gold_letter(task, gold)
    parsed = np.array([x is not None for x in letters], dtype=bool)
    strict = parsing.strict_letters(text)
    gold_st = parsing.strict_letters(gold)
    gold_st = np.where(pd.isna(gold_st), parsing.as_text(gold).str.strip().str[:1].to_numpy(object), gold_st)
    in_range = np.array([x in task.labels for x in strict], dtype=bool)
    return {"eb_correct": int((parsed & (letters == gold_eb)).sum()),
            "eb_unparsed_gold": [str(g) for g in gold_eb[~parsed]],
            "st_correct": _per_bucket(bucket, in_range & (strict == gold_st)),
            "st_unparsed": int(pd.isna(strict).sum()),
            "st_out_of_range": int((~pd.isna(strict) & ~in_range).sum())}


def _setmatch_stats(gold, text, question, bucket) -> dict:
    return {"eb_correct": int(parsing.ecgbench_setmatch(question, gold, text).sum()),
            "st_correct": _per_bucket(bucket, parsing.strict_setmatch(question, gold, text))}


def batch_stats(task: Task, frame: pd.DataFrame) -> dict:
    """Sufficient statistics of one batch of rows of one task (columns: id, answer, prediction, and
    optional question, label_scores, error). Rows with ``error`` set are scored as empty predictions."""
    missing = [c for c in NEEDED if c not in frame]
    if missing:
        raise KeyError(f"score: missing column(s) {missing} for task {task.name!r}; have {sorted(frame.columns)}")
    errors = _error_mask(frame)
    text = frame["prediction"].astype(object).where(~errors, "")
    text = text.where(text.notna(), "")
    gold = frame["answer"].astype(object).where(frame["answer"].notna(), "")
    bucket = _buckets(frame["id"])
    anls = anls_rows(text, gold)
    stats = {"task": task.name, "kind": task.kind, "n": int(len(frame)), "errors": int(errors.sum()),
             "empty": int(((text.str.strip() == "") & ~errors).sum()),
             "bucket_n": np.bincount(bucket, minlength=N_BUCKETS).astype(np.float64),
             "anls_bucket": np.bincount(bucket, weights=anls, minlength=N_BUCKETS)}
    if task.kind == MULTILABEL:
        stats.update(_multilabel_stats(task, gold, text, frame, bucket))
    elif task.kind == CHOICE:
        stats.update(_choice_stats(task, gold, text, bucket))
    elif task.kind == SETMATCH:
        question = frame["question"] if "question" in frame else pd.Series([""] * len(frame), dtype=object)
        stats.update(_setmatch_stats(gold, text, question, bucket))
    return stats


def merge(a: dict | None, b: dict | None) -> dict | None:
    """The stats of two batches together (arrays and counts add, ordered lists concatenate in a, b order)."""
    if a is None or b is None:
        return b if a is None else a
    if a["task"] != b["task"]:
        raise ValueError(f"cannot merge stats of task {a['task']!r} with {b['task']!r}")
    out = {}
    for key in a.keys() | b.keys():
        x, y = a.get(key), b.get(key)
        if x is None or y is None:
            out[key] = y if x is None else x
        elif isinstance(x, str):
            out[key] = x
        else:
            out[key] = x + y  # ndarray, int, float add; lists concatenate
    return out
