"""ecg.samples, ecg.ecgbench, ecg.shards: pure stages and shard IO, on real files (no Ray).

The dataset writers here (PTB-XL with wfdb, CODE-15 with h5py, ECGBench JSON with PNGs) are shared with
tests/test_prepare.py.
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecg import samples, shards
from ecg.ecgbench import ecgbench_batch, gold_labels, resolve_task
from ecg.jsonrecords import reference_chunks
from ecg.record import STANDARD_LEADS
from ecg.render import render, to_bytes
from ecg.rows import PREDICTION_SCHEMA
from ecgtasks import get_task

SMALL = samples.RenderOptions(width=550, height=425)  # half-size pages: the tests are about rows, not pixels

# ---- tiny real datasets ---------------------------------------------------------------------------------------

PTBXL_CODES = [{"NORM": 100}, {"IMI": 50, "SR": 0}, {"NDT": 100}, {"LVH": 100, "CLBBB": 100}, {"NORM": 80}, {"IMI": 100}]
PTBXL_FOLDS = [1, 9, 10, 2, 10, 3]


def make_ptbxl(root: str) -> str:
    """Six PTB-XL records written with wfdb (record 3's .dat truncated), the two CSVs beside them."""
    import wfdb

    folder = os.path.join(root, "records500", "00000")
    os.makedirs(folder, exist_ok=True)
    rows = []
    for i, rec in enumerate(samples.synthetic_records(0, 6, seed=5), 1):
        name = f"{i:05d}_hr"
        wfdb.wrsamp(name, fs=500, units=["mV"] * 12, sig_name=list(STANDARD_LEADS), fmt=["16"] * 12,
                    p_signal=rec.signal.T.astype(np.float64), adc_gain=[1000.0] * 12, baseline=[0] * 12,
                    write_dir=folder)
        rows.append({"ecg_id": i, "patient_id": float(100 + (i - 1) // 2), "scp_codes": str(PTBXL_CODES[i - 1]),
                     "strat_fold": PTBXL_FOLDS[i - 1], "filename_hr": f"records500/00000/{name}",
                     "filename_lr": f"records100/00000/{i:05d}_lr", "report": "sinus rhythm"})
    pd.DataFrame(rows).to_csv(os.path.join(root, "ptbxl_database.csv"), index=False)
    pd.DataFrame({"diagnostic": [1, 1, 1, 1, 1, None], "diagnostic_class": ["NORM", "MI", "STTC", "HYP", "CD", None]},
                 index=["NORM", "IMI", "NDT", "LVH", "CLBBB", "SR"]).to_csv(os.path.join(root, "scp_statements.csv"))
    dat = os.path.join(folder, "00003_hr.dat")
    with open(dat, "r+b") as f:
        f.truncate(os.path.getsize(dat) // 3)
    return root


def make_code15(root: str) -> str:
    """exams_part0.hdf5: 6 exams + the padding row; exams_part1.hdf5: 2 exams of the wrong shape (8 leads)."""
    os.makedirs(root, exist_ok=True)
    recs = list(samples.synthetic_records(0, 6, seed=6))  # 500 Hz
    t400, t500 = np.arange(4000) / 400.0, np.arange(5000) / 500.0  # s
    tracings = np.zeros((7, 4096, 12), np.float32)  # (exams, samples, leads), zero-padded as CODE-15 stores them
    for k, rec in enumerate(recs):
        tracings[k, 48:4048] = np.stack([np.interp(t400, t500, lead) for lead in rec.signal], axis=1)
    with h5py.File(os.path.join(root, "exams_part0.hdf5"), "w") as f:
        f["tracings"], f["exam_id"] = tracings, np.array([1000 + k for k in range(6)] + [0])
    with h5py.File(os.path.join(root, "exams_part1.hdf5"), "w") as f:
        f["tracings"], f["exam_id"] = np.zeros((2, 4096, 8), np.float32), np.array([2000, 2001])
    rows = []
    for k, rec in enumerate(recs):
        row = {"exam_id": 1000 + k, "age": 50, "is_male": True, "patient_id": 7 + k // 2,
               "normal_ecg": rec.labels == ("NORM",), "trace_file": "exams_part0.hdf5"}
        rows.append({**row, **{label: label in rec.labels for label in ("1dAVb", "RBBB", "LBBB", "SB", "AF", "ST")}})
    rows += [{**rows[0], "exam_id": e, "patient_id": 99, "trace_file": "exams_part1.hdf5"} for e in (2000, 2001)]
    pd.DataFrame(rows).to_csv(os.path.join(root, "exams.csv"), index=False)
    return root


def make_ecgbench(root: str, n: int = 4) -> str:
    """``code15-test.json`` with ``n`` good records, one truncated PNG and one missing image file."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    task, records = get_task("code15"), []
    for rec in samples.synthetic_records(0, n, seed=9):
        with open(os.path.join(root, "images", f"{rec.id}-0.png"), "wb") as f:
            f.write(to_bytes(render(rec, width=550, height=425)))
        records.append({"id": rec.id, "image": f"images/{rec.id}-0.png", "conversations": [
            {"from": "human", "value": task.question}, {"from": "gpt", "value": task.format_answer(rec.labels)}]})
    with open(os.path.join(root, "images", "bad-0.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG signature and nothing decodable
    records.append({**records[0], "id": "bad", "image": "images/bad-0.png"})
    records.append({**records[0], "id": "missing", "image": "images/missing-0.png"})
    path = os.path.join(root, "code15-test.json")
    with open(path, "w") as f:
        json.dump(records, f)
    return path


def _failures(table: pa.Table) -> dict[str, str]:
    rows = table.drop(["image"]).to_pylist()
    return {r["id"]: json.loads(r["meta"])["error"] for r in rows if r["split"] == samples.FAILED}


def _kinds(table: pa.Table) -> dict[str, str]:
    rows = table.drop(["image"]).to_pylist()
    return {r["id"]: json.loads(r["meta"])["kind"] for r in rows if r["split"] == samples.FAILED}


# ---- splits ---------------------------------------------------------------------------------------------------


def test_parse_splits_normalises_and_rejects_bad_entries():
    assert samples.parse_splits("train=3,test=1") == {"train": 0.75, "test": 0.25}
    assert samples.parse_splits(None) == samples.DEFAULT_SPLITS
    for bad in ("train", "train=-1", "_x=1", "a=0"):
        with pytest.raises(ValueError):
            samples.parse_splits(bad)


def test_assign_split_is_deterministic_and_follows_fractions():
    splits = {"train": 0.8, "val": 0.1, "test": 0.1}
    keys = [f"patient-{i}" for i in range(4000)]
    first = [samples.assign_split(k, splits, seed=1) for k in keys]
    assert first == [samples.assign_split(k, splits, seed=1) for k in keys]
    assert first != [samples.assign_split(k, splits, seed=2) for k in keys]  # the seed matters
    share = {s: first.count(s) / len(keys) for s in splits}
    assert abs(share["train"] - 0.8) < 0.03 and abs(share["test"] - 0.1) < 0.02


def test_fold_split_follows_ptbxl_recommendation():
    splits = samples.DEFAULT_SPLITS
    assert [samples.fold_split(f, splits) for f in (1, 8, 9, 10)] == ["train", "train", "val", "test"]
    assert samples.fold_split(10, {"train": 0.5, "test": 0.5}) is None  # custom splits: hash instead


# ---- synthetic ------------------------------------------------------------------------------------------------


def test_synthetic_chunks_equal_the_generator():
    from ecg.synth import generate

    whole = list(generate(9, seed=3))
    chunked = list(samples.synthetic_records(0, 4, seed=3)) + list(samples.synthetic_records(4, 5, seed=3))
    assert [r.id for r in chunked] == [r.id for r in whole]
    assert [r.patient_id for r in chunked] == [r.patient_id for r in whole]
    assert all(np.array_equal(a.signal, b.signal) and a.labels == b.labels for a, b in zip(whole, chunked))


def test_synthetic_batch_rows_follow_the_contract():
    table = samples.synthetic_batch({"start": np.array([0]), "count": np.array([6])}, seed=0, options=SMALL)
    assert table.schema == samples.ROW_SCHEMA and table.num_rows == 6
    task = get_task("code15")
    for row in table.to_pylist():
        assert row["image"][:8] == b"\x89PNG\r\n\x1a\n"
        assert row["question"] == task.question and row["task"] == "code15"
        assert row["answer"] == task.format_answer(row["labels"])
        meta = json.loads(row["meta"])
        assert row["split"] == meta["split"] == samples.assign_split(meta["patient_id"], samples.DEFAULT_SPLITS, 0)


# ---- ECGBench -------------------------------------------------------------------------------------------------


def test_ecgbench_json_with_unreadable_images(tmp_path):
    path = make_ecgbench(str(tmp_path))
    assert resolve_task(None, path).name == "code15" and resolve_task("cpsc-test", path).name == "cpsc"
    (refs,) = list(reference_chunks(path))
    table = ecgbench_batch(pd.DataFrame(refs), task="auto")
    assert table.num_rows == 6 and set(table.column("task").to_pylist()) == {"code15", ""}  # "": failure rows
    failures = _failures(table)
    assert set(failures) == {"bad", "missing"}
    assert "'bad'" in failures["bad"] and "unreadable image" in failures["bad"]
    assert "missing-0.png" in failures["missing"]
    assert _kinds(table) == {"bad": "unreadable_image", "missing": "image_not_found"}
    good = [r for r in table.to_pylist() if r["split"] != samples.FAILED]
    assert {r["split"] for r in good} == {"test"} and all(r["question"].startswith("<image>") for r in good)


def test_ecgbench_parquet_rows_with_struct_images():
    page = to_bytes(render(next(samples.synthetic_records(0, 1)), width=550, height=425))
    conv = [{"from": "human", "value": "<image>\nWhich option? A. x B. y"}, {"from": "gpt", "value": "B. y"}]
    frame = pd.DataFrame({"id": ["a", "b", "c"], "conversations": [conv] * 3,
                          "image": [{"bytes": page, "path": "a.png"}, page, {"bytes": b"junk", "path": "c.png"}]})
    table = ecgbench_batch(frame, task="csn-test-no-cot", splits={"test": 1.0})
    rows = {r["id"]: r for r in table.to_pylist()}
    assert rows["a"]["image"] == page and rows["b"]["labels"] == ["B"] and rows["a"]["task"] == "csn"
    assert rows["c"]["split"] == samples.FAILED and "c.png" in json.loads(rows["c"]["meta"])["error"]
    assert json.loads(rows["c"]["meta"])["kind"] == "unreadable_image"


def test_gold_labels_use_the_ecgbench_rules():
    code15 = get_task("code15")
    assert gold_labels(code15, "SB; 1dAVb") == ["1dAVb", "SB"]
    assert gold_labels(code15, "ABNORMAL") == ["ABNORMAL"]
    assert gold_labels(get_task("ptbxl-super"), "STTC; MI") == ["MI", "STTC"]


# ---- PTB-XL and CODE-15 ---------------------------------------------------------------------------------------


def test_ptbxl_references_and_truncated_wfdb(tmp_path):
    root = make_ptbxl(str(tmp_path / "ptbxl"))
    refs = samples.signal_references("ptbxl", root)
    table = samples.signal_batch(pd.DataFrame(refs), options=SMALL)
    rows = {r["id"]: r for r in table.drop(["image"]).to_pylist()}
    assert set(rows) == {f"ptbxl-{i}" for i in range(1, 7)}
    assert list(_failures(table)) == ["ptbxl-3"] and "00003_hr" in _failures(table)["ptbxl-3"]
    assert rows["ptbxl-4"]["answer"] == "CD; HYP" and rows["ptbxl-2"]["labels"] == ["MI"]
    assert [rows[f"ptbxl-{i}"]["split"] for i in (1, 2, 5)] == ["train", "val", "test"]  # strat_fold 1, 9, 10
    assert rows["ptbxl-1"]["task"] == "ptbxl-super"


def test_code15_references_and_wrong_shape_hdf5(tmp_path):
    root = make_code15(str(tmp_path / "code15"))
    table = samples.signal_batch(pd.DataFrame(samples.signal_references("code15", root)), options=SMALL)
    failures = _failures(table)
    assert set(failures) == {"code15-2000", "code15-2001"} and "(2, 4096, 8)" in failures["code15-2000"]
    good = [r for r in table.drop(["image"]).to_pylist() if r["split"] != samples.FAILED]
    assert len(good) == 6 and all(r["answer"] == get_task("code15").format_answer(r["labels"]) for r in good)


def test_missing_csv_column_is_named(tmp_path):
    root = make_code15(str(tmp_path / "code15"))
    pd.read_csv(os.path.join(root, "exams.csv")).drop(columns=["RBBB"]).to_csv(os.path.join(root, "exams.csv"))
    with pytest.raises(ValueError, match=r"exams.csv: missing column\(s\) \['RBBB'\]"):
        samples.signal_references("code15", root)


# ---- shards ---------------------------------------------------------------------------------------------------


def _predictions(ids, error=None) -> pa.Table:
    n = len(ids)
    return pa.table({"id": ids, "task": ["code15"] * n, "question": ["q"] * n, "answer": ["SB"] * n,
                     "prediction": ["" if error else "SB"] * n, "label_scores": [None] * n, "model": ["m"] * n,
                     "error": [error] * n, "latency_ms": [1.0] * n, "prompt_tokens": [79] * n,
                     "truncated": [False] * n, "page_score": [0.9] * n, "is_page": [True] * n},
                    schema=PREDICTION_SCHEMA)


def test_shard_writer_resume_helpers_and_dedup(tmp_path):
    uri = str(tmp_path / "predictions")
    writer = shards.ShardWriter(uri, rows_per_shard=2, schema=PREDICTION_SCHEMA)
    writer.add(_predictions(["a", "b", "c"]))
    writer.add(_predictions(["d"], error="record d: bad image"))
    writer.close()
    assert writer.written == 2 and not [f for f in os.listdir(uri) if f.endswith(".tmp")]
    shards.write_atomic(_predictions(["d"]), os.path.join(uri, "later-00000.parquet"))  # a duplicate id
    with open(os.path.join(uri, "torn-00000.parquet"), "wb") as f:
        f.write(b"PAR1 half a file")  # what a killed non-atomic writer would leave
    done, duplicates = shards.predicted_ids(uri)
    assert done == {"a", "b", "c", "d"} and duplicates == 1
    assert os.path.exists(os.path.join(uri, "_torn-00000.parquet.corrupt"))  # "_": readers skip it
    assert sorted(pd.read_parquet(uri)["id"]) == ["a", "b", "c", "d", "d"]  # the folder is a plain dataset
    frame = shards.read_predictions(uri)
    assert list(frame["id"]) == ["a", "b", "c", "d"] and frame["error"].isna().all()  # the good "d" wins
    kept = shards.keep_rows(pa.table({"id": ["a", "x", "y"], "task": ["code15", "code15", "cpsc"]}),
                            done=done, tasks={"code15"})
    assert kept.column("id").to_pylist() == ["x"]
    assert pq.read_table(os.path.join(uri, f"{writer.run}-00000.parquet")).num_rows == 3
