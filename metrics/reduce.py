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
                                          (the seeded random letters are drawn at the end, in that order,
                                          which is the prediction file's line order: see metrics.score)
    st_correct (G,), st_unparsed, st_out_of_range    strict choice / set match
    qa_no_options                         set-match rows whose question has no "Options:"

A gold answer given as a list (ECG-QA) is scored from its JSON text (``parsing.gold_text``); its ANLS is
against the items joined by ", ".

Example::

    stats = merge(batch_stats(task, frame.iloc[:500]), batch_stats(task, frame.iloc[500:]))
"""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.json as pajson

from metrics import parsing, study
from metrics.anls import anls_codes
from ecgtasks import CHOICE, MULTILABEL, SETMATCH, Task

N_BUCKETS = 100  # id-hash buckets: bootstrap units that do not depend on how rows are split into blocks
SCORE_BINS = 10_001  # label scores quantised to 1e-4 for AUC (exact for scores given to 4 decimals)
BOOT_BINS = 32  # coarser score histogram per bucket, only for the AUC interval
NEEDED = ("id", "answer", "prediction")


def _buckets(ids) -> np.ndarray:
    """(n,) int64 bucket per id: a polynomial hash of the id's UTF-8 bytes with a murmur finaliser.

    Vectorised over the Arrow buffers (a million ids in ~50 ms) and stable across processes and machines,
    unlike Python's ``hash()``, so a row's bucket never depends on which block it travelled in."""
    arr = pa.array(pd.Series(ids, copy=False, dtype=object).astype(str) if not len(ids) else pd.Series(ids))
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    arr = arr.cast(pa.large_string())
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset: arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    start, lengths = offsets[0], np.diff(offsets)
    h = np.zeros(len(arr), dtype=np.uint64)
    nz = lengths > 0
    if nz.any():
        pos = np.arange(offsets[-1] - start) - np.repeat(offsets[:-1] - start, lengths)  # byte index in its id
        powers = np.cumprod(np.full(int(lengths.max()), 1099511628211, dtype=np.uint64))  # wraps mod 2**64
        contrib = (data[start:offsets[-1]].astype(np.uint64) + np.uint64(1)) * powers[pos]
        h[nz] = np.add.reduceat(contrib, (offsets[:-1] - start)[nz])
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    return (h % np.uint64(N_BUCKETS)).astype(np.int64)


def _cell_counts(bucket: np.ndarray, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(G, L, 4) tp, fp, fn, tn per bucket and label from (n, L) bool gold and prediction."""
    L = y.shape[1]
    cell = 2 * (~p).astype(np.int64) + (~y)  # tp 0, fp 1, fn 2, tn 3
    key = (bucket[:, None] * L + np.arange(L)) * 4 + cell  # (n, L)
    return np.bincount(key.ravel(), minlength=N_BUCKETS * L * 4).reshape(N_BUCKETS, L, 4)


def _error_mask(frame: pd.DataFrame) -> np.ndarray:
    if "error" not in frame:
        return np.zeros(len(frame), dtype=bool)
    err = frame["error"]
    return (err.notna() & (err.astype(str).str.len() > 0)).to_numpy()


def _parse_scores(values: pd.Series, labels) -> tuple[np.ndarray, int]:
    """(n, L) float scores (0 where a row gives none: an unscored label ranks lowest), rows that had any.

    Each value is a JSON object string or a dict; all rows are parsed in one pass by Arrow's JSON reader."""
    values = pd.Series(values, copy=False)
    valid = values.dropna()
    if len(valid) and not isinstance(valid.iloc[0], str):  # dicts (or other mappings) rather than JSON text
        values = values.map(lambda v: json.dumps(dict(v)) if v is not None and v == v else None)
    given = values.notna().to_numpy() & (values.fillna("").str.len() > 0).to_numpy()
    lines = values.where(given, "{}").tolist()
    schema = pa.schema([pa.field(label, pa.float64()) for label in labels])
    opts = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    table = pajson.read_json(io.BytesIO("\n".join(lines).encode()), parse_options=opts,
                             read_options=pajson.ReadOptions(block_size=1 << 26))
    out = np.stack([table.column(label).to_numpy(zero_copy_only=False) for label in labels], 1)
    return np.nan_to_num(out.astype(np.float64), nan=0.0).reshape(len(lines), len(labels)), int(given.sum())


def _score_hists(bucket, y, scores) -> tuple[np.ndarray, np.ndarray]:
    """Histograms per label and gold value: fine (L, 2, SCORE_BINS) and per bucket (G, L, 2, BOOT_BINS)."""
    L = y.shape[1]
    fine = np.clip(np.rint(scores * (SCORE_BINS - 1)), 0, SCORE_BINS - 1).astype(np.int64)  # (n, L)
    coarse = np.clip((scores * BOOT_BINS).astype(np.int64), 0, BOOT_BINS - 1)
    lab, g = np.arange(L), y.astype(np.int64)
    hist = np.bincount(((lab * 2 + g) * SCORE_BINS + fine).ravel(), minlength=L * 2 * SCORE_BINS)
    boot_key = (((bucket[:, None] * L + lab) * 2 + g) * BOOT_BINS + coarse).ravel()
    boot = np.bincount(boot_key, minlength=N_BUCKETS * L * 2 * BOOT_BINS)
    return hist.reshape(L, 2, SCORE_BINS), boot.reshape(N_BUCKETS, L, 2, BOOT_BINS)


def _multilabel_stats(task: Task, gold, text, frame, bucket) -> dict:
    (gc, gu), (tc, tu) = gold, text
    y_eb, p_eb = parsing.ecgbench_gold_u(task, gu)[gc], parsing.ecgbench_labels_u(task, tu)[tc]  # (n, L) bool
    y_st, p_st = parsing.strict_labels_u(task, gu)[gc], parsing.strict_labels_u(task, tu)[tc]
    st = {"eb_counts": _cell_counts(np.zeros_like(bucket), y_eb, p_eb).sum(0),
          "st_counts": _cell_counts(bucket, y_st, p_st),
          "st_exact": np.bincount(bucket, weights=(y_st == p_st).all(1), minlength=N_BUCKETS),
          "score_rows": 0, "score_hist": None, "score_boot": None}
    if "label_scores" in frame and frame["label_scores"].notna().any():
        scores, rows = _parse_scores(frame["label_scores"], task.labels)
        st["score_hist"], st["score_boot"] = _score_hists(bucket, y_st, scores)
        st["score_rows"] = rows
    return st


def _choice_stats(task: Task, gold, text, bucket) -> dict:
    (gc, gu), (tc, tu) = gold, text
    letters = np.array([parsing.reference_letter(t) for t in tu], dtype=object)[tc]
    gold_eb = np.array([g[:1] if task.gold_rule == "first_char" else g for g in gu], dtype=object)[gc]
    parsed = np.array([x is not None for x in letters], dtype=bool)
    strict = np.array([parsing.strict_letter(t) for t in tu], dtype=object)[tc]
    gold_st = np.array([parsing.strict_letter(g) or g.strip()[:1] for g in gu], dtype=object)[gc]
    in_range = np.isin(strict, list(task.labels))
    return {"eb_correct": int((parsed & (letters == gold_eb)).sum()),
            "eb_unparsed_gold": [str(g) for g in gold_eb[~parsed]],
            "st_correct": np.bincount(bucket, weights=in_range & (strict == gold_st), minlength=N_BUCKETS),
            "st_unparsed": int((~np.array([x is not None for x in strict], dtype=bool)).sum()),
            "st_out_of_range": int((np.array([x is not None for x in strict], dtype=bool) & ~in_range).sum())}


def _setmatch_stats(gold, text, question, bucket) -> dict:
    (gc, gu), (tc, tu) = gold, text
    qc, qu = parsing.distinct(parsing.as_text(question))
    # set match reads question, gold and text together: parse each distinct triple once (keys stay < n**2)
    pairs, pc = np.unique(qc.astype(np.int64) * len(gu) + gc, return_inverse=True)
    triples, row = np.unique(pc.reshape(-1).astype(np.int64) * len(tu) + tc, return_inverse=True)
    pair = pairs[triples // len(tu)]
    q, g, t = np.array(qu, dtype=object)[pair // len(gu)], gu[pair % len(gu)], tu[triples % len(tu)]
    row = row.reshape(-1)
    no_options = np.array(["Options:" not in x for x in qu], dtype=bool)[qc] if len(qc) else np.zeros(0, bool)
    return {"eb_correct": int(parsing.ecgbench_setmatch(q, g, t)[row].sum()),
            "st_correct": np.bincount(bucket, weights=parsing.strict_setmatch(q, g, t)[row], minlength=N_BUCKETS),
            "qa_no_options": int(no_options.sum())}


def batch_stats(task: Task, frame: pd.DataFrame) -> dict:
    """Sufficient statistics of one batch of rows of one task (columns: id, answer, prediction, and
    optional question, label_scores, error). Rows with ``error`` set are scored as empty predictions."""
    missing = [c for c in NEEDED if c not in frame]
    if missing:
        raise KeyError(f"score: missing column(s) {missing} for task {task.name!r}; have {sorted(frame.columns)}")
    errors = _error_mask(frame)
    tc, tu = parsing.distinct(frame["prediction"])
    if errors.any():  # an errored row is an empty answer, whatever text it carries
        tu = tu + [""]
        tc = np.where(errors, len(tu) - 1, tc)
    gc, gu = parsing.distinct(parsing.gold_column(frame["answer"]))  # a list gold becomes its JSON text
    bucket = _buckets(frame["id"])
    anls = anls_codes(tc, tu, gc, [parsing.gold_display(g) for g in gu])
    blank = np.array([not t.strip() for t in tu], dtype=bool)[tc] if len(tc) else np.zeros(0, dtype=bool)
    stats = {"task": task.name, "kind": task.kind, "n": int(len(frame)), "errors": int(errors.sum()),
             "empty": int((blank & ~errors).sum()),
             "bucket_n": np.bincount(bucket, minlength=N_BUCKETS).astype(np.float64),
             "anls_bucket": np.bincount(bucket, weights=anls, minlength=N_BUCKETS)}
    gold, text = (gc, gu), (tc, np.array(tu, dtype=object) if task.kind == SETMATCH else tu)
    if task.kind == MULTILABEL:
        stats.update(_multilabel_stats(task, gold, text, frame, bucket))
    elif task.kind == CHOICE:
        stats.update(_choice_stats(task, gold, text, bucket))
    elif task.kind == SETMATCH:
        question = frame["question"] if "question" in frame else pd.Series([""] * len(frame), dtype=object)
        stats.update(_setmatch_stats((gc, np.array(gu, dtype=object)), text, question, bucket))
    stats.update(study.batch_stats(task, (gc, gu), (tc, tu)))  # the smolvlm-study protocol's counts
    # answers cut by the token budget (no stop token); shards written before the column existed have none
    stats["truncated"] = int(frame["truncated"].fillna(False).astype(bool).sum()) if "truncated" in frame else 0
    # the page gate's verdicts (evaluate --page-gate): images checked, and those not an ECG page; none in older shards
    page = frame["is_page"] if "is_page" in frame else pd.Series([], dtype=object)
    stats["pages_checked"], stats["not_pages"] = int(page.notna().sum()), int(page.eq(False).sum())
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


def stats_table(batch: pd.DataFrame) -> pd.DataFrame:
    """The map step at scale: a batch of prediction rows (any tasks) -> one row per task with its pickled
    stats. Rows of an unknown task, or a batch part that cannot be scored, become a row with ``error`` set
    (counted and reported by the driver, never fatal).

    Columns out: ``task`` str, ``rows`` int, ``stats`` bytes (pickle of ``batch_stats``), ``error`` str|None.
    """
    from ecgtasks import get_task

    tasks = batch["task"].astype(object).fillna("") if "task" in batch else pd.Series([""] * len(batch))
    out = []
    for name, part in batch.groupby(tasks.to_numpy(), sort=False):
        try:
            task = get_task(str(name))
            out.append({"task": task.name, "rows": len(part), "stats": pickle.dumps(batch_stats(task, part)),
                        "error": None})
        except Exception as e:  # noqa: BLE001  (a bad batch part is reported, the job goes on)
            out.append({"task": str(name), "rows": len(part), "stats": b"", "error": f"{type(e).__name__}: {e}"})
    return pd.DataFrame(out, columns=["task", "rows", "stats", "error"])


def merge_table(rows) -> tuple[dict[str, dict], dict[str, dict]]:
    """The reduce step: ``stats_table`` rows in order -> (merged stats per task, failures per task with
    ``rows`` and the first ``errors``)."""
    merged, failed = {}, {}
    for row in rows:
        if row["error"] is not None and row["error"] == row["error"]:
            f = failed.setdefault(row["task"], {"rows": 0, "errors": []})
            f["rows"] += int(row["rows"])
            if len(f["errors"]) < 5:
                f["errors"].append(row["error"])
            continue
        merged[row["task"]] = merge(merged.get(row["task"]), pickle.loads(row["stats"]))
    return merged, failed
