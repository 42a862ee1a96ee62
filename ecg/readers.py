"""Readers: PTB-XL (WFDB), CODE-15% (HDF5), CSV and .npy arrays -> :class:`~ecg.record.Record` in mV.

Every reader raises :class:`ECGReadError` (a ``ValueError``) whose message starts with the record's id
or path, so a batch job can log it; the directory iterators (:func:`read_ptbxl`, :func:`read_code15`)
yield a :class:`ReadFailure` for a bad record and carry on, so nothing is silently dropped.

Paths may be local or ``s3://`` URIs (through :mod:`ecg.storage`).

Example::

    from ecg.readers import read_ptbxl, read_csv, resample, ReadFailure
    for item in read_ptbxl("/data/ptb-xl"):
        if isinstance(item, ReadFailure):
            print("skipped", item.id, item.error)
            continue
        rec = resample(item, 500.0)          # (12, 5000), mV
    rec = read_csv("ecg.csv", fs=500)       # columns I, II, ..., V6
"""

from __future__ import annotations

import ast
import io
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np

from ecg import storage
from ecg.record import STANDARD_LEADS, Record, canonical_lead

PTBXL_SUPERCLASSES = ("NORM", "MI", "STTC", "CD", "HYP")
CODE15_LABELS = ("1dAVb", "RBBB", "LBBB", "SB", "ST", "AF")
CODE15_FS = 400.0  # Hz
CODE15_LENGTHS = (2800, 4000)  # samples of a 7 s and a 10 s exam, zero-padded symmetrically to 4096


class ECGReadError(ValueError):
    """A record could not be read; the message names the record (id or path) and the reason."""


@dataclass
class ReadFailure:
    """A record a directory reader could not read: its ``id``, the file it came from, and why."""

    id: str
    source: str
    error: str


def to_millivolts(x: np.ndarray, units: str | None, where: str) -> tuple[np.ndarray, str]:
    """Scale ``x`` to mV from the declared ``units`` or, when unknown, from its amplitude.

    Returns ``(signal_mV, how)`` where ``how`` records the decision for the record's meta.
    An ECG's QRS is 0.5-5 mV; the robust amplitude (99.5th percentile of |x - median|) tells volts
    (< 0.05) and microvolts (> 50) from millivolts. Example: ``to_millivolts(v, "V", "r1")[0] == v * 1000``.
    """
    u = (units or "").strip()
    factors = {"mV": 1.0, "mv": 1.0, "V": 1000.0, "v": 1000.0, "uV": 1e-3, "µV": 1e-3, "uv": 1e-3}
    if u in factors:
        return x * factors[u], u
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        raise ECGReadError(f"{where}: signal has no finite samples")
    scale = float(np.percentile(np.abs(finite - np.median(finite)), 99.5))
    if 0 < scale < 0.05:
        return x * 1000.0, "V (by amplitude)"
    if scale > 50:
        return x * 1e-3, "uV (by amplitude)"
    return x, "mV (by amplitude)"


def _check_finite(signal: np.ndarray, where: str) -> None:
    if not np.all(np.isfinite(signal)):
        bad = int((~np.isfinite(signal)).sum())
        raise ECGReadError(f"{where}: {bad} non-finite sample(s) (NaN/inf)")


def _orient(arr: np.ndarray, n_leads: int, where: str) -> np.ndarray:
    """``(leads, samples)`` from a 2-D array in either orientation."""
    if arr.ndim != 2:
        raise ECGReadError(f"{where}: expected a 2-D array (leads, samples), got shape {arr.shape}")
    if arr.shape[0] == n_leads:
        return arr
    if arr.shape[1] == n_leads:
        return arr.T
    raise ECGReadError(f"{where}: shape {arr.shape} has no axis of {n_leads} leads")


