"""From merged counts to the numbers: the ``ecgbench`` protocol (published rules) and ``strict`` (corrected).

``score_frame(task, frame)`` is the one entry point for a table of rows; ``finalize`` is shared with the
Ray reduction (``pipelines.score.score_dataset``), so both paths print identical numbers.

Which rows each protocol scores: ``strict`` one row per reference id (a missing prediction is a wrong, empty
answer; a duplicate keeps its first line); ``ecgbench`` what the reference code scores, one row per
prediction line in file order (a duplicate line counts again, a reference without a prediction is not
scored: the divisor is the number of lines). ``score_frame(..., ecgbench_rows=lines)`` takes those lines
where they differ from the frame (``metrics.inputs.prediction_lines``); ``ecgbench.n`` says how many.

Random letters (csn, g12, mmmu): the reference draws ``random.choice`` from one ``random.seed(42)`` stream
for each unparsable answer, in the order of the prediction file's lines, from A-D (mmmu) or A-H (csn, g12).
Its whole run scores mmmu, then csn, then g12 from the same stream; ``letter_stream`` gives either the
task's own stream (the default) or its place in that whole run.

The result (also what ``ecgvlm score --json`` prints)::

    {"task": "code15", "version": "1", "kind": "multilabel", "n": 1400, "errors": 0,
     "f1": 27.5, "auc": 65.3, "hamming_loss": 16.5, "anls": 68.7,        # ecgbench, x100, one decimal
     "ecgbench": {"n": 1400, "classes": [...], "per_class": {...}, "random_letters": 0, "notes": [...]},
     "strict": {"f1_macro": .., "f1_micro": .., "auc": .., "per_class": [...], "intervals": {...}, ...},
     "warnings": [...]}

NaN (the reference's AUC when a class has one gold value) is written as null.
"""

from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pandas as pd

from metrics import study
from metrics.rates import _div, binary_auc, f1_from, hist_auc, pct1, pct2, roc_points  # noqa: F401 (also this module's API)
from metrics.reduce import batch_stats
from ecgtasks import CHOICE, MULTILABEL, SETMATCH, Task, get_task

PROTOCOLS = ("ecgbench", "strict", "both", study.NAME, "all")  # both: ecgbench + strict; all: the three
N_BOOT = 1000
REFERENCE_SEED = 42  # the reference draws random letters from random.seed(42)
# the choice tasks in the order the reference's whole run scores them (eval_mmmu, then eval_csn_test, then
# eval_g12_test in its __main__): one random stream serves all three
REFERENCE_RUN = ("mmmu", "csn", "g12")
RANDOM_ORDERS = ("task", "benchmark")
# the reference skips a choice prediction file whose line count is not the split's size (it prints nothing)
REFERENCE_LINES = {"mmmu": 200, "csn": 1611, "g12": 2026}


def letter_stream(task: Task | str, *, order: str = "task", drawn_before: dict[str, int] | None = None
                  ) -> random.Random:
    """The ``random.Random`` the ecgbench protocol draws ``task``'s random letters from.

    ``order="task"``: ``random.Random(42)``, the task scored alone. ``order="benchmark"``: the task's place
    in the reference's whole run, in which one stream serves mmmu, then csn, then g12: first the letters
    the tasks before it drew (``drawn_before``: task -> count, their reported ``random_letters``; every
    task before it must be given, 0 if it was not run), each from its own options.

    Example::

        rng = letter_stream("g12", order="benchmark", drawn_before={"mmmu": 3, "csn": 40})
        # = random.seed(42); 3 x random.choice("ABCD"); 40 x random.choice("ABCDEFGH"); then g12's letters
    """
    task = get_task(task) if isinstance(task, str) else task
    drawn_before = {get_task(k).name: int(v) for k, v in (drawn_before or {}).items()}
    if order not in RANDOM_ORDERS:
        raise ValueError(f"random order must be one of {RANDOM_ORDERS}, got {order!r}")
    rng = random.Random(REFERENCE_SEED)
    if order == "task" and drawn_before:
        raise ValueError("letters drawn before a task only count in the benchmark random order")
    if order == "task" or task.kind != CHOICE:  # the other kinds draw no letters
        return rng
    if task.name not in REFERENCE_RUN:
        raise ValueError(f"task {task.name!r} has no place in the reference's run {REFERENCE_RUN}")
    before = REFERENCE_RUN[:REFERENCE_RUN.index(task.name)]
    wrong = sorted(set(drawn_before) - set(before))
    missing = [t for t in before if t not in drawn_before]
    if wrong or missing or any(v < 0 for v in drawn_before.values()):
        raise ValueError(f"in the benchmark random order {task.name} comes after {list(before) or 'no task'}: "
                         f"give the letters each drew, e.g. {dict.fromkeys(before, 0)} (got {drawn_before})")
    for name in before:
        options = list(get_task(name).labels)
        for _ in range(drawn_before[name]):
            rng.choice(options)
    return rng


