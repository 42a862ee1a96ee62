"""Synthetic labelled 12-lead ECGs, made from the physiology of each CODE-15 label.

How a record is built (vectorised numpy, about 1-2 ms per record):

1. The heart's electrical activity is a handful of *waves* per beat (P, septal q/r, main R, terminal s,
   right-ventricular R' for RBBB, two LV humps for LBBB, T). Each wave is a (skewed) Gaussian in time
   times a 3-D dipole; its size in each lead is the dipole projected on that lead's vector
   (Einthoven/Goldberger limb leads, a horizontal-plane fan for V1-V6). So one morphology gives all
   12 leads consistently: rsR' in V1 and a broad S in I/V6 for RBBB fall out of one late rightward-
   anterior dipole, exactly as in the heart.
2. One beat template ``(12, L)`` per beat kind is added at each beat time (sinus rhythm with a little
   respiratory variation, an irregularly irregular AF rhythm, or premature ventricular beats).
3. AF adds a fibrillatory baseline; every record gets baseline wander, mains hum and EMG-like noise.

Feature ranges follow the benchmark's definitions (ECGBench's table: NORM 60-100 bpm, SB under 60, ST over 100)
and keep clear of its borders: NORM 61-99 bpm, PR 130-180 ms, QRS 80-100 ms; SB 40-56 bpm; ST 104-150 bpm;
1dAVb PR 230-340 ms; RBBB/LBBB QRS 130-170 ms; AF 55-140 bpm mean with RR coefficient of variation 0.20-0.35.
A feature that does not define a label has the same distribution whatever the label: every sinus record that is
neither SB nor ST, whatever its findings, draws its rate from NORM's 61-99 bpm, so a model cannot read 1dAVb, a
bundle branch block or ABNORMAL from the rate (the demo's model once did: it answered 1dAVb for any normal page at
62-80 bpm, the only rates 1dAVb had). 1dAVb's PR ends before the previous T wave does not (PR <= RR - QT - 20 ms),
so its P wave never hides in the T wave.

Example::

    from ecg.synth import generate
    rec = next(generate(1, seed=0))
    rec.signal.shape, rec.fs, rec.labels   # (12, 5000), 500.0, ("NORM",)
    rec.meta["hr_bpm"], rec.meta["pr_ms"], rec.meta["qrs_ms"]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from ecg.record import STANDARD_LEADS, Record

FS = 500.0  # Hz
DURATION = 10.0  # s
N_SAMPLES = int(FS * DURATION)

# Label sets and how often each occurs in one cycle of the generator (keeps classes roughly balanced:
# each of the six findings appears in 4-6 of 27 records, NORM and ABNORMAL in 3 each).
LABEL_CYCLE: tuple[tuple[tuple[str, ...], int], ...] = (
    (("NORM",), 3), (("ABNORMAL",), 3),
    (("SB",), 2), (("ST",), 2), (("AF",), 2), (("1dAVb",), 2), (("RBBB",), 2), (("LBBB",), 2),
    (("AF", "RBBB"), 1), (("AF", "LBBB"), 1), (("SB", "1dAVb"), 1), (("ST", "LBBB"), 1),
    (("SB", "RBBB"), 1), (("1dAVb", "RBBB"), 1), (("ST", "RBBB"), 1), (("1dAVb", "LBBB"), 1),
    (("SB", "LBBB"), 1),
)
# Heart rate (bpm) by the label that sets it; every other sinus record draws NORM's (see the module docstring).
RATES = {"NORM": (61.0, 99.0), "SB": (40.0, 56.0), "ST": (104.0, 150.0), "AF": (55.0, 140.0)}
PR_1DAVB = (0.23, 0.34)  # s


def _qt(rr: float, qrs: float) -> float:
    """QT (s) from QRS onset: Bazett-like, prolonged by a wide QRS."""
    return 0.40 * np.sqrt(rr) + (qrs - 0.09)


def _pr_room(rr: float, qrs: float) -> float:
    """The longest PR (s) whose P wave starts 20 ms after the previous T wave ends."""
    return rr - _qt(rr, qrs) - 0.02


ABNORMAL_KINDS = ("pvc", "left_axis", "low_voltage", "t_inversion", "st_elevation", "pac", "st_depression",
                  "lvh", "q_waves")
PATIENT_GROUP = 3  # consecutive records share a patient (and its heart geometry) in groups of 3


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _lead_matrix() -> np.ndarray:
    """Lead vectors ``(12, 3)`` in body axes x = patient's left, y = feet, z = anterior.

    Limb leads follow Einthoven/Goldberger from I and II so III = II - I etc. hold exactly; chest leads
    fan from V1 (right of the sternum, anterior) to V6 (left mid-axillary), closer to the heart -> larger.
    """
    lead_i, lead_ii = np.array([1.0, 0.0, 0.0]), np.array([0.5, 0.866, 0.0])
    limb = [lead_i, lead_ii, lead_ii - lead_i, -(lead_i + lead_ii) / 2, lead_i - lead_ii / 2,
            lead_ii - lead_i / 2]
    angles = np.deg2rad([115.0, 90.0, 72.0, 55.0, 30.0, 5.0])  # from +x towards +z
    gains = np.array([1.2, 1.6, 1.7, 1.6, 1.4, 1.2])
    chest = [g * np.array([np.cos(a), 0.15, np.sin(a)]) for a, g in zip(angles, gains)]
    # Limb leads see the heart from further away than the chest leads: 0.7 puts lead II's QRS near the 1-1.8 mV of
    # real resting ECGs (measured on the clinical exports of ecg/data/real_ecgs.csv). A common factor keeps
    # III = II - I and the Goldberger leads exact.
    return np.stack([0.7 * v for v in limb] + chest)  # (12, 3)


LEAD_VECTORS = _lead_matrix()


def _wave(center, sigma_left, sigma_right, amp, direction) -> tuple:
    """One wave: center (s, from QRS onset), widths (s), amplitude (mV), dipole direction (3,)."""
    return (center, sigma_left, sigma_right, amp, _unit(direction))


def _qrs_waves(conduction: str, qrs: float, axis_deg: float, gain: float, rng) -> list[tuple]:
    """Depolarisation waves for ``normal`` / ``rbbb`` / ``lbbb`` / ``pvc`` conduction; ``qrs`` in s."""
    ax = np.deg2rad(axis_deg)
    if conduction == "lbbb":
        # Septum activated right -> left (no septal q in I/V6, no r in V1), then slow LV activation:
        # two leftward-posterior humps -> broad notched R in I/aVL/V5-V6, deep QS in V1.
        lv_dir = (0.85, 0.2 + 0.3 * np.sin(ax), -0.75)
        s = qrs / 8.5
        return [_wave(0.12 * qrs, 0.06 * qrs, 0.06 * qrs, 0.15 * gain, lv_dir),
                _wave(0.36 * qrs, s, s, 1.2 * gain, lv_dir),
                _wave(0.70 * qrs, s, 1.15 * s, 1.35 * gain, lv_dir)]
    if conduction == "pvc":
        # Ectopic ventricular beat: one wide, bizarre, slurred wave, large and with a steep inferior or
        # superior axis (outflow-tract or apical origin), so it stands out in the limb leads.
        x = rng.uniform(-0.7, 0.7)
        y = rng.choice([-1.0, 1.0]) * rng.uniform(0.7, 1.0)
        d = (x, y, rng.uniform(-0.7, 0.7))
        return [_wave(0.45 * qrs, 0.22 * qrs, 0.2 * qrs, 1.8 * gain, d)]
    base = min(qrs, 0.095)  # normal septal + LV activation takes under 100 ms
    # Septum (left -> right, anterior: q in I/V6, r in V1), then the LV free wall as the QRS loop turns
    # counter-clockwise: apical (left, inferior, anterior: R in V3-V4) then lateral-posterior (R in
    # V5-V6, deep S in V1-V2). Both follow the patient's frontal axis.
    late = ax - np.deg2rad(20)
    waves = [_wave(0.18 * base, 0.07 * base, 0.07 * base, 0.22 * gain, (-0.55, 0.25, 0.8)),
             _wave(0.42 * base, 0.1 * base, 0.1 * base, 1.0 * gain, (np.cos(ax), np.sin(ax), 0.35)),
             _wave(0.56 * base, 0.1 * base, 0.1 * base, 1.0 * gain,
                   (np.cos(late), 0.6 * np.sin(late), -0.85))]
    if conduction == "rbbb":
        # Late, slow right-ventricular activation, rightward and anterior: R' in V1-V2,
        # broad slurred S in I, aVL, V5-V6.
        sig = (qrs - 0.08) / 3.2
        waves.append(_wave(qrs - 2.4 * sig, sig, sig, 0.75 * gain, (-0.65, 0.1, 0.75)))
    else:
        waves.append(_wave(0.80 * base, 0.08 * base, 0.08 * base, 0.3 * gain, (-0.3, -0.6, -0.5)))
    return waves


def _beat_waves(kind: dict, rr: float, rng) -> list[tuple]:
    """All waves of one beat kind (P, QRS, ST/T), times relative to QRS onset in s."""
    qrs, conduction, gain = kind["qrs"], kind["conduction"], kind["gain"]
    waves = _qrs_waves(conduction, qrs, kind["axis"], gain, rng)
    if kind["p"]:
        sp = 0.018  # P lasts about 5 sigma = 90 ms; its onset is PR before QRS onset
        waves.append(_wave(-kind["pr"] + 2.5 * sp, sp, sp, kind["p_amp"], kind.get("p_dir", (0.5, 0.85, 0.1))))
    qt = _qt(rr, qrs)
    t_dir = kind["t_dir"]
    if conduction == "rbbb":
        t_dir = (0.55, 0.8, -0.45)  # secondary T inversion in V1-V2
    if conduction in ("lbbb", "pvc"):
        t_dir = -np.asarray(waves[-2 if kind["p"] else -1][4])  # secondary, discordant repolarisation
    waves.append(_wave(qt - 0.21 * qt, 0.15 * qt, 0.09 * qt, kind["t_amp"], t_dir))  # slow rise, fast fall
    if kind.get("st_elev"):
        waves.append(_wave(qrs + 0.06, 0.05, 0.05, kind["st_elev"], (0.0, 0.2, 1.0)))
    if kind.get("st_dep"):
        waves.append(_wave(qrs + 0.05, 0.04, 0.09, kind["st_dep"], (-0.9, -0.25, 0.3)))
    if kind.get("q_inferior") and conduction != "pvc":
        waves.append(_wave(0.012, 0.012, 0.012, kind["q_inferior"] * kind["gain"], (0.1, -1.0, 0.0)))
    return waves


def _template(waves: list[tuple], pre: float, post: float, leads: np.ndarray = LEAD_VECTORS) -> np.ndarray:
    """Sum of the waves' Gaussians projected on ``leads`` (12, 3): ``(12, L)`` mV from -pre to +post s."""
    t = np.arange(-pre, post, 1.0 / FS)  # (L,), s
    c, sl, sr, a, d = (np.array([w[i] for w in waves]) for i in range(5))
    dt = t[None, :] - c[:, None]  # (W, L)
    sig = np.where(dt < 0, sl[:, None], sr[:, None])
    g = a[:, None] * np.exp(-0.5 * (dt / sig) ** 2)  # (W, L)
    return (leads @ d.T) @ g  # (12, W) @ (W, L) -> (12, L)


