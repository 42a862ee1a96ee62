"""The Record type: validation, lead names, copies."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ecg.record import STANDARD_LEADS, Record, canonical_lead


def test_record_basics():
    sig = np.arange(24, dtype=np.float64).reshape(12, 2)
    rec = Record(signal=sig, fs=500, id="r1", labels=["SB", "1dAVb"], meta={"hr_bpm": 50.0})
    assert rec.signal.dtype == np.float32 and rec.fs == 500.0 and rec.labels == ("SB", "1dAVb")
    assert rec.leads == STANDARD_LEADS and rec.n_samples == 2 and rec.duration == pytest.approx(0.004)
    assert rec.lead("avr").tolist() == [6.0, 7.0]
    assert json.loads(json.dumps(rec.meta)) == rec.meta
    with pytest.raises(KeyError, match="r1"):
        Record(signal=sig[:2], fs=500, leads=("I", "II"), id="r1").lead("V1")


def test_lead_aliases_and_validation():
    assert [canonical_lead(x) for x in ("DI", "dii", "AVL", "v6", "MLII", "X")] == [
        "I", "II", "aVL", "V6", "II", "X"]
    rec = Record(signal=np.zeros((3, 10)), fs=400, leads=("DI", "DII", "AVF"), id="c")
    assert rec.leads == ("I", "II", "aVF")
    with pytest.raises(ValueError, match="'bad'.*shape"):
        Record(signal=np.zeros((11, 10)), fs=500, id="bad")
    with pytest.raises(ValueError, match="sampling rate"):
        Record(signal=np.zeros((12, 10)), fs=0, id="z")


def test_with_signal_copies():
    rec = Record(signal=np.zeros((12, 10)), fs=500, id="a", meta={"k": 1})
    half = rec.with_signal(np.ones((12, 5)), fs=250, resampled_from=500)
    assert half.fs == 250 and half.meta == {"k": 1, "resampled_from": 500} and rec.meta == {"k": 1}
    assert half.id == "a" and rec.signal.shape == (12, 10)