# ---- ecgbench -----------------------------------------------------------------------------------------------
def _choice_notes(task: Task, st: dict, options: list[str]) -> list[str]:
    notes = [f"{len(st['eb_unparsed_gold'])} unparsable answer(s) got a random letter ({options[0]}-{options[-1]}, "
             "seed 42, in line order), as the reference does"] if st["eb_unparsed_gold"] else []
    size = REFERENCE_LINES.get(task.name)
    if size is not None and st["n"] != size:
        notes.append(f"the reference prints no {task.name} accuracy for a prediction file without exactly "
                     f"{size} lines ({st['n']} here)")
    return notes


def _ecgbench(task: Task, st: dict, rng: random.Random | None = None) -> tuple[dict, dict]:
    """(top-level fields, details) of the published protocol; choice tasks draw from ``rng``."""
    if task.kind == MULTILABEL:
        c = st["eb_counts"]  # (L, 4)
        seen = (c[:, 0] + c[:, 2]) > 0  # binarisation: only classes that occur in the gold labels
        cs = c[seen]
        f1, auc = f1_from(cs), binary_auc(cs)
        n_cells = cs.sum()  # = rows x seen classes
        if len(cs) == 1 and cs[0, 1:].sum() > 0:
            # the reference's quirk: with one class, sklearn sees an (n, 1) column as binary 0/1 targets and
            # f1_score(average=None) also returns the F1 of value 0 (tn as hits), which enters the mean
            tp, fp, fn, tn = cs[0]
            f1 = np.append(f1, f1_from(np.array([tn, fn, fp, tp])))
        raw = {"f1": float(np.mean(f1)) if len(cs) else math.nan,
               "auc": float(np.mean(auc)) if len(cs) else math.nan,  # NaN if any class has one gold value
               "hamming_loss": float((cs[:, 1] + cs[:, 2]).sum() / n_cells) if n_cells else math.nan}
        top = {k: pct1(v) for k, v in raw.items()}
        classes = sorted(np.array(task.labels)[seen].tolist())  # MultiLabelBinarizer's sorted classes
        per = {lab: {"f1": pct1(f), "auc": pct1(a)} for lab, f, a in zip(np.array(task.labels)[seen], f1, auc)}
        notes = [f"class {k} has one gold value: its AUC is undefined and the mean is NaN (null)"
                 for k, v in per.items() if v["auc"] is None]
        return top, {"classes": classes, "per_class": {k: per[k] for k in classes}, "notes": notes,
                     "raw": {k: (None if math.isnan(v) else v) for k, v in raw.items()}}
    if task.kind == CHOICE:
        rng = random.Random(REFERENCE_SEED) if rng is None else rng
        options = list(task.labels)
        lucky = sum(rng.choice(options) == g for g in st["eb_unparsed_gold"])  # one draw per row, in order
        n = st["n"]
        acc = (st["eb_correct"] + lucky) / n if n else None
        return ({"accuracy": pct1(acc) if n else None},
                {"random_letters": len(st["eb_unparsed_gold"]), "random_letters_correct": int(lucky),
                 "raw": {"accuracy": acc},
                 "notes": _choice_notes(task, st, options)})
    if task.kind == SETMATCH:
        n = st["n"]
        notes = [f"{st['qa_no_options']} row(s) have no \"Options:\" in their question: the reference takes "
                 "the whole question's comma-separated parts as candidates"] if st.get("qa_no_options") else []
        return {"accuracy": pct1(st["eb_correct"] / n) if n else None}, {"notes": notes}
    return {}, {"notes": ["the paper scores this task with an LLM judge; only ANLS is computed here"]}