def _sinus_times(rr: float, rng, n_extra: int = 2) -> np.ndarray:
    """QRS onset times (s) of sinus rhythm with mild respiratory variation, covering the record."""
    n = int(DURATION / rr) + 2 * n_extra + 2
    k = np.arange(n)
    resp = 1 + 0.03 * np.sin(2 * np.pi * k * rr / rng.uniform(3.5, 5.0) + rng.uniform(0, 2 * np.pi))
    rrs = rr * resp * (1 + 0.008 * rng.standard_normal(n))
    return rng.uniform(-rr, 0) - n_extra * rr + np.concatenate([[0], np.cumsum(rrs[:-1])])


def _af_times(rr: float, rng) -> np.ndarray:
    """Irregularly irregular QRS onsets: RR drawn independently, coefficient of variation 0.20-0.35."""
    cv = rng.uniform(0.20, 0.35)
    n = int(DURATION / rr * 2) + 6
    rrs = np.maximum(rng.gamma(1 / cv**2, rr * cv**2, n), 0.33)
    return rng.uniform(-1.0, 0) - 1.0 + np.concatenate([[0], np.cumsum(rrs[:-1])])


# Limb leads from the two recorded ones, as an electrocardiograph derives them: rows are the 12 leads,
# columns the 8 recorded channels (I, II, V1..V6); III = II - I, aVR = -(I + II) / 2, ...
_DERIVE = np.zeros((12, 8))
_DERIVE[[0, 1], [0, 1]] = 1.0
_DERIVE[2, :2] = (-1.0, 1.0)
_DERIVE[3, :2] = (-0.5, -0.5)
_DERIVE[4, :2] = (1.0, -0.5)
_DERIVE[5, :2] = (-0.5, 1.0)
_DERIVE[6:, 2:] = np.eye(6)
_DERIVE = _DERIVE.astype(np.float32)
_TIME = (np.arange(N_SAMPLES) / FS).astype(np.float32)  # (N,), s
# White Gaussian noise drawn once; each record's EMG noise is 8 random windows of it. Drawing 40,000
# fresh normals per record took 3 ms here, more than the rest of the record together.
_NOISE_BANK = np.random.default_rng(20240917).standard_normal(1 << 18, dtype=np.float32)