def read_npy(path: str, *, fs: float, leads=None) -> Record:
    """A ``.npy`` array ``(leads, samples)`` or ``(samples, leads)`` at ``fs`` Hz; units checked.

    ``leads`` defaults to the 12 standard leads. Example: ``read_npy("x.npy", fs=500).signal.shape``
    -> ``(12, 5000)``.
    """
    leads = tuple(leads or STANDARD_LEADS)
    rid = _stem(path)
    try:
        arr = np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure becomes a named read error
        raise ECGReadError(f"{rid}: cannot read {path}: {exc}") from exc
    signal = _orient(np.asarray(arr, dtype=np.float64), len(leads), rid)  # (leads, samples)
    _check_finite(signal, rid)
    signal, how = to_millivolts(signal, None, rid)
    return Record(signal=signal, fs=fs, leads=leads, id=rid, meta={"source": str(path), "units": how})


def read_csv(path: str, *, fs: float, leads=None) -> Record:
    """A CSV with one column per lead (header names like ``I, II, ..., V6``; ``DI``/``AVR`` accepted).

    ``leads`` defaults to the 12 standard leads; every requested lead must be a column, else
    :class:`ECGReadError` names the missing ones. Other columns (e.g. ``time``) are ignored.
    Example: ``read_csv("ecg.csv", fs=500, leads=["I", "II"]).signal.shape`` -> ``(2, samples)``.
    """
    import pandas as pd

    leads = tuple(canonical_lead(x) for x in (leads or STANDARD_LEADS))
    rid = _stem(path)
    try:
        frame = pd.read_csv(io.BytesIO(storage.read_bytes(path)))
    except Exception as exc:  # noqa: BLE001
        raise ECGReadError(f"{rid}: cannot read {path}: {exc}") from exc
    columns = {canonical_lead(c): c for c in frame.columns}
    missing = [lead for lead in leads if lead not in columns]
    if missing:
        raise ECGReadError(f"{rid}: {path} lacks lead column(s) {missing}; has {list(frame.columns)}")
    try:
        signal = frame[[columns[lead] for lead in leads]].to_numpy(dtype=np.float64).T  # (leads, samples)
    except ValueError as exc:
        raise ECGReadError(f"{rid}: non-numeric values in {path}: {exc}") from exc
    _check_finite(signal, rid)
    signal, how = to_millivolts(signal, None, rid)
    return Record(signal=signal, fs=fs, leads=leads, id=rid, meta={"source": str(path), "units": how})


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(str(path).rstrip("/")))[0]


# ----------------------------------------------------------------------------------------- resample


def resample(record: Record, fs: float) -> Record:
    """The record at ``fs`` Hz (polyphase filtering, ``scipy.signal.resample_poly``).

    Example: ``resample(read_code15_hdf5(p, 0), 500).fs`` -> 500.0 (4000 samples -> 5000).
    """
    if abs(record.fs - fs) < 1e-9:
        return record
    from scipy.signal import resample_poly

    ratio = Fraction(float(fs) / record.fs).limit_denominator(1000)
    out = resample_poly(record.signal.astype(np.float64), ratio.numerator, ratio.denominator, axis=1)
    return record.with_signal(out.astype(np.float32), fs=float(fs), resampled_from=record.fs)


# ----------------------------------------------------------------------------------------- WFDB / PTB-XL