# ---- strict -------------------------------------------------------------------------------------------------
def _intervals(samples: dict[str, np.ndarray], points: dict | None = None) -> dict:
    """95% percentile intervals of bootstrap replicates, x100. An interval is ``None`` (undefined) when under half
    of the replicates are defined (a class absent from most resamples), or when it does not contain its point
    estimate (``points``, x100): with a handful of rows the replicates' metric is not the estimate's metric."""
    out = {}
    for key, v in samples.items():
        ok = v[~np.isnan(v)]
        if len(ok) == 0 or len(ok) < 0.5 * len(v):
            out[key] = None
            continue
        lo, hi = pct2(np.percentile(ok, 2.5)), pct2(np.percentile(ok, 97.5))
        point = (points or {}).get(key)
        out[key] = None if point is not None and not (lo - 1e-9 <= point <= hi + 1e-9) else [lo, hi]
    return out


def _strict_multilabel(task: Task, st: dict, weights: np.ndarray, G: np.ndarray) -> dict:
    labels = task.labels
    c = st["st_counts"].sum(0)  # (L, 4)
    tp, fp, fn, tn = c.T
    used = (tp + fn + fp) > 0  # classes in gold or predicted: macro means over these
    scores = st["score_hist"] is not None and st["score_rows"] > 0
    auc = hist_auc(st["score_hist"][:, 0], st["score_hist"][:, 1]) if scores else binary_auc(c)
    rows = [{"label": lab, "precision": pct2(p), "recall": pct2(r), "f1": pct2(f) if u else None,
             "support": int(s), "predicted": int(q), "auc": pct2(a)}
            for lab, p, r, f, u, s, q, a in zip(labels, _div(tp, tp + fp), _div(tp, tp + fn), f1_from(c), used,
                                                tp + fn, tp + fp, auc)]
    T = c.sum(0)
    out = {"f1_macro": pct2(f1_from(c)[used].mean()) if used.any() else None,
           "f1_micro": pct2(f1_from(T)), "precision_micro": pct2(_div(T[0], T[0] + T[1])),
           "recall_micro": pct2(_div(T[0], T[0] + T[2])),
           "auc": pct2(np.nanmean(auc)) if (~np.isnan(auc)).any() else None,
           "auc_source": "label_scores" if scores else "0/1 predictions",
           "auc_undefined": [lab for lab, a in zip(labels, auc) if np.isnan(a)],
           "hamming_loss": pct2(_div(T[1] + T[2], T.sum())),
           "exact_match": pct2(_div(st["st_exact"].sum(), st["n"])), "per_class": rows}
    if scores:
        out["roc"] = roc_points(st["score_hist"], labels)
    # bootstrap: weights (R, g) over the non-empty buckets G
    bc = np.einsum("rg,glc->rlc", weights, st["st_counts"][G])  # (R, L, 4)
    bT = bc.sum(1)
    if scores:
        # the interval uses the coarser per-bucket histogram (BOOT_BINS): the point estimate is the fine one
        bh = np.einsum("rg,glkb->rlkb", weights, st["score_boot"][G])  # (R, L, 2, bins)
        bauc = hist_auc(bh[..., 0, :], bh[..., 1, :])
    else:
        bauc = binary_auc(bc)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN replicates (a class absent) are expected
        out["intervals"] = _intervals({
            "f1_macro": f1_from(bc)[:, used].mean(1) if used.any() else np.full(len(bc), np.nan),
            "f1_micro": f1_from(bT), "hamming_loss": _div(bT[:, 1] + bT[:, 2], bT.sum(1)),
            "auc": np.nanmean(np.where(np.isnan(auc), np.nan, bauc), 1) if (~np.isnan(auc)).any()
            else np.full(len(bc), np.nan)}, points=out)
    return out