# Noise levels of resting 12-lead recordings, mV (after the device's 0.05-150 Hz filter): baseline wander
# (respiration, electrode drift, 0.05-0.5 Hz), muscle (EMG, broadband), mains hum, and electrode-motion
# transients (a step that decays over a fraction of a second). Amplitudes follow the MIT-BIH Noise Stress
# Test Database's recordings scaled to resting ECGs: most records are clean, some moderately noisy, a few bad.
NOISE_LEVELS = {  # level: (probability, wander mV, EMG mV rms, mains mV, electrode-motion events)
    "clean": (0.45, (0.02, 0.08), (0.002, 0.008), (0.0, 0.01), (0, 0)),
    "moderate": (0.40, (0.06, 0.2), (0.006, 0.02), (0.0, 0.025), (0, 1)),
    "noisy": (0.15, (0.15, 0.35), (0.015, 0.04), (0.01, 0.05), (1, 3)),
}


def _noise(rng, af: bool) -> tuple[np.ndarray, str]:
    """Baseline wander + mains hum + EMG + electrode motion (+ fibrillatory f-waves for AF): ((12, N) mV, level).

    Made on the 8 recorded channels and projected through :data:`_DERIVE`, so III = II - I etc. hold
    for the noise too, as on a real electrocardiograph.
    """
    names = list(NOISE_LEVELS)
    level = names[int(rng.choice(len(names), p=[NOISE_LEVELS[n][0] for n in names]))]
    _, wander, emg_rms, mains_amp, motion = NOISE_LEVELS[level]
    t = _TIME  # (N,), s, float32: noise needs no double precision and float32 halves the cost
    f = rng.uniform(0.05, 0.45, (3, 1)).astype(np.float32)  # baseline wander, Hz
    phase = rng.uniform(0, 2 * np.pi, (4, 1)).astype(np.float32)
    mains = np.float32(rng.choice([50.0, 60.0]))  # Hz
    waves = np.sin(np.float32(2 * np.pi) * np.vstack([f, [[mains]]]) * t + phase)  # (4, N)
    mix = np.empty((8, 4), np.float32)
    mix[:, :3] = rng.uniform(-1, 1, (8, 3)) * rng.uniform(*wander)  # wander, mV
    mix[:, 3] = rng.uniform(*mains_amp) * rng.uniform(0.5, 1.0, 8)  # mains hum, mV
    out = mix @ waves  # (8, N)
    emg = rng.uniform(*emg_rms) * rng.uniform(0.5, 1.5, 8)  # mV
    for k, start in enumerate(rng.integers(0, _NOISE_BANK.size - N_SAMPLES, 8)):
        out[k] += np.float32(emg[k]) * _NOISE_BANK[start:start + N_SAMPLES]  # white noise window
    for _ in range(int(rng.integers(motion[0], motion[1] + 1))):
        # Electrode motion: one electrode's step of 0.2-0.8 mV decaying over 0.2-0.8 s, in the channels using it.
        t0, tau = rng.uniform(0, DURATION), rng.uniform(0.2, 0.8)
        step = np.where(t >= t0, np.exp(-(t - t0) / tau), 0).astype(np.float32)
        out[rng.integers(0, 8)] += np.float32(rng.uniform(0.2, 0.8) * rng.choice([-1, 1])) * step
    if af:
        # f-waves at 4-9 Hz with a wandering frequency; largest in V1 and lead II.
        base = rng.uniform(4.0, 9.0) + 0.6 * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t.astype(float))
        phase = 2 * np.pi * np.cumsum(base) / FS
        fw = np.sin(phase) + 0.4 * np.sin(1.7 * phase + rng.uniform(0, 2 * np.pi))
        lead_amp = np.array([0.3, 0.8, 1.0, 0.8, 0.6, 0.5, 0.4, 0.3])  # I, II, V1..V6
        out += (rng.uniform(0.03, 0.1) * lead_amp[:, None] * fw).astype(np.float32)  # (8, N)
    return _DERIVE @ out, level  # (12, N)


