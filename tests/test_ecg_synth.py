"""The synthetic generator: determinism, balance, and labels checked independently with neurokit2.

The physiology checks do not trust the generator's own meta: heart rate and RR irregularity come from
neurokit2's R-peak detector, PR from neurokit2's delineator, and QRS width from the 12-lead spatial
velocity around each detected R peak (neurokit2's own QRS on/offsets are unreliable on any input, so the
width is measured the way multi-lead QRS duration is defined: first to last high-slope sample).
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest

from ecg.record import STANDARD_LEADS
from ecg.synth import (ABNORMAL_KINDS, COUNTERFACTUALS, LABEL_CYCLE, counterfactual_pair, generate, label_sets,
                       record)

nk = pytest.importorskip("neurokit2")
FS = 500


@pytest.fixture(scope="module")
def records():
    return list(generate(108, seed=5))  # four cycles of LABEL_CYCLE


def test_shapes_ids_patients(records):
    rec = records[0]
    assert rec.signal.shape == (12, 5000) and rec.signal.dtype == np.float32 and rec.fs == 500
    assert rec.leads == STANDARD_LEADS and rec.id == "synth-5-000000"
    assert rec.patient_id == records[2].patient_id != records[3].patient_id
    assert len({r.id for r in records}) == 108
    # Limb leads are derived as a device derives them (Einthoven / Goldberger).
    assert np.allclose(rec.lead("III"), rec.lead("II") - rec.lead("I"), atol=1e-5)
    assert np.allclose(rec.lead("aVR"), -(rec.lead("I") + rec.lead("II")) / 2, atol=1e-5)
    assert 0.3 < np.abs(rec.signal).max() < 6  # mV, physiological


def test_deterministic_and_prefix_stable(records):
    again = list(generate(10, seed=5))
    for a, b in zip(again, records):
        assert a.id == b.id and a.labels == b.labels and a.meta == b.meta
        assert np.array_equal(a.signal, b.signal)
    other = next(generate(1, seed=6))
    assert not np.array_equal(other.signal, records[0].signal)
    late = record(100, seed=5)  # any record on its own, as a parallel worker makes it
    assert late.id == records[100].id and np.array_equal(late.signal, records[100].signal)


def test_balanced_label_sets(records):
    counts = Counter(label for r in records for label in r.labels)
    per_cycle = Counter(label for labels, w in LABEL_CYCLE for label in labels for _ in range(w))
    assert counts == Counter({k: 4 * v for k, v in per_cycle.items()})
    assert set(counts) == {"NORM", "ABNORMAL", "SB", "ST", "AF", "1dAVb", "RBBB", "LBBB"}
    assert min(counts.values()) / max(counts.values()) >= 0.5
    assert label_sets(27, seed=1) != label_sets(27, seed=2)
    assert Counter(label_sets(27, seed=1)) == Counter(label_sets(27, seed=2))


def test_meta_follows_the_physiology_table(records):
    for r in records:
        s, m = set(r.labels), r.meta
        if "SB" in s:
            assert 40 <= m["hr_bpm"] <= 56
        elif "ST" in s:
            assert 104 <= m["hr_bpm"] <= 150
        elif "AF" in s:
            assert 55 <= m["hr_bpm"] <= 140
        else:
            assert 61 <= m["hr_bpm"] <= 99
        assert (m["pr_ms"] is None) == ("AF" in s)
        if m["pr_ms"] is not None:
            assert (230 <= m["pr_ms"] <= 340) if "1dAVb" in s else (130 <= m["pr_ms"] <= 180)
        wide = bool(s & {"RBBB", "LBBB"})
        assert (130 <= m["qrs_ms"] <= 170) if wide else (80 <= m["qrs_ms"] <= 100)
        assert (m["abnormal"] is not None) == ("ABNORMAL" in s)


# ----------------------------------------------------------------------------------- neurokit2 checks


def _r_peaks(rec) -> np.ndarray:
    clean = nk.ecg_clean(rec.lead("II").astype(float), sampling_rate=FS)
    _, info = nk.ecg_peaks(clean, sampling_rate=FS)
    return np.asarray(info["ECG_R_Peaks"]), clean


def _pr_ms(rec) -> float:
    """Median over beats of R onset - P onset on lead II, from neurokit2's delineator."""
    r, clean = _r_peaks(rec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, waves = nk.ecg_delineate(clean, r, sampling_rate=FS, method="prominence")
    p_on = np.asarray(waves["ECG_P_Onsets"], float)
    p_on = np.sort(p_on[np.isfinite(p_on)])
    pr = []
    for r_on in np.asarray(waves["ECG_R_Onsets"], float):
        before = p_on[(p_on < r_on) & (p_on > r_on - 0.45 * FS)]  # this beat's P, if found
        if np.isfinite(r_on) and before.size:
            pr.append(r_on - before[-1])
    return float(np.median(pr)) / FS * 1000


def _qrs_ms(rec) -> float:
    """Median over beats of the QRS width: the span around each R peak where the 12-lead spatial
    velocity exceeds 10% of its peak, gaps under 24 ms bridged (a notch or rsR' is one complex)."""
    from scipy.signal import butter, filtfilt

    r, _ = _r_peaks(rec)
    b, a = butter(2, [1, 40], btype="band", fs=FS)
    x = filtfilt(b, a, rec.signal.astype(float), axis=1)  # (12, samples), mV
    v = np.sqrt((np.diff(x, axis=1) ** 2).sum(0))  # (samples - 1,), mV per sample
    widths = []
    for p in r[(r > 100) & (r < v.size - 100)]:
        w = v[p - 100:p + 100]
        m = int(np.argmax(w))
        above = w > 0.1 * w[m]
        lo, hi = m, m
        while lo > 0 and above[max(0, lo - 12):lo].any():
            lo -= 1
        while hi < w.size - 1 and above[hi + 1:hi + 13].any():
            hi += 1
        widths.append((hi - lo) / FS * 1000)
    return float(np.median(widths))


def _beats_any_polarity(rec) -> np.ndarray:
    """QRS positions from peaks of the 12-lead spatial velocity (finds negative ectopic beats too)."""
    from scipy.signal import butter, filtfilt, find_peaks

    b, a = butter(2, [1, 40], btype="band", fs=FS)
    v = np.sqrt((np.diff(filtfilt(b, a, rec.signal.astype(float), axis=1), axis=1) ** 2).sum(0))
    peaks, _ = find_peaks(v, height=0.3 * np.percentile(v, 99.5), distance=int(0.25 * FS))
    return peaks


def _pick(records, label, k=3):
    chosen = [r for r in records if label in r.labels][:k]
    assert len(chosen) == k
    return chosen


def test_rate_does_not_tell_the_findings_it_does_not_define():
    """Rate defines SB, ST (and is fast in AF), nothing else: a sinus record with 1dAVb, a bundle branch block or an
    ABNORMAL finding has NORM's rates, so a model cannot learn those findings from the rate (a demo model once
    answered 1dAVb for every normal page at 62-80 bpm, the only rates the generator gave 1dAVb)."""
    from scipy.stats import ks_2samp

    recs = [r for r in generate(1350, seed=11) if not set(r.labels) & {"SB", "ST", "AF"}]
    rates = {lab: [r.meta["hr_bpm"] for r in recs if lab in r.labels] for lab in ("NORM", "1dAVb", "RBBB", "LBBB",
                                                                                  "ABNORMAL")}
    for lab, hr in rates.items():
        assert len(hr) >= 100, (lab, len(hr))
        if lab != "NORM":
            assert ks_2samp(hr, rates["NORM"]).pvalue > 0.01, (lab, np.percentile(hr, [5, 50, 95]))
            assert abs(np.median(hr) - np.median(rates["NORM"])) < 5, lab


def test_a_long_pr_at_any_rate_the_labels_allow():
    """1dAVb's P wave comes after the previous T wave where the rate leaves room; where no rate of the label set
    does (sinus tachycardia with a bundle branch block), the record is still made, with the shortest long PR."""
    from ecg.synth import make_record

    for labels in (("1dAVb",), ("1dAVb", "RBBB"), ("ST", "1dAVb", "RBBB")):
        m = make_record(labels, np.random.default_rng(3)).meta
        assert 230 <= m["pr_ms"] <= 340, (labels, m)


def test_heart_rate_by_neurokit(records):
    for label, lo, hi in (("SB", 0, 60), ("ST", 100, 999), ("NORM", 60, 100)):
        for rec in _pick(records, label, 4):
            r, _ = _r_peaks(rec)
            hr = 60 * FS / np.median(np.diff(r))
            assert lo < hr < hi, (rec.id, rec.labels, hr)


def test_af_rr_irregular_by_neurokit(records):
    def irregularity(rec):
        """Median |successive RR difference| / median RR: robust to one missed or extra beat."""
        rr = np.diff(_r_peaks(rec)[0])
        return np.median(np.abs(np.diff(rr))) / np.median(rr)

    for rec in _pick(records, "AF", 4):
        assert irregularity(rec) > 0.08, (rec.id, irregularity(rec))  # sinus rhythm: about 0.02
    for rec in _pick(records, "NORM", 2) + _pick(records, "SB", 2) + _pick(records, "ST", 2):
        assert irregularity(rec) < 0.06, (rec.id, irregularity(rec))  # a noisy record measures up to 0.05


def test_pr_interval_by_neurokit(records):
    for rec in [r for r in records if r.labels == ("1dAVb",)][:3]:
        assert _pr_ms(rec) > 200, (rec.id, rec.meta["pr_ms"], _pr_ms(rec))
    for rec in _pick(records, "NORM", 3):
        assert 110 < _pr_ms(rec) < 200, (rec.id, rec.meta["pr_ms"], _pr_ms(rec))


def test_qrs_width_of_bundle_branch_blocks(records):
    for label in ("RBBB", "LBBB"):
        for rec in [r for r in records if r.labels == (label,)][:3]:
            assert _qrs_ms(rec) >= 120, (rec.id, rec.meta["qrs_ms"], _qrs_ms(rec))
    for rec in _pick(records, "NORM", 3):
        assert _qrs_ms(rec) < 110, (rec.id, rec.meta["qrs_ms"], _qrs_ms(rec))


def test_bundle_branch_morphology(records):
    """RBBB: terminal R' in V1 (positive late QRS); LBBB: deep S in V1 and no septal q in I / V6."""
    for rec in [r for r in records if r.labels == ("RBBB",)][:2]:
        r, _ = _r_peaks(rec)
        v1 = rec.lead("V1")
        late = [v1[p:p + 60].max() - v1[p - 60:p - 40].mean() for p in r[1:-1]]
        assert np.median(late) > 0.3, rec.id  # R' of at least 0.3 mV
    for rec in [r for r in records if r.labels == ("LBBB",)][:2]:
        r, _ = _r_peaks(rec)
        v1 = rec.lead("V1")
        assert np.median([v1[p - 60:p + 60].min() - v1[p - 80:p - 60].mean() for p in r[1:-1]]) < -0.6


def test_abnormal_kinds_show_their_finding():
    """Each ABNORMAL kind differs visibly from NORM, measured on the signal (not on meta)."""
    recs = [r for r in generate(540, seed=9) if r.labels == ("ABNORMAL",)]
    kinds = {k: [r for r in recs if r.meta["abnormal"] == k][:2] for k in ABNORMAL_KINDS}
    assert all(kinds.values()), {k: len(v) for k, v in kinds.items()}  # every kind occurs
    limb_p2p = lambda r: np.ptp(r.signal[:6], axis=1).max()  # noqa: E731, mV
    for rec in kinds["low_voltage"]:
        assert limb_p2p(rec) < 1.0, rec.id
    for rec in kinds["left_axis"]:  # QRS mostly negative in aVF, positive in I
        avf, lead_i = rec.lead("aVF"), rec.lead("I")
        assert np.median(avf) - avf.min() > avf.max() - np.median(avf), rec.id
        assert lead_i.max() - np.median(lead_i) > np.median(lead_i) - lead_i.min(), rec.id
    for rec in kinds["pvc"]:  # premature beats followed by a compensatory pause
        beats = _beats_any_polarity(rec)
        rr = np.diff(beats) / np.median(np.diff(beats))
        assert rr.min() < 0.75 and rr.max() > 1.25, (rec.id, rr)
    for kind, lead, lo, hi in (("t_inversion", "V5", 0.20, 0.32), ("st_elevation", "V2", 0.10, 0.14)):
        for rec in kinds[kind]:
            r, _ = _r_peaks(rec)
            x = rec.lead(lead)
            level = [x[p + int(lo * FS):p + int(hi * FS)].mean() - x[p - 60:p - 45].mean() for p in r[1:-1]]
            assert (np.median(level) < -0.05) if kind == "t_inversion" else (np.median(level) > 0.1), rec.id
    for rec in kinds["st_depression"]:  # ST 60-100 ms after the R peak below the PR baseline in V5
        r, _ = _r_peaks(rec)
        x = rec.lead("V5")
        assert np.median([x[p + 30:p + 50].mean() - x[p - 60:p - 45].mean() for p in r[1:-1]]) < -0.05, rec.id
    for rec in kinds["pac"]:  # early beats that reset the rhythm: short RRs, no long compensatory pause
        beats = _beats_any_polarity(rec)
        rr = np.diff(beats) / np.median(np.diff(beats))
        assert rr.min() < 0.8 and rr.max() < 1.2, (rec.id, rr)
    sokolow = lambda r: np.ptp(r.lead("V1")) / 2 + np.ptp(r.lead("V5")) / 2  # noqa: E731, about S(V1) + R(V5), mV
    normal = np.median([sokolow(r) for r in generate(60, seed=9) if r.labels == ("NORM",)])
    for rec in kinds["lvh"]:
        assert sokolow(rec) > 1.4 * normal, (rec.id, sokolow(rec), normal)
    for rec in kinds["q_waves"]:  # a deep initial negative deflection in aVF before its R
        r, _ = _r_peaks(rec)
        avf = rec.lead("aVF")
        assert np.median([avf[p - 40:p].min() - avf[p - 70:p - 55].mean() for p in r[1:-1]]) < -0.15, rec.id  # >= 0.1 mV is pathological


# ------------------------------------------------------------------------------- counterfactual pairs


@pytest.mark.parametrize("name", list(COUNTERFACTUALS))
def test_counterfactual_pairs_differ_in_the_named_physiology_only(name):
    before_labels, _, after_labels, _, finding = COUNTERFACTUALS[name]
    for i in range(2):
        a, b = counterfactual_pair(name, i, seed=4)
        assert (a.labels, b.labels) == (before_labels, after_labels)
        assert finding is None or (finding in b.labels and finding not in a.labels)
        assert a.meta["noise"] == b.meta["noise"] and a.patient_id == b.patient_id
        again = counterfactual_pair(name, i, seed=4)[1]
        assert np.array_equal(b.signal, again.signal)  # deterministic
        measured = [60 * FS / np.median(np.diff(_r_peaks(r)[0])) for r in (a, b)]
        assert measured == pytest.approx([a.meta["hr_bpm"], b.meta["hr_bpm"]], abs=4), name


def test_a_counterfactual_pr_change_moves_the_p_waves_and_nothing_else():
    """Same beats, same noise: the two pages differ only where a P wave was or now is."""
    name = "PR 160 -> 280 ms"
    for i in range(3):
        a, b = counterfactual_pair(name, i, seed=4)
        assert _pr_ms(b) - _pr_ms(a) == pytest.approx(120, abs=40), i
        moved = (np.abs(b.signal - a.signal) > 1e-3).any(axis=0).mean()  # share of samples that differ
        beats = len(_r_peaks(a)[0])
        assert 0 < moved < beats * 2 * 0.12 * FS / a.signal.shape[1], (i, moved)  # two P waves of ~100 ms a beat