def _strict(task: Task, st: dict, seed: int, n_boot: int = N_BOOT) -> dict:
    n = st["n"]
    G = np.flatnonzero(st["bucket_n"] > 0)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(G), np.full(len(G), 1 / len(G)), size=n_boot) if len(G) else np.zeros((0, 0))
    bn = weights @ st["bucket_n"][G] if len(G) else np.zeros(0)
    out = {"n": n, "errors": st["errors"], "anls": pct2(_div(st["anls_bucket"].sum(), n))}
    if task.kind == MULTILABEL and len(G):
        out.update(_strict_multilabel(task, st, weights, G))
    elif task.kind in (CHOICE, SETMATCH):
        out["accuracy"] = pct2(_div(st["st_correct"].sum(), n))
        if task.kind == CHOICE:
            out.update(unparsed=st["st_unparsed"], out_of_range=st["st_out_of_range"])
        out.setdefault("intervals", {})["accuracy"] = _intervals(
            {"accuracy": _div(weights @ st["st_correct"][G], bn)}, points=out)["accuracy"] if len(G) else None
    with np.errstate(invalid="ignore"):
        anls_iv = _intervals({"anls": _div(weights @ st["anls_bucket"][G], bn)}, points=out)["anls"] if len(G) else None
    out.setdefault("intervals", {})["anls"] = anls_iv
    out["bootstrap"] = {"resamples": n_boot, "seed": seed, "unit": f"{len(G)} id-hash buckets", "level": 0.95}
    return out


def finalize(task: Task | str, st: dict, *, protocol: str = "both", seed: int = 0,
             ecgbench_stats: dict | None = None, rng: random.Random | None = None) -> dict:
    """The result dict from merged stats (see the module docstring). ``ecgbench_stats``: the stats of the
    rows the published protocol scores, where they differ from ``st``; ``rng``: its letter stream
    (``letter_stream``; default ``random.Random(42)``)."""
    task = get_task(task) if isinstance(task, str) else task
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    n = st["n"]
    result = {"task": task.name, "version": task.version, "kind": task.kind, "protocol": protocol, "n": n,
              "errors": st["errors"], "empty_predictions": st["empty"],
              "anls": pct1(_div(st["anls_bucket"].sum(), n)), "truncated": int(st.get("truncated", 0)),
              "page_gate": {"checked": int(st.get("pages_checked", 0)), "not_pages": int(st.get("not_pages", 0))}}
    notes = []
    if st["errors"]:
        notes.append(f"{st['errors']} of {n} rows have `error` set: scored as empty predictions (wrong)")
    if st["empty"]:
        notes.append(f"{st['empty']} of {n} rows have an empty prediction")
    if result["truncated"]:
        notes.append(f"{result['truncated']} of {n} answers ended at the token budget (no stop token)")
    if result["page_gate"]["not_pages"]:
        notes.append(f"{result['page_gate']['not_pages']} of {result['page_gate']['checked']} images failed the ECG "
                     f"page gate (not an ECG page)")
    if protocol in ("ecgbench", "both", "all"):
        eb = st if ecgbench_stats is None else ecgbench_stats
        top, details = _ecgbench(task, eb, rng)
        result.update(top)
        result["ecgbench"] = {"n": eb["n"], **details}
    if protocol in ("strict", "both", "all"):
        result["strict"] = _strict(task, st, seed)
    if protocol in (study.NAME, "all"):
        result[study.NAME] = study.finalize(task, st)
    result["warnings"] = notes
    return result


def finalize_tasks(merged: dict[str, dict], *, protocol: str = "both", seed: int = 0,
                   random_order: str = "task") -> dict:
    """``{task: result}`` from merged stats per task. ``random_order="benchmark"``: one letter stream serves
    the choice tasks present in the reference's order (mmmu, csn, g12); each reports the letters drawn
    before it (``ecgbench.drawn_before``). ``"task"``: every task its own ``random.Random(42)``."""
    if random_order not in RANDOM_ORDERS:
        raise ValueError(f"random order must be one of {RANDOM_ORDERS}, got {random_order!r}")
    shared = random.Random(REFERENCE_SEED) if random_order == "benchmark" else None
    run = [t for t in REFERENCE_RUN if t in merged]
    drawn, results = {}, {}
    for task in run + sorted(t for t in merged if t not in run):  # the stream's order first
        results[task] = finalize(task, merged[task], protocol=protocol, seed=seed, rng=shared)
        eb = results[task].get("ecgbench")
        if shared is not None and eb is not None and task in run:
            eb.update(random_order=random_order, drawn_before=dict(drawn))
            drawn[task] = eb["random_letters"]
    return dict(sorted(results.items()))