def _physiology(labels: tuple[str, ...], rng, patient: dict) -> dict:
    """The numbers behind a label set: rate (bpm), PR / QRS (s), conduction, rhythm, abnormal kind."""
    s = set(labels)
    conduction = "rbbb" if "RBBB" in s else "lbbb" if "LBBB" in s else "normal"
    qrs = rng.uniform(0.13, 0.17) if conduction != "normal" else rng.uniform(0.08, 0.10)
    rates = RATES["SB" if "SB" in s else "ST" if "ST" in s else "AF" if "AF" in s else "NORM"]
    hr = rng.uniform(*rates)
    pr = rng.uniform(0.13, 0.18)
    if "1dAVb" in s:
        # The P wave starts after the previous beat's T wave ends (QT as in _beat_waves, plus 20 ms): at a fast
        # rate with a wide QRS there is no room for a long PR, so the rate is drawn again (rarely: above 90 bpm).
        # A label set with no such rate (ST with a bundle branch block) keeps the shortest long PR, P on T.
        for _ in range(100):
            if (room := _pr_room(60.0 / hr, qrs)) >= PR_1DAVB[0] + 0.01:
                break
            hr = rng.uniform(*rates)
        pr = rng.uniform(PR_1DAVB[0], min(PR_1DAVB[1], max(room, PR_1DAVB[0])))
    kind = {"qrs": qrs, "pr": pr, "conduction": conduction, "p": "AF" not in s,
            "axis": patient["axis"], "gain": patient["gain"], "p_amp": rng.uniform(0.12, 0.2),
            "t_amp": rng.uniform(0.25, 0.4) * patient["gain"], "t_dir": (0.5, 0.8, -0.05)}
    abnormal = str(rng.choice(ABNORMAL_KINDS)) if "ABNORMAL" in s else None
    if abnormal == "left_axis":
        kind["axis"] = rng.uniform(-60, -40)
    elif abnormal == "low_voltage":
        kind["gain"] *= 0.3
        kind["t_amp"] *= 0.3
        kind["p_amp"] *= 0.5
    elif abnormal == "t_inversion":
        kind["t_dir"] = (-0.6, -0.3, -0.6)
    elif abnormal == "st_elevation":
        kind["st_elev"] = rng.uniform(0.2, 0.35)
    elif abnormal == "st_depression":  # lateral downsloping ST depression (ischaemia, strain)
        kind["st_dep"] = rng.uniform(0.2, 0.35)
    elif abnormal == "lvh":  # high voltage (Sokolow-Lyon well over 3.5 mV) with lateral strain T waves
        kind["gain"] *= rng.uniform(1.7, 2.2)
        kind["t_dir"] = (-0.5, 0.2, -0.7)
    elif abnormal == "q_waves":  # an old inferior infarction: wide, deep initial Q in II, III, aVF
        kind["q_inferior"] = rng.uniform(0.35, 0.6)
    return {"hr": hr, "kind": kind, "af": "AF" in s, "abnormal": abnormal}


