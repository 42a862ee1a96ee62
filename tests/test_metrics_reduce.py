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
from metrics.tasks import get_task

QA = "<image>\nWhich? Options: sinus rhythm, atrial fibrillation, none. " \
     "Only answer based on the given Options without any explanation."


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
    out["model"], out["latency_ms"] = "m", 1.0
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
        pq.write_table(pa.Table.from_pandas(part[list(PREDICTION_SCHEMA.names)], schema=PREDICTION_SCHEMA,
                                            preserve_index=False), tmp_path / f"part-{i}.parquet")
    got = score_dataset(str(tmp_path))
    for name, part in by_task(frame).items():
        want = score_frame(name, part)
        want.pop("duplicate_ids")
        assert got[name] == want, name
    assert got["csn"]["ecgbench"]["random_letters"] > 0  # the seeded letters were drawn in the same order