def _line_note(result: dict, counts: dict) -> str | None:
    if counts["scored"] == result["n"] and not counts["duplicate_lines"]:
        return None
    return (f"ecgbench scores {counts['scored']} prediction lines, as the reference does "
            f"({counts['duplicate_lines']} duplicate line(s) counted again, {counts['missing_not_scored']} "
            f"reference(s) without a prediction not scored); strict scores {result['n']} reference ids once each")


def score_frame(task: str, frame: pd.DataFrame, *, protocol: str = "both", seed: int = 0,
                ecgbench_rows: pd.DataFrame | None = None, line_counts: dict | None = None,
                rng: random.Random | None = None) -> dict:
    """Score a table of rows (``id``, ``answer`` gold text or list, ``prediction`` model text, optional
    ``question``, ``label_scores``, ``error``) of one task; returns the ``ecgvlm score --json`` object.

    Rows are in prediction-line order. ``ecgbench_rows``: the rows of the published protocol where they
    differ from ``frame`` (every prediction line, without the missing ones), with ``line_counts`` from
    ``metrics.inputs.prediction_lines`` (reported as ``ecgbench.lines``); ``rng``: its letter stream.

    Example::

        frame = pd.DataFrame({"id": ["a", "b"], "answer": ["SB", "NORM"], "prediction": ["SB", "ST"]})
        score_frame("code15", frame)["f1"]     # 50.0: SB right, NORM missed
    """
    t = get_task(task)
    eb = batch_stats(t, ecgbench_rows) if ecgbench_rows is not None and protocol != "strict" else None
    result = finalize(t, batch_stats(t, frame), protocol=protocol, seed=seed, ecgbench_stats=eb, rng=rng)
    if line_counts is not None and "ecgbench" in result:
        result["ecgbench"]["lines"] = line_counts
        note = _line_note(result, line_counts)
        result["ecgbench"]["notes"] = result["ecgbench"].get("notes", []) + ([note] if note else [])
    dup = int(frame["id"].duplicated().sum()) if "id" in frame else 0
    if dup:
        result["warnings"].append(f"{dup} duplicate id(s) in the frame: every row was scored")
    result["duplicate_ids"] = dup
    return result


def score_predictions(pred_uri: str, *, protocol: str, driver_rows: int = 200_000, reduce=None) -> tuple[dict, dict]:
    """``({task: result}, {"rows": n, "errors": e, "duplicates_dropped": d})`` over a prediction folder, one
    prediction per id.

    Up to ``driver_rows`` predictions (text only, a few hundred bytes each) are scored here with
    :func:`score_frame`, which takes seconds where starting a Ray job takes longer; bigger sets go through
    ``reduce(pred_uri, protocol=...)`` (the Ray reduction, ``ecgvlm score``'s ``score_dataset``), which needs each
    id written once, as the evaluate job writes them. Duplicates (two runs into one folder at once) are dropped by
    id before scoring. Example: ``score_predictions("runs/eval/predictions", protocol="both")[1]["rows"]``.
    """
    import sys

    from ecg import shards

    ids, duplicates = shards.predicted_ids(pred_uri)
    if duplicates:
        print(f"evaluate: {duplicates} duplicate ids in {pred_uri}; scoring one row per id", file=sys.stderr)
    if len(ids) > driver_rows and not duplicates and reduce is not None:
        results = reduce(pred_uri, protocol=protocol)
    else:
        frame = shards.read_predictions(pred_uri)
        results = {task: score_frame(task, part.reset_index(drop=True), protocol=protocol)
                   for task, part in frame.groupby("task", sort=True)}
    errors = sum(int(r.get("errors", 0) or 0) for r in results.values())
    return results, {"rows": len(ids), "errors": errors, "duplicates_dropped": duplicates}