def _beat_times(phys: dict, rng) -> tuple[np.ndarray, np.ndarray]:
    """QRS onset times (s) and each beat's template name (``sinus``, ``pvc`` or ``pac``)."""
    rr = 60.0 / phys["hr"]
    times = _af_times(rr, rng) if phys["af"] else _sinus_times(rr, rng)
    kinds = np.full(len(times), "sinus", dtype=object)
    if phys["abnormal"] == "pvc":
        # Every 3rd or 4th beat comes early (coupling 0.55-0.65 RR) with a full compensatory pause.
        every = rng.integers(3, 5)
        kinds[rng.integers(0, every)::every] = "pvc"
        early = rr * rng.uniform(0.35, 0.45)
        times = times - np.where(kinds == "pvc", early, 0.0)
    elif phys["abnormal"] == "pac":
        # Every 3rd-5th beat is an early atrial beat (coupling 0.6-0.75 RR) that resets the sinus node: the
        # rhythm goes on from it, with no compensatory pause.
        every = rng.integers(3, 6)
        early = rr * rng.uniform(0.25, 0.4)
        pac = np.zeros(len(times), bool)
        pac[rng.integers(0, every)::every] = True
        kinds[pac] = "pac"
        times = times - early * np.cumsum(pac)
    return times, kinds


