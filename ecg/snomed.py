"""SNOMED-CT diagnosis codes of the PhysioNet/CinC Challenge 2020/2021 -> ECGBench label spaces. No Ray, no torch.

The Challenge's records carry their diagnoses as SNOMED-CT codes in the WFDB header (``# Dx: 164889003,59118001``).
``ecg/data/snomed_ct.csv`` is the one table that turns them into labels. Its ``snomed``, ``abbreviation`` and ``dx``
columns are the Challenge's own mapping table (``dx_mapping_scored.csv`` and ``dx_mapping_unscored.csv`` of
github.com/physionetchallenges/evaluation-2021, PhysioNet/CinC Challenge 2021, Reyna et al., CinC 2021), restricted
to the codes that reach a label here; tests check every row against the copy that the ``torch-ecg`` package ships
(``torch_ecg/databases/aux_data/cinc2021_aux_data.py``) and the one ``ecgbench`` ships
(``ecgbench/data/challenge2021_dx_mapping.csv``). ``scored_as`` is the Challenge's equivalence (its ``weights.csv``
header and the scored table's notes: complete RBBB = RBBB, complete LBBB = LBBB, PAC = SVPB, PVC = VPB): the
Challenge scores the two codes as one diagnosis, so both map to the same labels here.

The label columns are ours: ``code15`` (1dAVb RBBB LBBB SB ST AF), ``cpsc`` (CPSC 2018's nine; CPSC 2018 in the
Challenge's form codes its PVC class as 164884008 "ventricular ectopics") and ``ptbxl_super`` (NORM MI STTC CD HYP,
after PTB-XL's statement groups). Whole-record rules (:func:`labels_for`): a record whose only codes are normal
sinus rhythm (426783006) is ``NORM`` in every space; code15 gives ``ABNORMAL`` to any other record without one of
its six; cpsc and ptbxl-super give no label to a record whose codes all fall outside their space.

Example::

    labels_for(["426783006"], "code15")              # ("NORM",)
    labels_for(["713427006", "270492004"], "code15")  # ("1dAVb", "RBBB"): complete RBBB is scored as RBBB
    labels_for(["63593006"], "cpsc")                  # ("PAC",): SVPB is scored as PAC
    labels_for(["39732003"], "code15")               # ("ABNORMAL",): left axis deviation, none of the six
"""

from __future__ import annotations

import csv
import io
from functools import lru_cache
from importlib import resources

SINUS_RHYTHM = "426783006"  # "sinus rhythm" (NSR): the code of a normal record
TASK_COLUMNS = {"code15": "code15", "cpsc": "cpsc", "ptbxl-super": "ptbxl_super"}
SPACES = {  # label order of each ECGBench task (ecgtasks.registry)
    "code15": ("1dAVb", "RBBB", "LBBB", "SB", "ST", "AF"),
    "cpsc": ("NORM", "AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC", "STD", "STE"),
    "ptbxl-super": ("NORM", "MI", "STTC", "CD", "HYP"),
}


@lru_cache(maxsize=1)
def table() -> dict[str, dict[str, str]]:
    """The rows of ``ecg/data/snomed_ct.csv`` by SNOMED code (str).

    Example: ``table()["59118001"]["abbreviation"] == "RBBB"``.
    """
    text = resources.files("ecg").joinpath("data/snomed_ct.csv").read_text(encoding="utf-8")
    return {row["snomed"]: row for row in csv.DictReader(io.StringIO(text))}


def parse_codes(value: str) -> list[str]:
    """The SNOMED codes of a ``Dx`` value, in order: ``"164889003, 59118001"`` -> ``["164889003", "59118001"]``.

    Commas, semicolons and spaces separate codes; a token that is not all digits raises ``ValueError`` naming it.
    """
    tokens = [t for t in value.replace(";", ",").replace(" ", ",").split(",") if t.strip()]
    bad = [t for t in tokens if not t.strip().isdigit()]
    if bad:
        raise ValueError(f"Dx {value!r}: {bad} are not SNOMED-CT codes (digits)")
    return [t.strip() for t in tokens]


def header_fields(comments) -> dict:
    """The ``Key: value`` comment lines of a Challenge header: ``{"Age": "63", "Sex": "Male", "Dx": "..."}``.

    ``comments`` are wfdb's ``record.comments`` (the ``#`` already stripped) or raw lines with it.
    Example: ``header_fields(["Age: 63", "Dx: 426783006"])["Dx"] == "426783006"``.
    """
    out = {}
    for line in comments:
        key, sep, value = str(line).lstrip("#").partition(":")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def labels_for(codes, task: str) -> tuple[str, ...]:
    """The labels of a record with SNOMED ``codes`` in the space of ``task`` (``code15``, ``cpsc``,
    ``ptbxl-super``), in the task's label order; codes not in the table count as findings outside the space.

    Example: ``labels_for(["426783006", "164934002"], "ptbxl-super") == ("STTC",)``.
    """
    if task not in TASK_COLUMNS:
        raise ValueError(f"no SNOMED-CT label table for task {task!r}; use one of {sorted(TASK_COLUMNS)}")
    codes = [str(c) for c in codes]
    rows = table()
    found = {rows[c][TASK_COLUMNS[task]] for c in codes if c in rows} - {""}
    if codes and set(codes) == {SINUS_RHYTHM}:
        return ("NORM",)
    if task == "code15" and not found:
        return ("ABNORMAL",) if codes else ()
    return tuple(label for label in SPACES[task] if label in found)


def names(codes) -> list[str]:
    """Abbreviations of ``codes`` (the code itself where the table lacks it): ``["AF", "RBBB", "12345"]``."""
    rows = table()
    return [rows[c]["abbreviation"] if c in rows else c for c in map(str, codes)]
