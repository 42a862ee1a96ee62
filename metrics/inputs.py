"""Reading references and predictions in every accepted form, and joining them with honest counts.

References: ECGBench records (JSON list, JSONL or Parquet with ``id`` and ``conversations``; gold = the first
``gpt`` turn, question = the first ``human`` turn) or our sample rows (Parquet file or folder, SAMPLE_SCHEMA).
Predictions: the reference output form (JSONL with ``question_id`` or ``id``, and ``text`` or ``response``)
or our prediction rows (Parquet file or folder, PREDICTION_SCHEMA). Paths are local or ``s3://``.

A gold answer given as a list (ECG-QA) becomes its JSON text in ``answer`` (``metrics.parsing.gold_text``).

Example::

    refs = read_references("ecgbench/code15-test.json")      # id, question, answer
    preds = read_predictions("runs/eval/predictions")        # id, prediction, label_scores, error, ...
    frame, report = join(refs, preds)                        # strict: one row per reference id
    lines, counts = prediction_lines(refs, preds)            # ecgbench: one row per prediction line
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ecg import storage
from ecg.rows import one_per_id
from metrics import parsing

MISSING = "missing prediction"


def data_files(uri: str) -> list[str]:
    """The Parquet files of a folder (sorted), or ``[uri]`` for a single file; a clear error if neither."""
    fs, path = storage.resolve(uri)
    from pyarrow.fs import FileType

    if fs.get_file_info(path).type == FileType.Directory:
        files = storage.list_files(uri, ".parquet")
        if not files:
            raise FileNotFoundError(f"{uri}: a folder without .parquet files")
        return files
    if fs.get_file_info(path).type == FileType.NotFound:
        raise FileNotFoundError(f"{uri}: no such file or folder")
    return [uri]


def _read_json_records(uri: str) -> list[dict]:
    from ecg.ecgbench import read_records

    records = read_records(uri)
    bad = [r for r in records if "_error" in r]
    if bad:
        raise ValueError(f"{uri}: {len(bad)} line(s) are not JSON, first {bad[0]['id']} ({bad[0]['_error']})")
    return records


def read_table(uri: str) -> pd.DataFrame:
    """Rows of a Parquet file or folder, a JSON list or a JSONL file, as a DataFrame."""
    files = data_files(uri)
    if all(f.endswith(".parquet") for f in files):
        fs, _ = storage.resolve(uri)
        tables = [pq.read_table(storage.resolve(f)[1], filesystem=fs) for f in files]
        return pd.concat([t.to_pandas() for t in tables], ignore_index=True) if tables else pd.DataFrame()
    return pd.DataFrame.from_records(_read_json_records(files[0]))


def _turns(uri: str, ids, conversations, role: str) -> list:
    """The text of the first ``role`` turn ("human" / "gpt") of each ECGBench conversation, None where there is
    none (``ecgtasks.conversation.first_text``); a conversation that cannot be read names its file and record."""
    from ecgtasks.conversation import first_text

    try:
        return [first_text(c, role, record=rid) for rid, c in zip(ids, conversations)]
    except ValueError as e:
        raise ValueError(f"{uri}: {e}") from None


def _all_turns(uri: str, raw: pd.DataFrame) -> pd.DataFrame:
    """One reference per (human, gpt) turn of every record, with the ids and ``meta`` that ``ecgvlm prepare``
    gives its sample rows (``<id>``, ``<id>#t<k>``; ``record_id``, ``turn``, the earlier turns in ``history``)."""
    from ecg.ecgbench import turn_pairs
    from ecg.samples import RecordError

    rows = []
    for rid, conversations in zip(raw["id"].astype(str), raw["conversations"]):
        try:
            pairs = turn_pairs(conversations)
        except RecordError as e:
            raise ValueError(f"{uri}: record {rid!r}: {e}") from None
        history: list[dict] = []
        for k, (question, answer) in enumerate(pairs):
            meta = {"record_id": rid, "turn": k, "history": list(history)}
            rows.append({"id": rid if k == 0 else f"{rid}#t{k}", "question": question, "answer": answer,
                         "meta": json.dumps(meta)})
            history += [{"role": "user", "text": question}, {"role": "assistant", "text": answer}]
    return pd.DataFrame(rows, columns=["id", "question", "answer", "meta"])


def read_references(uri: str, *, all_turns: bool = False) -> pd.DataFrame:
    """``id``, ``question``, ``answer`` (and ``task``, ``meta`` where given) from ECGBench records or sample rows.

    ECGBench records give their first turn (the benchmark's question and gold), or with ``all_turns`` every
    turn as its own row, ids and ``meta`` as ``ecgvlm prepare`` writes them (the arena's dialogues).
    """
    raw = read_table(uri)
    if "id" not in raw and "No" in raw:  # the mmmu-ecg file keys its records by "No"
        raw = raw.rename(columns={"No": "id"})
    if "id" not in raw:
        raise KeyError(f"{uri}: references need an `id` column; have {sorted(raw.columns)}")
    if "conversations" in raw and all_turns:
        out = _all_turns(uri, raw)
    elif "conversations" in raw:
        ids = raw["id"].astype(str)
        out = pd.DataFrame({"id": ids, "question": _turns(uri, ids, raw["conversations"], "human"),
                            "answer": _turns(uri, ids, raw["conversations"], "gpt")})
    elif "answer" in raw:
        out = raw[[c for c in ("id", "task", "question", "answer", "meta") if c in raw]].copy()
        out["id"] = out["id"].astype(str)
    else:
        raise KeyError(f"{uri}: references need `conversations` (ECGBench) or `answer` (sample rows); "
                       f"have {sorted(raw.columns)}")
    out["answer"] = _gold_texts(uri, out["id"], out["answer"])  # ECG-QA's list golds as JSON text
    return out.reset_index(drop=True)


def _gold_texts(uri: str, ids, values) -> list:
    """Every gold as text (a list as its JSON text); a gold that cannot be kept names its record."""
    out = []
    for rid, value in zip(ids, values):
        try:
            out.append(parsing.gold_text(value))
        except ValueError as e:
            raise ValueError(f"{uri}: record {rid!r}: {e}") from None
    return out


def _turn_text(uri: str, rid: str, k: int, item) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        for key in ("response", "answer", "text"):
            if isinstance(item.get(key), str):
                return item[key]
    raise ValueError(f"{uri}: record {rid!r} turn {k}: a response is neither text nor an object with "
                     f"`response`, `answer` or `text`: {str(item)[:80]!r}")


def _expand_turns(uri: str, ids: pd.Series, texts: pd.Series) -> pd.DataFrame:
    """One prediction per turn from the reference's multi-turn output (the arena's: a list of responses per
    record, ``[{"response": ...}, ...]``), ids as ``ecgvlm prepare`` names turns (``<id>``, ``<id>#t<k>``)."""
    rows = []
    for rid, value in zip(ids, texts):
        items = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
        rows += [{"id": rid if k == 0 else f"{rid}#t{k}", "prediction": _turn_text(uri, rid, k, item)}
                 for k, item in enumerate(items)]
    return pd.DataFrame(rows, columns=["id", "prediction"])


def read_predictions(uri: str) -> pd.DataFrame:
    """``id``, ``prediction`` (+ ``label_scores``, ``error``, ``question``, ``answer``, ``task`` where given).
    A multi-turn output (a list of responses per line, as the reference's arena output) gives one row per turn."""
    raw = read_table(uri)
    ids = next((c for c in ("question_id", "id") if c in raw), None)
    text = next((c for c in ("prediction", "text", "response", "predict_convs") if c in raw), None)
    if ids is None or text is None:
        raise KeyError(f"{uri}: predictions need `question_id` or `id`, and `text`, `response` or `prediction`; "
                       f"have {sorted(raw.columns)}")
    if raw[text].map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any():
        return _expand_turns(uri, raw[ids].astype(str), raw[text])
    out = pd.DataFrame({"id": raw[ids].astype(str), "prediction": raw[text]})
    if "prompt" in raw and "question" not in raw:  # the reference output keeps the question as `prompt`
        raw = raw.assign(question=raw["prompt"].map(lambda p: p.get("prompt") if isinstance(p, dict) else p))
    for col in ("label_scores", "error", "question", "answer", "task"):
        if col in raw:
            out[col] = raw[col]
    return out


def only_task(frame: pd.DataFrame | None, task: str) -> tuple[pd.DataFrame | None, int]:
    """``(rows of task, rows left out)``: where rows name their task (sample and prediction rows do), those of
    other tasks are dropped and counted; rows without one (ECGBench files, PULSE's JSONL) all stay.
    Example: ``only_task(df_with_code15_and_ecgqa_rows, "code15-test")`` -> ``(the code15 rows, n ecgqa)``."""
    from metrics.tasks import get_task

    if frame is None or "task" not in frame:
        return frame, 0
    name = get_task(task).name
    named = frame["task"].notna() & (frame["task"].astype(str) != "")
    keep = ~named | (frame["task"].astype(str).map(_canonical) == name)
    return frame[keep].reset_index(drop=True), int((~keep).sum())


def _canonical(task: str) -> str:
    from metrics.tasks import get_task

    try:
        return get_task(task).name
    except KeyError:
        return task


def join(references: pd.DataFrame | None, predictions: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """One row per reference id: its gold, question and prediction; and counts of every mismatch.

    A reference without a prediction is kept with ``error = "missing prediction"`` (scored as an empty
    answer); a prediction without a reference cannot be scored and is counted; duplicate prediction ids keep one row (``ecg.rows.one_per_id``: the
    first without an error), duplicate reference ids the first.
    Without references, the predictions' own ``answer`` column is the gold."""
    def first_ids(frame):
        return [str(x) for x in frame["id"].head(5)]

    report = {"predictions": int(len(predictions))}
    dup_p = predictions["id"].duplicated()
    report["duplicate_prediction_ids"] = int(dup_p.sum())
    report["duplicate_prediction_examples"] = first_ids(predictions[dup_p])
    predictions, _ = one_per_id(predictions)
    if references is None:
        if "answer" not in predictions:
            raise KeyError("without references the predictions need an `answer` column (our prediction rows)")
        frame = predictions.copy()
        report.update(references=None, missing_predictions=0, unmatched_predictions=0)
    else:
        report["references"] = int(len(references))
        dup_r = references["id"].duplicated()
        report["duplicate_reference_ids"] = int(dup_r.sum())
        report["duplicate_reference_examples"] = first_ids(references[dup_r])
        references = references[~dup_r]
        preds = predictions.drop(columns=[c for c in ("answer",) if c in predictions])
        if "question" in references and "question" in preds:
            preds = preds.rename(columns={"question": "prediction_question"})
        frame = references.merge(preds, on="id", how="left", indicator=True)
        missing = (frame["_merge"] == "left_only").to_numpy()
        unmatched = ~predictions["id"].isin(references["id"])
        report.update(missing_predictions=int(missing.sum()), missing_examples=first_ids(frame[missing]),
                      unmatched_predictions=int(unmatched.sum()),
                      unmatched_examples=first_ids(predictions[unmatched]))
        if "error" not in frame:
            frame["error"] = None
        frame["error"] = frame["error"].astype(object).where(~missing, MISSING)
        frame["prediction"] = frame["prediction"].astype(object).where(~missing, "")
        if "prediction_question" in frame:
            q = frame["question"].astype(object)
            frame["question"] = q.where(q.notna() & (q.astype(str) != ""), frame["prediction_question"])
        frame = frame.drop(columns=[c for c in ("_merge", "prediction_question") if c in frame])
    text = frame["prediction"].astype(object)
    report["empty_predictions"] = int((text.isna() | (text.astype(str).str.strip() == "")).sum())
    report["warnings"] = _warnings(report)
    return frame.reset_index(drop=True), report


def prediction_lines(references: pd.DataFrame | None, predictions: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The rows the published protocol scores: every prediction line in file order (a duplicate id again,
    with its own text) with its reference's gold; a reference without a prediction is not scored, a line
    without a reference is left out (the reference code stops there with a KeyError). Both are counted.

    The question is the line's own (the reference reads ECG-QA's options from its output's ``prompt``),
    else the reference's. Without references, every line with its own ``answer``.

    Example::

        lines, counts = prediction_lines(refs, preds)
        counts  # {"lines": 1613, "duplicate_lines": 2, "missing_not_scored": 0, "unmatched_not_scored": 0,
                #  "scored": 1613}
    """
    lines = predictions.reset_index(drop=True).assign(_line=np.arange(len(predictions)))
    counts = {"lines": int(len(lines)), "duplicate_lines": int(lines["id"].duplicated().sum())}
    if references is None:
        if "answer" not in lines:
            raise KeyError("without references the predictions need an `answer` column (our prediction rows)")
        rows = lines
        counts.update(missing_not_scored=0, unmatched_not_scored=0)
    else:
        refs = references[~references["id"].duplicated()]
        refs = refs[[c for c in ("id", "answer", "question", "task") if c in refs]]
        drop = ["answer"] + [c for c in ("task",) if c in refs]
        preds = lines.drop(columns=[c for c in drop if c in lines])
        if "question" in preds and "question" in refs:
            preds = preds.rename(columns={"question": "line_question"})
        rows = preds.merge(refs, on="id", how="inner").sort_values("_line", kind="stable")
        if "line_question" in rows:
            q = rows["line_question"].astype(object)
            rows["question"] = q.where(q.notna() & (q.astype(str) != ""), rows["question"])
            rows = rows.drop(columns=["line_question"])
        counts.update(missing_not_scored=int((~refs["id"].isin(lines["id"])).sum()),
                      unmatched_not_scored=int((~lines["id"].isin(refs["id"])).sum()))
    counts["scored"] = int(len(rows))
    return rows.drop(columns=["_line"]).reset_index(drop=True), counts


def _warnings(r: dict) -> list[str]:
    out = []
    if r.get("missing_predictions"):
        out.append(f"{r['missing_predictions']} of {r['references']} reference ids have no prediction "
                   f"(e.g. {r['missing_examples']}): scored as empty answers by strict, not scored by ecgbench")
    if r.get("unmatched_predictions"):
        out.append(f"{r['unmatched_predictions']} of {r['predictions']} predictions have no reference "
                   f"(e.g. {r['unmatched_examples']}): not scored")
    if r.get("duplicate_reference_ids"):
        out.append(f"{r['duplicate_reference_ids']} duplicate reference id(s) "
                   f"(e.g. {r['duplicate_reference_examples']}): the first is kept")
    if r.get("duplicate_prediction_ids"):
        out.append(f"{r['duplicate_prediction_ids']} duplicate prediction id(s) "
                   f"(e.g. {r['duplicate_prediction_examples']}): strict keeps the first without an error, "
                   "ecgbench counts every line")
    if r.get("empty_predictions"):
        out.append(f"{r['empty_predictions']} prediction(s) are empty (including missing ones)")
    return out