def _place(templates: dict, times: np.ndarray, kinds: np.ndarray, pre: float, rng) -> np.ndarray:
    """Add each beat's template at its onset into a padded buffer; returns ``(12, N)`` mV.

    Beat-to-beat amplitude follows respiration (the heart's axis and distance to the electrodes change as
    the chest moves) plus a little independent variation.
    """
    L = next(iter(templates.values())).shape[1]
    buf = np.zeros((12, N_SAMPLES + 2 * L), np.float32)
    starts = np.round((times - pre) * FS).astype(int) + L
    resp = rng.uniform(0.02, 0.08) * np.sin(2 * np.pi * times / rng.uniform(3.0, 6.0) + rng.uniform(0, 2 * np.pi))
    scale = 1 + resp + 0.02 * rng.standard_normal(len(times))
    for s, kind, k in zip(starts, kinds, scale):
        if 0 <= s <= N_SAMPLES + L:
            buf[:, s:s + L] += k * templates[kind]
    return buf[:, L:L + N_SAMPLES]


def make_record(labels: tuple[str, ...], rng: np.random.Generator, *, patient: dict | None = None,
                id: str = "", patient_id: str | None = None, adjust: dict | None = None) -> Record:
    """One synthetic 10 s, 500 Hz, 12-lead record with the given CODE-15 label set.

    ``patient`` fixes the heart geometry (``axis`` deg, ``gain``); drawn from ``rng`` if omitted.
    ``adjust`` sets physiology after it is drawn, for counterfactual pairs (the same record with one thing changed:
    every other draw, the noise included, stays the same): ``hr`` (bpm), ``pr`` and ``qrs`` (s), ``conduction``
    (``normal``/``rbbb``/``lbbb``). The caller gives the labels that fit (:func:`counterfactual_pair`).
    Example: ``make_record(("SB", "1dAVb"), np.random.default_rng(0)).meta["pr_ms"]`` -> about 230-340.
    """
    patient = patient or _patient(rng)
    phys = _physiology(tuple(labels), rng, patient)
    for key, value in (adjust or {}).items():
        if key == "hr":
            phys["hr"] = float(value)
        elif key in ("pr", "qrs", "conduction"):
            phys["kind"][key] = value
        else:
            raise ValueError(f"make_record: adjust has no {key!r} (hr, pr, qrs, conduction)")
    rr = 60.0 / phys["hr"]
    noise_rng = np.random.default_rng(int(rng.integers(2**63)))  # its own stream: the same noise at any rate
    pre, post = 0.45, 0.75  # template window around QRS onset, s
    kinds = {"sinus": phys["kind"]}
    times, beat_kinds = _beat_times(phys, rng)
    if (beat_kinds == "pvc").any():
        kinds["pvc"] = {**phys["kind"], "conduction": "pvc", "qrs": 0.15, "p": False}
    if (beat_kinds == "pac").any():  # an ectopic atrial focus: a different, often inverted P
        kinds["pac"] = {**phys["kind"], "p_amp": phys["kind"]["p_amp"] * 0.8, "p_dir": (0.3, -0.6, 0.3)}
    leads = _patient_leads(patient)
    templates = {name: _template(_beat_waves(k, rr, rng), pre, post, leads).astype(np.float32)
                 for name, k in kinds.items()}
    noise, level = _noise(noise_rng, phys["af"])
    signal = _place(templates, times, beat_kinds, pre, rng) + noise  # (12, N), mV
    k = phys["kind"]
    meta = {"hr_bpm": round(float(phys["hr"]), 1),
            "pr_ms": None if phys["af"] else round(k["pr"] * 1000, 1),
            "qrs_ms": round(k["qrs"] * 1000, 1), "conduction": k["conduction"],
            "rhythm": "af" if phys["af"] else "sinus", "abnormal": phys["abnormal"],
            "axis_deg": round(float(k["axis"]), 1), "noise": level, "generator": "ecg.synth/3"}
    return Record(signal=signal, fs=FS, leads=STANDARD_LEADS, id=id,
                  patient_id=patient_id, labels=tuple(labels), meta=meta)