def _wfdb_local(record_path: str) -> tuple[str, str | None]:
    """A local base path (no extension) for wfdb; copies the header and its data files from S3."""
    base = str(record_path)
    for ext in (".hea", ".dat", ".mat"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    if not storage.is_s3(base):
        return base, None
    tmp = tempfile.mkdtemp(prefix="ecgvlm-wfdb-")
    header = storage.read_text(base + ".hea")
    lines = [x for x in header.splitlines()[1:] if x.strip() and not x.startswith("#")]
    names = {x.split()[0] for x in lines}  # the signal files the header names
    with open(os.path.join(tmp, os.path.basename(base) + ".hea"), "w") as f:
        f.write(header)
    for name in names:
        data = storage.read_bytes(storage.join(os.path.dirname(base), name))
        with open(os.path.join(tmp, name), "wb") as f:
            f.write(data)
    return os.path.join(tmp, os.path.basename(base)), tmp


def read_wfdb(record_path: str) -> Record:
    """A WFDB record (``.hea`` + signal file), path with or without extension; channels scaled to mV.

    Example: ``read_wfdb("ptb-xl/records500/00000/00001_hr").signal.shape`` -> ``(12, 5000)``.
    """
    import shutil

    import wfdb

    rid = _stem(record_path)
    base, tmp = _wfdb_local(record_path)
    try:
        rec = wfdb.rdrecord(base)
        raw = np.asarray(rec.p_signal, dtype=np.float64).T  # (leads, samples), header units
        if raw.ndim != 2 or raw.shape[1] != rec.sig_len:
            raise ValueError(f"{raw.shape[-1]} samples where the header promises {rec.sig_len}")
    except Exception as exc:  # noqa: BLE001 - wfdb raises many types on truncated/corrupt files
        raise ECGReadError(f"{rid}: cannot read WFDB record {record_path}: {exc}") from exc
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    _check_finite(raw, rid)
    rows = [to_millivolts(raw[i], u, rid)[0] for i, u in enumerate(rec.units or [None] * len(raw))]
    meta = {"source": str(record_path), "units": list(rec.units or [])}
    if rec.comments:  # the header's "#" lines (Challenge records: Age, Sex, Dx)
        meta["comments"] = list(rec.comments)
    return Record(signal=np.stack(rows), fs=float(rec.fs), leads=tuple(rec.sig_name), id=rid, meta=meta)


def ptbxl_superclasses(scp_codes: dict, diagnostic_class: dict) -> tuple[str, ...]:
    """PTB-XL superclasses of a record's ``scp_codes`` (statement -> likelihood), in canonical order.

    ``diagnostic_class`` maps diagnostic statements (``scp_statements.csv`` rows with diagnostic == 1)
    to NORM/MI/STTC/CD/HYP; every listed statement counts, whatever its likelihood, as in the PTB-XL
    reference code. Example: ``ptbxl_superclasses({"IMI": 50, "SR": 0}, {"IMI": "MI"})`` -> ``("MI",)``.
    """
    found = {diagnostic_class[c] for c in scp_codes if c in diagnostic_class}
    return tuple(c for c in PTBXL_SUPERCLASSES if c in found)


def read_ptbxl(root: str, *, sampling_rate: int = 500) -> Iterator[Record | ReadFailure]:
    """Every PTB-XL record under ``root`` (``ptbxl_database.csv``, ``scp_statements.csv``, records).

    Records get id ``ptbxl-<ecg_id>``, the patient id, superclass labels and meta ``strat_fold``
    (9 = validation, 10 = test), ``scp_codes``, ``report``, ``age``, ``sex``. ``sampling_rate`` 500 reads
    ``filename_hr``, 100 reads ``filename_lr``.
    Example: ``sum(isinstance(r, Record) for r in read_ptbxl(d))``.
    """
    import pandas as pd

    db = pd.read_csv(io.BytesIO(storage.read_bytes(storage.join(root, "ptbxl_database.csv"))),
                     index_col="ecg_id")
    stm = pd.read_csv(io.BytesIO(storage.read_bytes(storage.join(root, "scp_statements.csv"))), index_col=0)
    diag = stm[stm["diagnostic"] == 1]["diagnostic_class"].to_dict()
    column = "filename_hr" if sampling_rate == 500 else "filename_lr"
    for ecg_id, row in db.iterrows():
        rid = f"ptbxl-{int(ecg_id)}"
        path = storage.join(root, str(row[column]))
        try:
            codes = ast.literal_eval(str(row["scp_codes"]))
            rec = read_wfdb(path)
        except (ECGReadError, ValueError, SyntaxError) as exc:
            yield ReadFailure(rid, path, f"{rid}: {exc}")
            continue
        rec.id, rec.labels = rid, ptbxl_superclasses(codes, diag)
        rec.patient_id = None if pd.isna(row.get("patient_id")) else str(int(row["patient_id"]))
        rec.meta.update(ecg_id=int(ecg_id), strat_fold=int(row["strat_fold"]), scp_codes=codes,
                        report=str(row.get("report", "")), age=_num(row.get("age")),
                        sex=_num(row.get("sex")))
        yield rec


def _num(value):
    try:
        return None if value is None or value != value else float(value)
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------------------- CODE-15%


def _truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "t")
    return bool(value) and value == value  # NaN is falsy here


