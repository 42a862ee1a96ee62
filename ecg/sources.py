"""Folders people hold -> sample rows: clinical exports, page images, MIMIC-IV-ECG. Stages of ``ecgvlm prepare``.

- ``clinical``: every file under a folder is read by content (:mod:`ecg.clinical`: DICOM, MUSE, CardioSoft, aECG,
  Sierra) and drawn as a page; the device's statements stay in ``meta``, never in the question.
- ``images``: every file under a folder that decodes as an image (PNG, JPEG, TIFF, BMP scans and photos) is a row
  as it is (PNG and JPEG bytes kept, other formats re-encoded as PNG).
- ``mimic-ecg``: ``record_list.csv`` + ``machine_measurements.csv`` (``report_0`` .. ``report_17``) + the WFDB
  files: each record's machine report is the answer of a ``ptbxl-report`` row (or a ``freetext`` row).

Gold labels of clinical and image rows come from an optional CSV (:func:`read_labels`): ``file,labels`` with labels
separated by ``;`` (``ecg_001.png,AF; RBBB``), the file named by its path under the folder or its base name. Every
file that cannot become a row is a failure row naming it, with a kind the manifest counts: ``unknown_format``
(not an ECG export), ``unreadable_record`` (an export that does not read), ``unreadable_image``, ``bad_label``.

Example::

    refs = file_references("/data/exports", labels_csv="/data/labels.csv")
    rows = clinical_batch(pd.DataFrame(refs), task="code15", splits={"test": 1.0})
"""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa

from ecg import storage
from ecg.samples import (RecordError, RenderOptions, _columns, _guard, assign_split, parse_splits, record_row,
                         sample_row, to_table)

UNKNOWN_FORMAT = "unknown_format"  # a file in a clinical folder that is no ECG export we read
BAD_LABEL = "bad_label"  # a labels-CSV entry outside the task's label space
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
MIMIC_QUESTION = "<image>\nWhat does this 12-lead ECG show? Describe its rhythm and findings."


def read_labels(uri: str | None) -> dict[str, list[str]]:
    """``{file: [labels]}`` from a CSV with columns ``file`` and ``labels`` (``;``-separated); ``{}`` for None.

    Example: a row ``ecg_001.png,AF; RBBB`` -> ``{"ecg_001.png": ["AF", "RBBB"]}``.
    """
    if not uri:
        return {}
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(storage.read_text(uri))))
    if rows and not {"file", "labels"} <= set(rows[0]):
        raise ValueError(f"{uri}: a labels CSV needs columns 'file' and 'labels'; has {list(rows[0])}")
    return {r["file"].strip(): [x.strip() for x in (r["labels"] or "").split(";") if x.strip()] for r in rows}


def _relative(path: str, root: str) -> str:
    return str(path)[len(str(root).rstrip("/")) + 1:] if str(path).startswith(str(root).rstrip("/") + "/") \
        else str(path).rsplit("/", 1)[-1]


def file_references(root: str, *, labels_csv: str | None = None, suffixes: tuple[str, ...] = (),
                    skip: tuple[str, ...] = ()) -> list[dict]:
    """One reference per file under ``root`` (hidden and ``_`` files, and names ending in ``skip``, left out),
    with its gold labels from ``labels_csv`` (by path under ``root``, else base name); ``suffixes`` filters."""
    labels = read_labels(labels_csv)
    refs = []
    for path in storage.list_files(root):
        rel = _relative(path, root)
        base = rel.rsplit("/", 1)[-1]
        if base.startswith((".", "_")) or (suffixes and not base.lower().endswith(suffixes)) \
                or base.lower().endswith(skip) or (labels_csv and storage.absolute(path) == storage.absolute(labels_csv)):
            continue
        gold = labels.get(rel, labels.get(base))
        refs.append({"id": rel.rsplit(".", 1)[0] if "." in base else rel, "path": path, "file": rel,
                     "labels": json.dumps(gold)})
    if not refs:
        raise ValueError(f"{root}: no files to read under this folder")
    stems = Counter(r["id"] for r in refs)
    for r in refs:  # a.dcm beside a.xml: both keep their extension, so ids stay unique
        r["id"] = r["file"] if stems[r["id"]] > 1 else r["id"]
    return refs


