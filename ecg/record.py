"""The signal record every part of ``ecg`` passes around.

A :class:`Record` is one multi-lead ECG: a float32 array ``(leads, samples)`` in millivolts, its
sampling rate in Hz, the lead names, ids, CODE-15 style labels and free metadata.

Example::

    import numpy as np
    rec = Record(signal=np.zeros((12, 5000), np.float32), fs=500.0, leads=STANDARD_LEADS,
                 id="synth-0-000000", patient_id="synth-0-p000000", labels=("NORM",))
    rec.duration          # 10.0 (s)
    rec.lead("II").shape  # (5000,), mV
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

STANDARD_LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)

# Spellings seen in the wild (CODE-15 "DI", WFDB "AVR", lower case) -> the standard name.
_ALIASES = {name.upper(): name for name in STANDARD_LEADS}
_ALIASES.update({"DI": "I", "DII": "II", "DIII": "III", "MLII": "II", "LEAD I": "I", "LEAD II": "II"})


def canonical_lead(name: str) -> str:
    """The standard spelling of a lead name (``"AVR"`` -> ``"aVR"``, ``"DI"`` -> ``"I"``); others unchanged.

    Example: ``canonical_lead("avl") == "aVL"``.
    """
    key = str(name).strip().upper()
    return _ALIASES.get(key, str(name).strip())


@dataclass
class Record:
    """One ECG: ``signal`` float32 ``(leads, samples)`` in mV sampled at ``fs`` Hz.

    ``labels`` are CODE-15 style strings, e.g. ``("SB", "1dAVb")``, ``("NORM",)``, ``("ABNORMAL",)``
    (or PTB-XL superclasses for PTB-XL records). ``meta`` holds source-specific facts (heart rate used
    by the generator, PTB-XL ``strat_fold``, ...); it must stay JSON-serialisable.
    """

    signal: np.ndarray  # (leads, samples), mV, float32
    fs: float  # Hz
    leads: tuple[str, ...] = STANDARD_LEADS
    id: str = ""
    patient_id: str | None = None
    labels: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.signal = np.asarray(self.signal, dtype=np.float32)
        self.leads = tuple(canonical_lead(lead) for lead in self.leads)
        self.labels = tuple(self.labels)
        self.fs = float(self.fs)
        if self.signal.ndim != 2 or self.signal.shape[0] != len(self.leads):
            raise ValueError(
                f"record {self.id!r}: signal shape {self.signal.shape} does not match "
                f"{len(self.leads)} lead names {self.leads}"
            )
        if self.fs <= 0:
            raise ValueError(f"record {self.id!r}: sampling rate must be positive, got {self.fs}")

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[1])

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.n_samples / self.fs

    def lead(self, name: str) -> np.ndarray:
        """The samples of one lead, mV. Raises ``KeyError`` naming the record if absent."""
        name = canonical_lead(name)
        if name not in self.leads:
            raise KeyError(f"record {self.id!r} has no lead {name!r}; leads: {self.leads}")
        return self.signal[self.leads.index(name)]

    def with_signal(self, signal: np.ndarray, fs: float | None = None, **meta) -> "Record":
        """A copy with a new signal (and rate), other fields kept, ``meta`` updated."""
        return replace(self, signal=signal, fs=self.fs if fs is None else fs,
                       meta={**self.meta, **meta})