def code15_labels(row) -> tuple[str, ...]:
    """CODE-15 labels of an ``exams.csv`` row: the true findings among 1dAVb RBBB LBBB SB ST AF,
    else ``("NORM",)`` if ``normal_ecg`` else ``("ABNORMAL",)``.

    Example: ``code15_labels({"SB": True, "1dAVb": True, ...})`` -> ``("1dAVb", "SB")``.
    """
    found = tuple(label for label in CODE15_LABELS if _truthy(row.get(label, False)))
    if found:
        return found
    return ("NORM",) if _truthy(row.get("normal_ecg", False)) else ("ABNORMAL",)


def _trim_padding(tracing: np.ndarray, where: str) -> tuple[np.ndarray, int]:
    """Remove CODE-15's symmetric zero padding: ``(12, 4096)`` -> ``(12, 2800 | 4000 | 4096)``."""
    nonzero = np.flatnonzero(np.any(tracing != 0, axis=0))
    if nonzero.size == 0:
        raise ECGReadError(f"{where}: tracing is all zeros")
    n = tracing.shape[1]
    for length in (*CODE15_LENGTHS, n):
        pad = (n - length) // 2
        if nonzero[0] >= pad and nonzero[-1] < pad + length:
            return tracing[:, pad:pad + length], pad
    return tracing, 0


def _code15_record(tracing: np.ndarray, exam_id: int, row, source: str) -> Record:
    """One exam: ``tracing`` (4096, 12) as stored -> Record (12, samples) in mV at 400 Hz."""
    rid = f"code15-{exam_id}"
    if tracing.ndim != 2 or tracing.shape[1] != 12:
        raise ECGReadError(f"{rid}: tracing shape {tracing.shape}, expected (samples, 12) in {source}")
    arr = np.asarray(tracing, dtype=np.float64).T  # (12, 4096)
    _check_finite(arr, rid)
    arr, pad = _trim_padding(arr, rid)
    # Units: the authors' README says "scale 1e-4V ... multiply by 1000 to obtain V", which contradicts
    # itself; measured lead-II R waves of 1-2 in public analyses say millivolts. Taken as mV unless the
    # amplitude says volts or microvolts (to_millivolts), and the decision is kept in meta["units"].
    arr, how = to_millivolts(arr, None, rid)
    meta = {"source": source, "exam_id": exam_id, "units": how, "padding_removed": pad}
    labels: tuple[str, ...] = ()
    patient = None
    if row is not None:
        labels = code15_labels(row)
        patient = None if _num(row.get("patient_id")) is None else str(int(row["patient_id"]))
        meta.update(age=_num(row.get("age")), is_male=_truthy(row.get("is_male")),
                    normal_ecg=_truthy(row.get("normal_ecg")), trace_file=str(row.get("trace_file", "")))
    return Record(signal=arr, fs=CODE15_FS, leads=STANDARD_LEADS, id=rid, patient_id=patient,
                  labels=labels, meta=meta)


@lru_cache(maxsize=4)
def _exams_table(uri: str):
    """``exams.csv`` indexed by exam_id (cached: the real one has 345,779 rows)."""
    import pandas as pd

    frame = pd.read_csv(io.BytesIO(storage.read_bytes(uri)))
    return frame.set_index("exam_id", drop=False)