def _gold(ref: dict, task) -> tuple[str, ...]:
    """The reference's labels checked against the task's space (a :class:`RecordError` ``bad_label`` if not)."""
    gold = json.loads(ref.get("labels") or "null")
    if gold is None:
        return ()
    outside = [x for x in gold if task.labels and x not in task.labels]
    if outside:
        raise RecordError(f"{ref['id']}: labels {outside} are not in {task.name}'s {list(task.labels)}", BAD_LABEL)
    return tuple(gold)


def clinical_batch(batch, *, task: str = "code15", seed: int = 0, splits=None,
                   options: RenderOptions | None = None) -> pa.Table:
    """Read and draw clinical exports (references of :func:`file_references`); one row or failure row each."""
    from ecg import clinical
    from ecgtasks import get_task

    task_, splits, options = get_task(task), parse_splits(splits), options or RenderOptions()
    cols, rows = _columns(batch), []
    for i in range(len(cols["id"])):
        ref = {k: v[i] for k, v in cols.items()}

        def make(ref=ref):
            try:
                record = clinical.read_clinical_bytes(storage.read_bytes(ref["path"]), ref["id"], source=ref["path"])
            except clinical.UnknownFormat as exc:
                raise RecordError(str(exc), UNKNOWN_FORMAT) from None
            record.labels = _gold(ref, task_)
            record.meta["file"] = ref["file"]
            split = assign_split(record.id, splits, seed)
            return record_row(record, task=task_, source="clinical", split=split, options=options, seed=seed)

        rows.append(_guard(ref["id"], make, task=task_.name, source="clinical"))
    return to_table(rows)


def image_batch(batch, *, task: str = "code15", seed: int = 0, splits=None) -> pa.Table:
    """Page images as rows: decoded in full (a truncated file fails here), PNG/JPEG kept, others re-encoded PNG."""
    import io

    from ecg.images import ImageError, decode_image
    from ecg.samples import UNREADABLE_IMAGE
    from ecgtasks import get_task

    task_, splits = get_task(task), parse_splits(splits)
    cols, rows = _columns(batch), []
    for i in range(len(cols["id"])):
        ref = {k: v[i] for k, v in cols.items()}

        def make(ref=ref):
            data = storage.read_bytes(ref["path"])
            try:
                image = decode_image(data, ref["id"], mode=None)
            except ImageError as exc:
                raise RecordError(str(exc), UNREADABLE_IMAGE) from None
            if image.format not in ("PNG", "JPEG"):
                out = io.BytesIO()
                image.convert("RGB").save(out, format="PNG")
                data = out.getvalue()
            labels = _gold(ref, task_)
            meta = {"file": ref["file"], "width": image.width, "height": image.height, "format": image.format}
            return sample_row(id=ref["id"], task=task_.name, image=data, question=task_.question,
                              answer=task_.format_answer(labels) if labels else "", labels=labels, source="images",
                              split=assign_split(ref["id"], splits, seed), meta=meta)

        rows.append(_guard(ref["id"], make, task=task_.name, source="images"))
    return to_table(rows)


# ---- MIMIC-IV-ECG ------------------------------------------------------------------------------------------


def mimic_references(root: str) -> list[dict]:
    """One reference per ``record_list.csv`` row, its machine report joined from ``report_0`` .. ``report_17``.

    A record without a ``machine_measurements.csv`` row (or with every report empty) carries an error naming it.
    """
    import io

    import pandas as pd

    def table(name, needed):
        frame = pd.read_csv(io.BytesIO(storage.read_bytes(storage.join(root, name))), low_memory=False)
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ValueError(f"{storage.join(root, name)}: missing column(s) {missing}; has {list(frame.columns)}")
        return frame

    records = table("record_list.csv", ("subject_id", "study_id", "path"))
    reports = table("machine_measurements.csv", ("study_id", "report_0")).set_index("study_id")
    columns = [c for c in reports.columns if c.startswith("report_")]
    refs = []
    for row in records.to_dict("records"):
        rid, study = f"mimic-{int(row['study_id'])}", int(row["study_id"])
        lines = []
        if study in reports.index:
            found = reports.loc[[study]].iloc[0]
            lines = [str(found[c]).strip() for c in columns if found[c] == found[c] and str(found[c]).strip()]
        error = "" if lines else f"{rid}: no machine report (machine_measurements.csv report_0..17) for study {study}"
        refs.append({"id": rid, "path": storage.join(root, str(row["path"])), "patient_id": str(int(row["subject_id"])),
                     "report": "\n".join(lines), "error": error, "ecg_time": str(row.get("ecg_time", ""))})
    return refs


