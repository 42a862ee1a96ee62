"""The reduction: stats of split batches merge to the stats of the whole; Ray Data's score_dataset on a real
local cluster prints exactly what score_frame prints on the same rows."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecg.rows import PREDICTION_SCHEMA
from metrics.reduce import batch_stats, merge, merge_table, stats_table
from metrics.score import finalize, score_frame
from ecgtasks import get_task

QA = "<image>\nWhich? Options: sinus rhythm, atrial fibrillation, none. " \
     "Only answer based on the given Options without any explanation."


def with_schema_columns(part: pd.DataFrame) -> pd.DataFrame:
    """The PREDICTION_SCHEMA columns in order; a nullable column the rows do not carry is null."""
    return part.assign(**{c: None for c in PREDICTION_SCHEMA.names if c not in part})[list(PREDICTION_SCHEMA.names)]


def rows(n=240, seed=0) -> pd.DataFrame:
    """Prediction rows of three tasks, shuffled together; unparsable letters, errors, scores included."""
    rng = np.random.default_rng(seed)
    pick = lambda pool, k: np.array(pool, dtype=object)[rng.integers(0, len(pool), k)]  # noqa: E731
    code = pd.DataFrame({"task": "code15", "answer": pick(["NORM", "ABNORMAL", "SB", "AF", "SB; 1dAVb", "ST"], n),
                         "prediction": pick(["NORM", "AF", "Answer: SB", "sinus tachycardia", "ST segment", ""], n),
                         "question": "q"})
    code["label_scores"] = [json.dumps({"AF": round(float(a), 3), "SB": round(float(b), 3)})
                            for a, b in rng.random((n, 2))]
    csn = pd.DataFrame({"task": "csn-test-no-cot", "answer": pick(list("ABCDEFGH"), n),
                        "prediction": pick(["A", "B. yes", "no idea", "The correct option is C", ""], n),
                        "question": "q"})
    qa = pd.DataFrame({"task": "ecgqa", "answer": pick(["sinus rhythm", "none", "sinus rhythm, atrial fibrillation"], n),
                       "prediction": pick(["sinus rhythm", "None", "Atrial fibrillation and sinus rhythm"], n),
                       "question": QA})
    out = pd.concat([code, csn, qa], ignore_index=True).sample(frac=1, random_state=seed).reset_index(drop=True)
    out["id"] = [f"r{i:05d}" for i in range(len(out))]
    out["error"] = np.where(rng.random(len(out)) < 0.03, "decode failed", None)
    out["model"], out["latency_ms"], out["prompt_tokens"] = "m", 1.0, 1
    out["truncated"] = rng.random(len(out)) < 0.1  # answers cut by the token budget: counted per task
    return out


def by_task(frame):
    return {get_task(t).name: part.reset_index(drop=True) for t, part in frame.groupby("task", sort=False)}


def test_merged_batches_equal_one_batch():
    for name, part in by_task(rows()).items():
        task = get_task(name)
        pieces = [batch_stats(task, part.iloc[i:i + 37]) for i in range(0, len(part), 37)]
        merged = None
        for p in pieces:
            merged = merge(merged, p)
        assert finalize(task, merged) == finalize(task, batch_stats(task, part)), name


def test_stats_table_reports_unknown_tasks_and_bad_rows():
    frame = rows(30).assign(task="code15")
    frame.loc[0, "task"] = "no-such-task"
    table = stats_table(frame)
    merged, failed = merge_table(table.to_dict("records"))
    assert merged["code15"]["n"] == len(frame) - 1 and failed["no-such-task"]["rows"] == 1
    bad = frame.iloc[1:5].assign(label_scores="{not json")
    assert stats_table(bad)["error"].iloc[0]  # counted and reported, not raised


@pytest.mark.slow
def test_score_dataset_equals_score_frame(ray_cluster, tmp_path):
    from pipelines.score import score_dataset

    frame = rows()
    half = len(frame) // 2
    for i, part in enumerate((frame.iloc[:half], frame.iloc[half:])):
        pq.write_table(pa.Table.from_pandas(with_schema_columns(part), schema=PREDICTION_SCHEMA,
                                            preserve_index=False), tmp_path / f"part-{i}.parquet")
    got = score_dataset(str(tmp_path))
    for name, part in by_task(frame).items():
        want = score_frame(name, part)
        want.pop("duplicate_ids")
        assert got[name] == want, name
    assert got["csn"]["ecgbench"]["random_letters"] > 0  # the seeded letters were drawn in the same order


def whole_run_rows() -> pd.DataFrame:
    """mmmu, csn, g12 rows with unparsable answers, and ECG-QA rows with list golds, interleaved across tasks
    (each task's rows keep their order: the reference draws in line order)."""
    from test_metrics_published import QA as LIST_QA

    choice = [("mmmu", "m0", "A", "?"), ("csn", "c0", "E. x", "x"), ("g12", "g0", "C. x", "-"),
              ("csn", "c1", "D. x", "y"), ("mmmu", "m1", "B", "??"), ("g12", "g1", "B. x", "-"),
              ("csn", "c2", "A. x", "z"), ("mmmu", "m2", "C", "C"), ("g12", "g2", "H. x", "-"),
              ("csn", "c3", "B. x", "B")]
    out = [{"id": i, "task": t, "question": "q", "answer": g, "prediction": p} for t, i, g, p in choice]
    out[5:5] = [{"id": k, "task": "ecgqa", "question": q, "answer": json.dumps(gold), "prediction": text}
                for k, (q, gold, text) in LIST_QA.items()]
    frame = pd.DataFrame(out)
    frame["label_scores"], frame["model"], frame["error"], frame["latency_ms"] = None, "m", None, 1.0
    frame["prompt_tokens"] = 1
    return frame


@pytest.mark.slow
def test_score_dataset_whole_run_letters_and_list_golds(ray_cluster, tmp_path):
    from metrics.score import letter_stream
    from pipelines.score import score_dataset
    from test_metrics_published import QA as LIST_QA
    from test_metrics_published import QA_ECGBENCH, QA_STRICT

    frame = whole_run_rows()
    for i, part in enumerate((frame.iloc[:6], frame.iloc[6:])):
        pq.write_table(pa.Table.from_pandas(with_schema_columns(part), schema=PREDICTION_SCHEMA,
                                            preserve_index=False), tmp_path / f"part-{i}.parquet")
    got = score_dataset(str(tmp_path), random_order="benchmark")
    # one seed-42 stream: mmmu m0, m1 draw A, A (m0 lucky); csn c0, c1, c2 draw E, D, D (c0, c1 lucky);
    # g12 g0, g1, g2 draw C, B, B (g0, g1 lucky)
    assert [got[t]["accuracy"] for t in ("mmmu", "csn", "g12")] == [66.7, 75.0, 66.7]
    assert got["g12"]["ecgbench"]["drawn_before"] == {"mmmu": 2, "csn": 3}
    alone = score_dataset(str(tmp_path))  # each task its own stream: csn B, A, E and g12 B, A, E: none lucky
    assert [alone[t]["accuracy"] for t in ("mmmu", "csn", "g12")] == [66.7, 25.0, 0.0]
    assert (got["ecgqa"]["accuracy"], got["ecgqa"]["strict"]["accuracy"]) == (QA_ECGBENCH, QA_STRICT)
    drawn = {}
    for name in ("mmmu", "csn", "g12"):  # the in-memory path, task by task, gives the same figures
        part = frame[frame["task"] == name].reset_index(drop=True)
        want = score_frame(name, part, rng=letter_stream(name, order="benchmark", drawn_before=drawn))
        want.pop("duplicate_ids")
        want["ecgbench"].update(random_order="benchmark", drawn_before=dict(drawn))
        assert got[name] == want, name
        drawn[name] = want["ecgbench"]["random_letters"]
    qa = frame[frame["task"] == "ecgqa"].reset_index(drop=True)
    want = score_frame("ecgqa", qa.assign(answer=[v[1] for v in LIST_QA.values()]))  # golds as lists in memory
    want.pop("duplicate_ids")
    assert got["ecgqa"] == want