def _open_h5(path: str):
    import h5py

    if storage.is_s3(path):
        fs, p = storage.resolve(path)
        return h5py.File(fs.open_input_file(p), "r")
    return h5py.File(path, "r")


def _check_h5(f, path: str) -> None:
    if "tracings" not in f or "exam_id" not in f:
        raise ECGReadError(f"{_stem(path)}: {path} lacks 'tracings' or 'exam_id'; has {list(f.keys())}")
    shape = f["tracings"].shape
    if len(shape) != 3 or shape[2] != 12 or shape[0] != f["exam_id"].shape[0]:
        raise ECGReadError(f"{_stem(path)}: {path} 'tracings' has shape {shape}, expected "
                           f"(N, 4096, 12) with N = {f['exam_id'].shape[0]} exam ids")


def read_code15_hdf5(path: str, index: int, *, exams=None) -> Record:
    """Exam ``index`` of a CODE-15% HDF5 file, labelled from ``exams`` (a DataFrame indexed by exam_id)
    or from ``exams.csv`` beside the file when present (else unlabelled).

    Example: ``read_code15_hdf5("code15/exams_part0.hdf5", 0).fs`` -> 400.0.
    """
    try:
        with _open_h5(path) as f:
            _check_h5(f, path)
            exam_id = int(f["exam_id"][index])
            tracing = np.asarray(f["tracings"][index])  # (4096, 12) as stored
    except ECGReadError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ECGReadError(f"{_stem(path)}[{index}]: cannot read {path}: {exc}") from exc
    if exams is None:
        csv = storage.join(os.path.dirname(str(path)), "exams.csv")
        exams = _exams_table(csv) if storage.exists(csv) else None
    row = exams.loc[exam_id] if exams is not None and exam_id in exams.index else None
    return _code15_record(tracing, exam_id, row, f"{path}[{index}]")


def read_code15(root: str, *, chunk: int = 256) -> Iterator[Record | ReadFailure]:
    """Every exam of the ``exams_part*.hdf5`` files under ``root``, labelled from ``root/exams.csv``.

    A file of the wrong layout yields one ReadFailure (id = file stem) and the next file is read; an
    exam missing from exams.csv or unreadable yields a ReadFailure with id ``code15-<exam_id>``. The
    final all-zero row with exam_id 0 that CODE-15 files carry is padding, not an exam, and is skipped.
    Example: ``[r.labels for r in read_code15("/data/code15") if isinstance(r, Record)]``.
    """
    exams = _exams_table(storage.join(root, "exams.csv"))
    files = storage.list_files(root, ".hdf5") + storage.list_files(root, ".h5")
    for path in files:
        try:
            with _open_h5(path) as f:
                _check_h5(f, path)
                yield from _read_code15_file(f, path, exams, chunk)
        except ECGReadError as exc:
            yield ReadFailure(_stem(path), path, str(exc))
        except OSError as exc:
            yield ReadFailure(_stem(path), path, f"{_stem(path)}: cannot open {path}: {exc}")


def _read_code15_file(f, path: str, exams, chunk: int) -> Iterator[Record | ReadFailure]:
    ids = np.asarray(f["exam_id"][:]).astype(np.int64)
    for start in range(0, len(ids), chunk):
        block = np.asarray(f["tracings"][start:start + chunk])  # (chunk, 4096, 12)
        for k, tracing in enumerate(block):
            exam_id = int(ids[start + k])
            source = f"{path}[{start + k}]"
            if exam_id == 0 and not tracing.any():
                continue  # the documented padding row, not an exam
            if exam_id not in exams.index:
                yield ReadFailure(f"code15-{exam_id}", source, f"code15-{exam_id}: not in exams.csv")
                continue
            try:
                yield _code15_record(tracing, exam_id, exams.loc[exam_id], source)
            except ECGReadError as exc:
                yield ReadFailure(f"code15-{exam_id}", source, str(exc))