# Counterfactual pairs: one record drawn twice, once as ``before`` and once with one physiological change (``after``)
# that the benchmark's definitions say makes ``finding`` (or, with finding None, changes no label). A model that reads
# the physiology answers ``finding`` on the second page and not on the first; one that learned a shortcut does not.
COUNTERFACTUALS = {  # name: (labels before, adjust before, labels after, adjust after, finding)
    "PR 160 -> 280 ms": (("NORM",), {"hr": 70, "pr": 0.16}, ("1dAVb",), {"hr": 70, "pr": 0.28}, "1dAVb"),
    "QRS 90 ms -> RBBB 150 ms": (("NORM",), {"hr": 75, "qrs": 0.09}, ("RBBB",),
                                 {"hr": 75, "qrs": 0.15, "conduction": "rbbb"}, "RBBB"),
    "QRS 90 ms -> LBBB 150 ms": (("NORM",), {"hr": 75, "qrs": 0.09}, ("LBBB",),
                                 {"hr": 75, "qrs": 0.15, "conduction": "lbbb"}, "LBBB"),
    "rate 75 -> 48 bpm": (("NORM",), {"hr": 75}, ("SB",), {"hr": 48}, "SB"),
    "rate 75 -> 125 bpm": (("NORM",), {"hr": 75}, ("ST",), {"hr": 125}, "ST"),
    "NORM rate 65 -> 95 bpm": (("NORM",), {"hr": 65}, ("NORM",), {"hr": 95}, None),
    "1dAVb rate 65 -> 95 bpm": (("1dAVb",), {"hr": 65, "pr": 0.26}, ("1dAVb",), {"hr": 95, "pr": 0.26}, None),
}


def counterfactual_pair(name: str, i: int, seed: int = 0) -> tuple[Record, Record]:
    """Record ``i`` of counterfactual :data:`COUNTERFACTUALS` ``[name]``: ``(before, after)``, the same patient,
    beats and noise, one physiological change apart."""
    before_labels, before, after_labels, after, _ = COUNTERFACTUALS[name]
    patient = _patient(np.random.default_rng([seed, i, 2]))
    # Both are drawn as ``before`` (the same random draws, so the same beats and noise), then labelled.
    return tuple(dataclasses.replace(
        make_record(before_labels, np.random.default_rng([seed, i, 3]), patient=patient, adjust=adjust,
                    id=f"cf-{seed}-{i:04d}-{tag}", patient_id=f"cf-{seed}-p{i:04d}"), labels=tuple(labels))
        for labels, adjust, tag in ((before_labels, before, "a"), (after_labels, after, "b")))


# What a synthetic record's measurements read as, the reply to MEASUREMENTS_QUESTION asked after the diagnosis
# (``meta["followups"]`` of its sample row): rate to 10 bpm, PR to 20 ms, QRS to 10 ms, axis to 30 degrees, and the
# ABNORMAL finding, if any. Trained as a follow-up turn, it teaches a from-scratch model to read what the diagnosis
# rests on (docs/sim2real.md); a served model answers the same question in a chat.
MEASUREMENTS_QUESTION = "What are the measurements?"
FINDING_WORDS = {"pvc": "ventricular ectopics", "pac": "atrial ectopics", "left_axis": "left axis deviation",
                 "low_voltage": "low voltage", "t_inversion": "T inversion", "st_elevation": "ST elevation",
                 "st_depression": "ST depression", "lvh": "LVH", "q_waves": "Q waves"}


def measurements_text(meta: dict) -> str:
    """The measurements of a synthetic record (its ``meta``) as a short reply.
    Example: ``measurements_text(record(0).meta)`` -> ``"rate 80 bpm; PR 140 ms; QRS 130 ms; rhythm sinus; axis 30;
    finding none"``."""
    near = lambda v, step: int(step * round(float(v) / step))  # noqa: E731
    pr = "none" if meta.get("pr_ms") is None else f"{near(meta['pr_ms'], 20)} ms"
    rhythm = "AF" if meta.get("rhythm") == "af" else "sinus"
    return (f"rate {near(meta['hr_bpm'], 10)} bpm; PR {pr}; QRS {near(meta['qrs_ms'], 10)} ms; rhythm {rhythm}; "
            f"axis {near(meta['axis_deg'], 30)}; finding {FINDING_WORDS.get(meta.get('abnormal'), 'none')}")


