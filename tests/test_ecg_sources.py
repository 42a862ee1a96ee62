"""ecg.sources stages without Ray: a folder of real clinical exports, a folder of real page images drawn by other
software (pmecg, a DICOM viewer), a MIMIC-IV-ECG tree that wfdb writes; bad files named and counted by kind."""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from ecg import sources
from ecg.samples import FAILED
from test_ecg_challenge import LEADS, _mortara_mv
from test_ecg_clinical import CARDIOSOFT, GE_DICOM_AF, MORTARA, MUSE, SIERRA, _bad_files


def make_clinical_folder(real_ecgs, root) -> str:
    """Five real exports (file names scrambled: the format comes from content), two bad files, a labels CSV."""
    os.makedirs(os.path.join(root, "ward"), exist_ok=True)
    for name, target in ((MORTARA, "ward/a"), (GE_DICOM_AF, "b.bin"), (MUSE, "c"), (CARDIOSOFT, "ward/d.txt"),
                         (SIERRA, "e.XML")):
        shutil.copy(real_ecgs / name, os.path.join(root, target))
    bad = _bad_files(real_ecgs)
    for name in ("notes.txt", "truncated.dcm"):
        with open(os.path.join(root, name), "wb") as f:
            f.write(bad[name])
    with open(os.path.join(root, "labels.csv"), "w") as f:  # from each device's statements (docs/data-real.md)
        f.write("file,labels\nward/a,NORM\nb.bin,AF\nward/d.txt,SB\ne.XML,SB; STEMI\n")
    return str(root)


def _rows(table):
    rows = table.to_pylist()
    return ({r["id"]: r for r in rows if r["split"] != FAILED},
            {r["id"]: json.loads(r["meta"]) for r in rows if r["split"] == FAILED})


def test_clinical_folder(real_ecgs, tmp_path):
    root = make_clinical_folder(real_ecgs, tmp_path / "exports")
    refs = sources.file_references(root, labels_csv=os.path.join(root, "labels.csv"))
    assert [r["file"] for r in refs] == ["b.bin", "c", "e.XML", "notes.txt", "truncated.dcm", "ward/a", "ward/d.txt"]
    batch = {k: [r[k] for r in refs] for k in refs[0]}
    ok, failed = _rows(sources.clinical_batch(batch, task="code15", splits="test=1"))
    assert sorted(ok) == ["b", "c", "ward/a", "ward/d"]
    assert ok["ward/a"]["answer"] == "NORM" and ok["b"]["labels"] == ["AF"] and ok["ward/d"]["answer"] == "SB"
    assert ok["c"]["labels"] == [] and ok["c"]["answer"] == ""  # no label given: unlabelled, still a row
    meta = json.loads(ok["b"]["meta"])
    assert meta["format"] == "dicom" and meta["statements"][0] == "ATRIAL FIBRILLATION"
    assert all("FIBRILLATION" not in r["question"] for r in ok.values())  # statements never reach the question
    assert json.loads(ok["c"]["meta"])["derived_leads"] == ["III", "aVR", "aVL", "aVF"]
    assert {k: v["kind"] for k, v in failed.items()} == {
        "e": "bad_label", "notes": "unknown_format", "truncated": "unreadable_record"}
    assert "labels ['STEMI'] are not in code15's" in failed["e"]["error"]
    assert "notes: neither a DICOM waveform" in failed["notes"]["error"]


def make_image_folder(real_ecgs, root) -> str:
    """pmecg's five PTB-XL pages, ecg2dcm's DICOM-viewer screenshot, one page as TIFF, a truncated PNG, labels."""
    os.makedirs(root, exist_ok=True)
    pages = [real_ecgs / "pmecg-0.3.0" / str(i) / "4x3.png" for i in range(1, 6)]
    for i, page in enumerate(pages, 1):
        shutil.copy(page, os.path.join(root, f"ptbxl-{i}-4x3.png"))
    shutil.copy(real_ecgs / "ecg2dcm-1.3.1" / "ecg_dicom.png", os.path.join(root, "viewer.png"))
    Image.open(pages[0]).convert("RGB").save(os.path.join(root, "scan.tif"))
    with open(os.path.join(root, "torn.png"), "wb") as f:
        f.write(pages[1].read_bytes()[:5000])
    with open(os.path.join(root, "labels.csv"), "w") as f:  # PTB-XL ecg_id 1 and 2 (page headers match)
        f.write("file,labels\nptbxl-1-4x3.png,NORM\nptbxl-2-4x3.png,SB\nscan.tif,NORM\n")
    return str(root)


