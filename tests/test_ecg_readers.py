"""Readers against real files written by wfdb, h5py, pandas and numpy, then read back."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecg.readers import (
    ECGReadError, ReadFailure, code15_labels, read_code15, read_code15_hdf5, read_csv, read_npy,
    read_ptbxl, read_wfdb, resample,
)
from ecg.record import STANDARD_LEADS, Record
from ecg.synth import generate


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return list(generate(4, seed=11))


def _write_wfdb(directory, name, signal_mv, fs=500):
    import wfdb

    directory.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(name, fs=fs, units=["mV"] * 12, sig_name=list(STANDARD_LEADS),
                p_signal=signal_mv.T.astype(np.float64), fmt=["16"] * 12, write_dir=str(directory))
    return directory / name


def test_wfdb_roundtrip_and_truncated(tmp_path, records):
    rec = records[0]
    base = _write_wfdb(tmp_path, "r1", rec.signal)
    back = read_wfdb(str(base) + ".hea")
    assert back.signal.shape == (12, 5000) and back.fs == 500 and back.leads == STANDARD_LEADS
    assert np.abs(back.signal - rec.signal).max() < 0.01  # 16-bit quantisation, mV
    dat = base.with_suffix(".dat")
    dat.write_bytes(dat.read_bytes()[:5000])  # truncated mid-record
    with pytest.raises(ECGReadError, match="r1"):
        read_wfdb(str(base))


def _ptbxl_tree(root, records):
    rows = []
    for k, rec in enumerate(records[:3], start=1):
        rel = f"records500/00000/{k:05d}_hr"
        _write_wfdb(root / "records500" / "00000", f"{k:05d}_hr", rec.signal)
        rows.append({"ecg_id": k, "patient_id": 100.0 + k, "age": 50, "sex": k % 2, "report": "sr",
                     "scp_codes": [repr({"NORM": 100.0, "SR": 0.0}), repr({"IMI": 50.0, "LVH": 100.0}),
                                   repr({"SR": 0.0})][k - 1],
                     "strat_fold": [1, 9, 10][k - 1], "filename_lr": rel.replace("500", "100"),
                     "filename_hr": rel})
    pd.DataFrame(rows).to_csv(root / "ptbxl_database.csv", index=False)
    pd.DataFrame({"diagnostic": [1, 1, 1, None], "diagnostic_class": ["NORM", "MI", "HYP", None]},
                 index=["NORM", "IMI", "LVH", "SR"]).to_csv(root / "scp_statements.csv")


def test_read_ptbxl_labels_folds_and_failure(tmp_path, records):
    _ptbxl_tree(tmp_path, records)
    dat = tmp_path / "records500" / "00000" / "00002_hr.dat"
    good = dat.read_bytes()
    dat.write_bytes(good[:1000])
    out = list(read_ptbxl(str(tmp_path)))
    assert [type(x).__name__ for x in out] == ["Record", "ReadFailure", "Record"]
    assert out[0].id == "ptbxl-1" and out[0].labels == ("NORM",) and out[0].meta["strat_fold"] == 1
    assert out[0].patient_id == "101"
    assert out[1].id == "ptbxl-2" and out[1].error.startswith("ptbxl-2") and "00002_hr" in out[1].error
    assert out[2].labels == () and out[2].meta["strat_fold"] == 10
    dat.write_bytes(good)
    second = list(read_ptbxl(str(tmp_path)))[1]
    assert second.labels == ("MI", "HYP") and second.meta["strat_fold"] == 9


def _padded(rec: Record, seconds: float, scale: float = 1.0) -> np.ndarray:
    """A synthetic record as CODE-15 stores it: 400 Hz, (4096, 12), zero-padded symmetrically."""
    sig = resample(rec, 400.0).signal[:, : int(400 * seconds)] * scale  # (12, n)
    out = np.zeros((4096, 12), np.float32)
    pad = (4096 - sig.shape[1]) // 2
    out[pad:pad + sig.shape[1]] = sig.T
    return out


def test_read_code15(tmp_path, records):
    import h5py

    tracings = np.stack([_padded(records[0], 10), _padded(records[1], 7), _padded(records[2], 10, 1e-3),
                         np.zeros((4096, 12), np.float32)])
    with h5py.File(tmp_path / "exams_part0.hdf5", "w") as f:
        f["tracings"] = tracings
        f["exam_id"] = np.array([11, 12, 13, 0])
    with h5py.File(tmp_path / "exams_part1.hdf5", "w") as f:
        f["tracings"] = np.zeros((2, 4096, 8), np.float32)  # wrong shape: 8 leads
        f["exam_id"] = np.array([21, 22])
    exams = pd.DataFrame({"exam_id": [11, 12], "patient_id": [7, 8], "age": [60, 70],
                          "is_male": [True, False], "normal_ecg": [False, True],
                          "1dAVb": [True, False], "RBBB": [False] * 2, "LBBB": [False] * 2,
                          "SB": [True, False], "AF": [False] * 2, "ST": [False] * 2,
                          "trace_file": ["exams_part0.hdf5"] * 2})
    exams.to_csv(tmp_path / "exams.csv", index=False)
    out = list(read_code15(str(tmp_path)))
    kinds = [(type(x).__name__, x.id) for x in out]
    assert kinds == [("Record", "code15-11"), ("Record", "code15-12"), ("ReadFailure", "code15-13"),
                     ("ReadFailure", "exams_part1")]
    a, b = out[0], out[1]
    assert a.labels == ("1dAVb", "SB") and a.fs == 400 and a.signal.shape == (12, 4000)
    assert b.labels == ("NORM",) and b.signal.shape == (12, 2800) and b.patient_id == "8"
    assert np.allclose(a.signal, resample(records[0], 400).signal[:, :4000], atol=1e-5)
    assert "(N, 4096, 12)" in out[3].error
    volts = read_code15_hdf5(str(tmp_path / "exams_part0.hdf5"), 2)  # stored in V: rescaled to mV
    assert volts.labels == () and volts.meta["units"].startswith("V")
    assert np.allclose(volts.signal, resample(records[2], 400).signal[:, :4000], atol=1e-4)
    with pytest.raises(ECGReadError, match="exams_part1"):
        read_code15_hdf5(str(tmp_path / "exams_part1.hdf5"), 0)


def test_code15_label_rule():
    none = {k: False for k in ("1dAVb", "RBBB", "LBBB", "SB", "ST", "AF")}
    assert code15_labels({**none, "normal_ecg": True}) == ("NORM",)
    assert code15_labels({**none, "normal_ecg": False}) == ("ABNORMAL",)
    assert code15_labels({**none, "AF": True, "RBBB": True, "normal_ecg": True}) == ("RBBB", "AF")


def test_csv_and_npy(tmp_path, records):
    rec = records[1]
    frame = pd.DataFrame(rec.signal.T, columns=["DI", "DII", "DIII", "AVR", "AVL", "AVF",
                                                "V1", "V2", "V3", "V4", "V5", "V6"])
    frame.insert(0, "time", np.arange(5000) / 500)
    frame.to_csv(tmp_path / "a.csv", index=False)
    back = read_csv(str(tmp_path / "a.csv"), fs=500)
    assert back.leads == STANDARD_LEADS and np.allclose(back.signal, rec.signal, atol=1e-5)
    frame.drop(columns=["V5", "AVL"]).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(ECGReadError, match=r"b: .*\['aVL', 'V5'\]"):
        read_csv(str(tmp_path / "b.csv"), fs=500)
    two = read_csv(str(tmp_path / "b.csv"), fs=500, leads=["I", "II"])
    assert two.signal.shape == (2, 5000)
    np.save(tmp_path / "c.npy", rec.signal.T * 1000)  # (samples, leads) in microvolts
    arr = read_npy(str(tmp_path / "c.npy"), fs=500)
    assert arr.signal.shape == (12, 5000) and np.allclose(arr.signal, rec.signal, atol=1e-4)
    np.save(tmp_path / "d.npy", np.zeros((3, 100)))
    with pytest.raises(ECGReadError, match="d: shape"):
        read_npy(str(tmp_path / "d.npy"), fs=500)


def test_resample_keeps_waveform(records):
    rec = records[0]
    down = resample(rec, 250.0)
    assert down.fs == 250 and down.signal.shape == (12, 2500) and down.meta["resampled_from"] == 500
    back = resample(down, 500.0)
    lead_ii = rec.lead("II")
    assert np.corrcoef(back.lead("II"), lead_ii)[0, 1] > 0.95


def test_readers_from_s3(tmp_path, records, s3_server):
    """The same readers on s3:// URIs (a real S3 wire server): WFDB, CSV and a CODE-15 folder."""
    import h5py

    from ecg import storage

    rec = records[0]
    base = _write_wfdb(tmp_path / "w", "r9", rec.signal)
    for ext in (".hea", ".dat"):
        storage.write_bytes(f"s3://ecg/wfdb/r9{ext}", base.with_suffix(ext).read_bytes())
    assert np.abs(read_wfdb("s3://ecg/wfdb/r9").signal - rec.signal).max() < 0.01
    frame = pd.DataFrame(rec.signal.T, columns=list(STANDARD_LEADS))
    storage.write_text("s3://ecg/csv/x.csv", frame.to_csv(index=False))
    assert read_csv("s3://ecg/csv/x.csv", fs=500).signal.shape == (12, 5000)
    with h5py.File(tmp_path / "exams_part0.hdf5", "w") as f:
        f["tracings"] = _padded(rec, 10)[None]
        f["exam_id"] = np.array([5])
    storage.write_bytes("s3://ecg/c15/exams_part0.hdf5", (tmp_path / "exams_part0.hdf5").read_bytes())
    exams = pd.DataFrame({"exam_id": [5], "patient_id": [1], "normal_ecg": [True], "AF": [True]})
    storage.write_text("s3://ecg/c15/exams.csv", exams.to_csv(index=False))
    (only,) = list(read_code15("s3://ecg/c15"))
    assert only.id == "code15-5" and only.labels == ("AF",) and only.signal.shape == (12, 4000)
