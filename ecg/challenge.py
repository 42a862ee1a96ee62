"""WFDB folder trees in the PhysioNet/CinC Challenge 2020/2021 form -> labelled :class:`~ecg.record.Record`. No Ray.

A Challenge record is a WFDB header (``.hea``) with its signal file (``.mat`` in the Challenge, ``.dat`` elsewhere)
and comment lines ``# Age: 63``, ``# Sex: Male``, ``# Dx: 164889003,59118001`` (SNOMED-CT codes, see
:mod:`ecg.snomed`). CPSC 2018, Georgia G12EC, Chapman-Shaoxing, Ningbo, PTB-XL and St Petersburg INCART are
published this way. Any WFDB tree reads: a record without ``Dx`` is read unlabelled.

Example::

    from ecg.challenge import find_records, read_record
    for path in find_records("/data/cpsc2018"):          # every .hea under the folder, sorted
        rec = read_record(path, task="cpsc")             # labels in cpsc's nine, meta["snomed"] the codes
"""

from __future__ import annotations

import os

from ecg import snomed, storage
from ecg.readers import ECGReadError, read_wfdb
from ecg.record import Record


def find_records(root: str) -> list[str]:
    """The ``.hea`` files under ``root`` (local or ``s3://``), sorted; ``ValueError`` naming ``root`` when none.

    Example: ``find_records("cpsc2018")`` -> ``["cpsc2018/g1/A0001.hea", ...]``.
    """
    found = sorted(storage.list_files(root, ".hea"))
    if not found:
        raise ValueError(f"{root}: no WFDB records (.hea files) under this folder")
    return found


def references(root: str, task: str | None = None) -> list[dict]:
    """One ``ecg.samples`` reference per WFDB header under ``root`` (kind ``wfdb``; labels read with the record);
    a ``task`` without a SNOMED-CT label table is refused here, in one line, before any record is read.

    Example: ``references("cpsc2018", "cpsc")[0]["id"]`` -> ``"wfdb-g1/A0001"``.
    """
    from ecgtasks import get_task

    snomed.labels_for([], get_task(task or "code15").name)
    return [{"kind": "wfdb", "id": record_id(p, root), "path": p, "index": -1, "patient_id": None, "labels": [],
             "fold": None, "row": "{}", "error": ""} for p in find_records(root)]


def record_id(path: str, root: str) -> str:
    """A record's id: its path under ``root`` without extension, ``/`` as separator (``g1/A0001``), prefixed
    ``wfdb-`` so ids never collide with other sources' (``wfdb-g1/A0001``)."""
    rel = os.path.relpath(str(path), str(root)) if not storage.is_s3(path) else str(path)[len(str(root)):]
    return "wfdb-" + rel.strip("/").rsplit(".", 1)[0].replace(os.sep, "/")


def read_record(path: str, *, task: str = "code15", rid: str | None = None) -> Record:
    """The record at ``path`` (a ``.hea``, with or without extension), labelled for ``task`` from its ``Dx`` codes.

    Meta gains ``snomed`` (codes in header order), ``dx`` (their abbreviations), ``age``, ``sex`` and the
    header's other comment fields. A ``Dx`` line that does not parse raises :class:`ECGReadError` naming
    the record. Example: ``read_record("g1/A0001.hea", task="cpsc").labels`` -> ``("RBBB",)``.
    """
    record = read_wfdb(path)
    record.id = rid or record.id
    fields = snomed.header_fields(record.meta.pop("comments", []))
    try:
        codes = snomed.parse_codes(fields.get("Dx", ""))
    except ValueError as exc:
        raise ECGReadError(f"{record.id}: {exc}") from exc
    record.labels = snomed.labels_for(codes, task) if "Dx" in fields else ()
    record.meta.update(snomed=codes, dx=snomed.names(codes), labelled="Dx" in fields,
                       age=_number(fields.get("Age")), sex=fields.get("Sex"),
                       header={k: v for k, v in fields.items() if k not in ("Age", "Sex", "Dx")})
    return record


def _number(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # "NaN", "Unknown" and missing ages stay unknown