def mimic_batch(batch, *, task: str = "ptbxl-report", seed: int = 0, splits=None,
                options: RenderOptions | None = None) -> pa.Table:
    """Read, draw and answer MIMIC-IV-ECG references: the machine report is the answer (split by subject)."""
    from ecg.readers import read_wfdb
    from ecgtasks import get_task

    task_, splits, options = get_task(task), parse_splits(splits), options or RenderOptions()
    if task_.kind != "freetext":
        raise ValueError(f"--source mimic-ecg makes report rows: --task ptbxl-report or freetext, not {task_.name}")
    question = task_.question or MIMIC_QUESTION
    cols, rows = _columns(batch), []
    for i in range(len(cols["id"])):
        ref = {k: v[i] for k, v in cols.items()}

        def make(ref=ref):
            if ref["error"]:
                raise ValueError(ref["error"])
            record = read_wfdb(ref["path"])
            record.id, record.patient_id = ref["id"], ref["patient_id"]
            record.meta.update(report=ref["report"], ecg_time=ref["ecg_time"])
            row = record_row(record, task=task_, source="mimic-ecg", options=options, seed=seed,
                             split=assign_split(ref["patient_id"], splits, seed))
            row.update(question=question, answer=ref["report"])
            return row

        rows.append(_guard(ref["id"], make, task=task_.name, source="mimic-ecg"))
    return to_table(rows)



def folder_stage(source: str, path: str, *, labels: str | None = None, task: str | None = None, options=None):
    """``(references, stage function, its keyword arguments)`` of a ``clinical``, ``images`` or ``mimic-ecg`` folder
    (paths made absolute: Ray workers do not share the driver's working directory).

    Example: ``folder_stage("images", "./pages")[1] is image_batch``.
    """
    path = storage.absolute(path)
    if source == "mimic-ecg":
        return mimic_references(path), mimic_batch, {"task": task or "ptbxl-report", "options": options}
    labels = storage.absolute(labels) if labels else None
    if source == "images":
        return file_references(path, labels_csv=labels, suffixes=IMAGE_SUFFIXES), image_batch, {"task": task or "code15"}
    if source == "clinical":
        refs = file_references(path, labels_csv=labels)
        return refs, clinical_batch, {"task": task or "code15", "options": options}
    raise ValueError(f"unknown folder source {source!r}; use clinical, images or mimic-ecg")


# ---- any one record file (ecgvlm render) -------------------------------------------------------------------


def read_any(path: str, *, fs: float | None = None, index: int = 0, leads=None):
    """One record from a file of any readable kind: WFDB (``.hea``/``.dat``/``.mat``), CODE-15 HDF5 (row ``index``),
    CSV or ``.npy`` (at ``fs`` Hz), or a clinical export (DICOM, MUSE, CardioSoft, aECG, Sierra: by content).

    Example: ``read_any("A0001.hea").signal.shape`` -> ``(12, 5000)``; ``read_any("ecg.csv", fs=500)``.
    """
    from ecg import clinical, readers

    lower = str(path).lower()
    if lower.endswith((".hea", ".dat", ".mat")):
        return readers.read_wfdb(path)
    if lower.endswith((".hdf5", ".h5")):
        return readers.read_code15_hdf5(path, index)
    if lower.endswith((".csv", ".npy")):
        if fs is None:
            raise ValueError(f"{path}: a {lower.rsplit('.', 1)[1]} file needs its sampling rate (--fs, Hz)")
        return (readers.read_csv if lower.endswith(".csv") else readers.read_npy)(path, fs=fs, leads=leads)
    return clinical.read_clinical(path)