def test_image_folder(real_ecgs, tmp_path):
    root = make_image_folder(real_ecgs, tmp_path / "pages")
    refs = sources.file_references(root, labels_csv=os.path.join(root, "labels.csv"), suffixes=sources.IMAGE_SUFFIXES)
    assert len(refs) == 8  # the CSV is not an image
    ok, failed = _rows(sources.image_batch({k: [r[k] for r in refs] for k in refs[0]}, task="code15",
                                           splits="test=1"))
    assert len(ok) == 7 and list(failed) == ["torn"] and failed["torn"]["kind"] == "unreadable_image"
    assert ok["ptbxl-2-4x3"]["answer"] == "SB" and ok["ptbxl-3-4x3"]["labels"] == []
    assert ok["ptbxl-1-4x3"]["image"] == (real_ecgs / "pmecg-0.3.0" / "1" / "4x3.png").read_bytes()  # as it was
    scan = ok["scan"]
    assert scan["image"][:4] == b"\x89PNG" and json.loads(scan["meta"])["format"] == "TIFF"
    assert Image.open(io.BytesIO(scan["image"])).size == (1280, 593)


def test_file_ids_stay_unique(tmp_path):
    for name in ("a.dcm", "a.xml", "b.xml"):
        (tmp_path / name).write_bytes(b"x")
    assert [r["id"] for r in sources.file_references(str(tmp_path))] == ["a.dcm", "a.xml", "b"]


def test_labels_csv_needs_its_columns(tmp_path):
    (tmp_path / "l.csv").write_text("name,dx\na.png,AF\n")
    with pytest.raises(ValueError, match="needs columns 'file' and 'labels'"):
        sources.read_labels(str(tmp_path / "l.csv"))


def make_mimic(root) -> str:
    """The MIMIC-IV-ECG layout written by wfdb from a real recording: three studies, one without a report."""
    import wfdb

    x = _mortara_mv()
    rows, reports = [], []
    for k, (subject, study) in enumerate(((10000032, 40689238), (10000032, 44458630), (10000117, 45090959))):
        rel = f"files/p{str(subject)[:4]}/p{subject}/s{study}"
        os.makedirs(os.path.join(root, rel), exist_ok=True)
        wfdb.wrsamp(str(study), fs=500, units=["mV"] * 12, sig_name=LEADS, p_signal=x, fmt=["16"] * 12,
                    adc_gain=[200.0] * 12, baseline=[0] * 12, write_dir=os.path.join(root, rel))
        rows.append(f"{subject},{study},{study},2180-07-23 08:44:00,{rel}/{study}")
        if k < 2:
            reports.append(f"{subject},{study},6848296,2180-07-23 08:44:00,Sinus rhythm,Normal ECG" + ",," * 8)
    head = "subject_id,study_id,cart_id,ecg_time," + ",".join(f"report_{i}" for i in range(18))
    with open(os.path.join(root, "record_list.csv"), "w") as f:
        f.write("subject_id,study_id,file_name,ecg_time,path\n" + "\n".join(rows) + "\n")
    with open(os.path.join(root, "machine_measurements.csv"), "w") as f:
        f.write(head + "\n" + "\n".join(reports) + "\n")
    return str(root)


def test_mimic_reports(tmp_path):
    root = make_mimic(str(tmp_path / "mimic"))
    refs = sources.mimic_references(root)
    assert [r["id"] for r in refs] == ["mimic-40689238", "mimic-44458630", "mimic-45090959"]
    batch = {k: [r[k] for r in refs] for k in refs[0]}
    ok, failed = _rows(sources.mimic_batch(batch, splits="train=1"))
    assert ok["mimic-40689238"]["answer"] == "Sinus rhythm\nNormal ECG" and ok["mimic-40689238"]["task"] == "ptbxl-report"
    assert ok["mimic-40689238"]["question"] == "<image>\nWrite the report of this 12-lead ECG."
    assert json.loads(ok["mimic-44458630"]["meta"])["patient_id"] == "10000032"
    assert "no machine report" in failed["mimic-45090959"]["error"]
    ok, _ = _rows(sources.mimic_batch(batch, task="freetext", splits="train=1"))
    assert ok["mimic-40689238"]["question"] == sources.MIMIC_QUESTION
    with pytest.raises(ValueError, match="--task ptbxl-report or freetext, not code15"):
        sources.mimic_batch(batch, task="code15")


def test_read_any(real_ecgs, tmp_path):
    np.save(tmp_path / "x.npy", _mortara_mv().T)
    assert sources.read_any(str(tmp_path / "x.npy"), fs=500).signal.shape == (12, 5000)
    with pytest.raises(ValueError, match="needs its sampling rate"):
        sources.read_any(str(tmp_path / "x.npy"))
    assert sources.read_any(str(real_ecgs / SIERRA)).meta["format"] == "sierra"