def followups(meta: dict) -> list[dict]:
    """``meta["followups"]`` of a synthetic record's sample row: the measurements question and its reply."""
    return [{"role": "user", "text": MEASUREMENTS_QUESTION}, {"role": "assistant", "text": measurements_text(meta)}]


def measurements_vocabulary() -> str:
    """Every word :func:`measurements_text` and :data:`MEASUREMENTS_QUESTION` can write (a word-level tokenizer's
    corpus)."""
    numbers = " ".join(str(v) for v in range(-180, 400, 10))
    return f"{MEASUREMENTS_QUESTION} rate bpm; PR ms; QRS ms; rhythm sinus AF; axis; finding none {numbers} " + \
        " ".join(FINDING_WORDS.values())


def _patient(rng: np.random.Generator) -> dict:
    """A patient's heart and chest: frontal QRS axis (deg, normal range), overall voltage gain, and where the
    chest electrodes sit (angle offsets, deg, and distance gains), so QRS shapes and R-wave progression differ
    from patient to patient as they do between real people."""
    return {"axis": float(rng.uniform(-5, 85)), "gain": float(rng.lognormal(0.0, 0.25)),
            "chest_deg": rng.normal(0.0, 7.0, 6).round(1).tolist(),
            "chest_gain": rng.uniform(0.75, 1.3, 6).round(2).tolist()}


def _patient_leads(patient: dict) -> np.ndarray:
    """The lead vectors ``(12, 3)`` of this patient: limb leads exact (Einthoven/Goldberger hold), chest leads
    moved by the patient's electrode offsets."""
    leads = LEAD_VECTORS.copy()
    deg, gain = patient.get("chest_deg"), patient.get("chest_gain")
    if deg is not None:
        a = np.deg2rad(np.asarray(deg))
        x, z = leads[6:, 0].copy(), leads[6:, 2].copy()
        leads[6:, 0] = x * np.cos(a) - z * np.sin(a)
        leads[6:, 2] = x * np.sin(a) + z * np.cos(a)
        leads[6:] *= np.asarray(gain)[:, None]
    return leads


def label_sets(n: int, seed: int = 0) -> list[tuple[str, ...]]:
    """The label set of records ``0..n-1``: :data:`LABEL_CYCLE` expanded, shuffled per cycle by ``seed``.

    Example: ``label_sets(3, seed=0)`` -> e.g. ``[("AF",), ("NORM",), ("SB", "1dAVb")]``.
    """
    return [label_set(i, seed) for i in range(n)]


_CYCLE = [labels for labels, weight in LABEL_CYCLE for _ in range(weight)]


def label_set(i: int, seed: int = 0) -> tuple[str, ...]:
    """The label set of record ``i``: position ``i % 27`` of cycle ``i // 27``, shuffled by ``seed``."""
    block, pos = divmod(i, len(_CYCLE))
    order = np.random.default_rng([seed, block, 7]).permutation(len(_CYCLE))
    return _CYCLE[order[pos]]


def record(i: int, seed: int = 0) -> Record:
    """Record ``i`` of ``generate(n, seed)`` for any ``n > i``, made on its own (for parallel workers).

    Id ``f"synth-{seed}-{i:06d}"``, patient ``f"synth-{seed}-p{i // 3:06d}"`` (groups of three consecutive
    records share a patient and its heart geometry), random stream ``default_rng([seed, i])``.
    Example: ``record(5, seed=1).id`` -> ``"synth-1-000005"``.
    """
    p = i // PATIENT_GROUP
    patient = _patient(np.random.default_rng([seed, p, 1]))
    return make_record(label_set(i, seed), np.random.default_rng([seed, i]), patient=patient,
                       id=f"synth-{seed}-{i:06d}", patient_id=f"synth-{seed}-p{p:06d}")


def generate(n: int, seed: int = 0) -> Iterator[Record]:
    """Yield ``n`` synthetic records; deterministic for ``(n, seed)`` and prefix-stable in ``n``.

    Record ``i`` equals :func:`record` ``(i, seed)``; label sets cycle through :data:`LABEL_CYCLE` so
    classes stay balanced. Example: ``[r.labels for r in generate(2, seed=1)]``.
    """
    for i in range(n):
        yield record(i, seed)
