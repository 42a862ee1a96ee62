"""Clinical ECG exports -> :class:`~ecg.record.Record` in mV, the format told by content, never by file name. No Ray.

Formats (the kind :func:`detect` returns):

- ``dicom``: DICOM 12-Lead / General ECG Waveform Storage (pydicom; the rhythm multiplex group, not median beats).
- ``muse``: GE MUSE XML (``<RestingECG>``; base64 little-endian int16 ``WaveFormData``, usually 8 stored leads).
- ``cardiosoft``: GE CardioSoft XML (``<CardiologyXML>``; ``StripData`` comma-separated samples).
- ``aecg``: HL7 v3 annotated ECG (``<AnnotatedECG xmlns="urn:hl7-org:v3">``; ``SLIST_PQ`` digits per lead).
- ``sierra``: Philips Sierra ECG XML (``<restingecgdata>``; XLI-compressed, decoded by ``sierraecg``).

Every XML is parsed with ``defusedxml`` (no entity expansion, no external references, nothing fetched). Where only
I, II and V1-V6 are stored, III, aVR, aVL and aVF are derived (Einthoven / Goldberger: III = II - I, aVR = -(I+II)/2,
aVL = I - II/2, aVF = II - I/2) and named in ``meta["derived_leads"]``; a tail equal in every lead (Sierra's
calibration pulse and padding) is cut (:func:`trim_tail`, ``meta["trimmed_tail"]`` samples). The device's interpretation statements
go into ``meta["statements"]`` and never into the model's input; ``meta["format"]`` and ``meta["device"]`` say
what wrote the file. A file that is none of these raises :class:`UnknownFormat`, a broken one
:class:`~ecg.readers.ECGReadError`; both name it.

Example::

    from ecg.clinical import read_clinical
    rec = read_clinical("exports/ecg_0001.xml")     # MUSE, CardioSoft, aECG or Sierra; or a .dcm
    rec.signal.shape, rec.meta["format"]           # (12, 5000), "muse"
    rec.meta["statements"]                          # ["Sinus rhythm", "ST elevation, ..."]
"""

from __future__ import annotations

import base64
import os
import tempfile

import numpy as np

from ecg import storage
from ecg.readers import ECGReadError, _check_finite, _stem
from ecg.record import STANDARD_LEADS, Record, canonical_lead

FORMATS = ("dicom", "muse", "cardiosoft", "aecg", "sierra")
_XML_ROOTS = {"RestingECG": "muse", "CardiologyXML": "cardiosoft", "AnnotatedECG": "aecg",
              "restingecgdata": "sierra"}
_RHYTHM_WORDS = ("RHYTHM", "")  # DICOM multiplex group labels of the continuous recording (not "MEDIAN BEAT")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _parse_xml(data: bytes, rid: str):
    import defusedxml.ElementTree as ET
    from defusedxml import DefusedXmlException

    try:
        return ET.fromstring(data)
    except (ET.ParseError, DefusedXmlException) as exc:
        raise ECGReadError(f"{rid}: not well-formed or unsafe XML: {type(exc).__name__}: {exc}") from exc


class UnknownFormat(ECGReadError):
    """Bytes that are no ECG export read here (a note, an invoice XML, ...): counted apart from broken exports."""


def _sniff(data: bytes, rid: str):
    """``(format, parsed XML root or None)``; the XML is parsed once, here, with defusedxml."""
    if data[128:132] == b"DICM":
        return "dicom", None
    if data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        root = _parse_xml(data, rid)
        if _local(root.tag) in _XML_ROOTS:
            return _XML_ROOTS[_local(root.tag)], root
        raise UnknownFormat(f"{rid}: XML root <{_local(root.tag)}> is none of MUSE <RestingECG>, CardioSoft "
                            "<CardiologyXML>, HL7 <AnnotatedECG> or Philips Sierra <restingecgdata>")
    raise UnknownFormat(f"{rid}: neither a DICOM waveform (no 'DICM' at byte 128) nor an XML export")


def detect(data: bytes, rid: str = "file") -> str:
    """The format of an export from its bytes: one of :data:`FORMATS`; :class:`UnknownFormat` (an
    :class:`ECGReadError`) otherwise, or an ECGReadError for XML that is malformed or unsafe.

    Example: ``detect(open("x.dcm", "rb").read()) == "dicom"``.
    """
    return _sniff(data, rid)[0]


def read_clinical(path: str) -> Record:
    """A clinical export at ``path`` (local or ``s3://``): see the module docstring.

    Example: ``read_clinical("waveform_ecg.dcm").meta["statements"]`` -> ``["RITMO SINUSALE", "ECG NORMALE"]``.
    """
    return read_clinical_bytes(storage.read_bytes(path), _stem(path), source=str(path))


def read_clinical_bytes(data: bytes, rid: str, *, source: str = "") -> Record:
    """The export in ``data`` as a Record with id ``rid``; every failure is an :class:`ECGReadError` naming ``rid``."""
    kind, root = _sniff(data, rid)
    try:
        if kind == "dicom":
            leads, fs, meta = _dicom(data)
        elif kind == "sierra":
            leads, fs, meta = _sierra(data, root)
        else:
            leads, fs, meta = {"muse": _muse, "cardiosoft": _cardiosoft, "aecg": _aecg}[kind](root)
        signal, names, derived = complete_leads(leads)
        signal, trimmed = trim_tail(signal)
    except ECGReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed export fails in many ways; each becomes a named error
        raise ECGReadError(f"{rid}: cannot read {kind} export: {type(exc).__name__}: {exc}") from exc
    _check_finite(signal, rid)
    meta = {"source": source or rid, "format": kind, "derived_leads": derived, "trimmed_tail": trimmed, **meta}
    return Record(signal=signal, fs=fs, leads=names, id=rid, meta=meta)


def complete_leads(leads: dict[str, np.ndarray]) -> tuple[np.ndarray, tuple[str, ...], list[str]]:
    """``{lead: samples in mV}`` -> ``(signal (12, n) mV, STANDARD_LEADS, derived names)``, deriving the four
    limb leads from I and II where absent; leads beyond the twelve are dropped, a missing one is an error.

    Example: ``complete_leads({"I": i, "II": ii, "V1": v1, ...})[2] == ["III", "aVR", "aVL", "aVF"]``.
    """
    leads = {canonical_lead(k): np.asarray(v, dtype=np.float64) for k, v in leads.items()}
    n = min(len(v) for v in leads.values())
    leads = {k: v[:n] for k, v in leads.items()}  # some devices store a lead one sample longer
    derived = []
    if "I" in leads and "II" in leads:
        i, ii = leads["I"], leads["II"]
        for name, value in (("III", ii - i), ("aVR", -(i + ii) / 2), ("aVL", i - ii / 2), ("aVF", ii - i / 2)):
            if name not in leads:
                leads[name] = value
                derived.append(name)
    missing = [name for name in STANDARD_LEADS if name not in leads]
    if missing:
        raise ValueError(f"leads {missing} missing (stored: {sorted(leads)})")
    return np.stack([leads[name] for name in STANDARD_LEADS]), STANDARD_LEADS, derived  # (12, n), mV


def trim_tail(signal: np.ndarray) -> tuple[np.ndarray, int]:
    """``signal`` without a tail where every lead holds the same value: the 1 mV calibration pulse and zero padding
    that Philips Sierra exports append after the recording (no real 12-lead ECG is equal in all leads).

    Returns ``(signal, samples removed)``. Example: SPxml's (12, 5500) Sierra strip -> ``((12, 5264), 236)``.
    """
    same = np.all(signal == signal[:1], axis=0)  # (samples,): every lead equal at this sample
    n = signal.shape[1]
    while n > 0 and same[n - 1]:
        n -= 1
    if n < signal.shape[1] // 2:
        return signal, 0  # mostly flat: leave it whole, the checks downstream name it
    return signal[:, :n], signal.shape[1] - n


# ---- DICOM ----------------------------------------------------------------------------------------------


def _dicom_lead(channel) -> str:
    """``"Lead I (Einthoven)"`` / ``"aVR, augmented voltage, right"`` / ``"Lead V1"`` -> ``"I"`` / ``"aVR"`` / ``"V1"``."""
    meaning = str(channel.ChannelSourceSequence[0].CodeMeaning)
    name = meaning.split(",")[0].split("(")[0].strip()
    return canonical_lead(name[5:] if name.lower().startswith("lead ") else name)


def _dicom(data: bytes):
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    groups = list(ds.WaveformSequence)
    labels = [str(g.get("MultiplexGroupLabel", "")).strip().upper() for g in groups]
    rhythm = [i for i, label in enumerate(labels) if label in _RHYTHM_WORDS or "RHYTHM" in label]
    index = rhythm[0] if rhythm else max(range(len(groups)), key=lambda i: groups[i].NumberOfWaveformSamples)
    group = groups[index]
    x = ds.waveform_array(index)  # (samples, channels), sensitivity and baseline applied by pydicom
    leads = {}
    for k, channel in enumerate(group.ChannelDefinitionSequence):
        unit = str(channel.ChannelSensitivityUnitsSequence[0].CodeValue)
        scale = {"uV": 1e-3, "mV": 1.0, "V": 1e3}.get(unit)
        if scale is None:
            raise ValueError(f"channel {k} sensitivity unit {unit!r} (expected uV, mV or V)")
        leads[_dicom_lead(channel)] = x[:, k] * scale
    statements = [str(a.UnformattedTextValue) for a in ds.get("WaveformAnnotationSequence", [])
                  if a.get("UnformattedTextValue")]
    measurements = {str(a.ConceptNameCodeSequence[0].CodeMeaning): float(a.NumericValue)
                    for a in ds.get("WaveformAnnotationSequence", [])
                    if a.get("ConceptNameCodeSequence") and a.get("NumericValue") is not None}
    device = " ".join(str(ds.get(k, "")) for k in ("Manufacturer", "ManufacturerModelName")).strip()
    return leads, float(group.SamplingFrequency), {"statements": statements, "measurements": measurements,
                                                    "device": device, "sop_class": str(ds.get("SOPClassUID", ""))}


# ---- XML exports ------------------------------------------------------------------------------------------


def _texts(root, *path: str) -> list[str]:
    """Stripped texts of the elements at ``path`` (local names, any namespace) under ``root``."""
    nodes = [root]
    for name in path:
        nodes = [c for n in nodes for c in n if _local(c.tag) == name]
    return [n.text.strip() for n in nodes if n.text and n.text.strip()]


def _muse(root):
    rhythm = [w for w in root.iter() if _local(w.tag) == "Waveform"
              and "".join(_texts(w, "WaveformType")).lower() == "rhythm"]
    if not rhythm:
        raise ValueError("no <Waveform> of type Rhythm")
    wave = rhythm[0]
    fs = float(_texts(wave, "SampleBase")[0]) * 10 ** float((_texts(wave, "SampleExponent") or ["0"])[0])
    leads = {}
    for lead in (c for c in wave if _local(c.tag) == "LeadData"):
        units = (_texts(lead, "LeadAmplitudeUnits") or ["MICROVOLTS"])[0].upper()
        scale = float(_texts(lead, "LeadAmplitudeUnitsPerBit")[0]) * {"MICROVOLTS": 1e-3, "MILLIVOLTS": 1.0}[units]
        raw = np.frombuffer(base64.b64decode("".join(_texts(lead, "WaveFormData"))), dtype="<i2")
        leads[_texts(lead, "LeadID")[0]] = raw.astype(np.float64) * scale  # mV
    statements = [t for s in root.iter() if _local(s.tag) == "Diagnosis" for t in _texts(s, "DiagnosisStatement",
                                                                                         "StmtText")]
    device = " ".join(_texts(root, "TestDemographics", "AcquisitionDevice") + _texts(root, "MuseInfo", "MuseVersion"))
    return leads, fs, {"statements": statements, "device": f"GE MUSE {device}".strip()}


def _cardiosoft(root):
    strips = [s for s in root.iter() if _local(s.tag) == "StripData"]
    if not strips:
        raise ValueError("no <StripData>")
    strip = strips[0]
    fs = float(_texts(strip, "SampleRate")[0])
    resolution = float(_texts(strip, "Resolution")[0])  # uV per LSB
    leads = {}
    for wave in (c for c in strip if _local(c.tag) == "WaveformData"):
        tokens = wave.text.replace(",", " ").split()
        try:  # integer LSB counts, as CardioSoft writes them: int() is ~10x numpy's text parsing here
            values = np.array(list(map(int, tokens)), dtype=np.float64)
        except ValueError:
            values = np.array(list(map(float, tokens)), dtype=np.float64)
        leads[wave.get("lead")] = values * resolution * 1e-3  # mV
    statements = _texts(root, "Interpretation", "Diagnosis", "DiagnosisText")
    device = " ".join(_texts(root, "ClinicalInfo", "DeviceInfo", "Desc")
                      + _texts(root, "ClinicalInfo", "DeviceInfo", "SoftwareVer"))
    return leads, fs, {"statements": [s for s in statements if s.strip("- ")], "device": f"GE {device}".strip()}


_AECG_UNITS = {"uV": 1e-3, "mV": 1.0, "V": 1e3}
_AECG_SECONDS = {"s": 1.0, "ms": 1e-3}


def _aecg(root):
    series = [s for c in root if _local(c.tag) == "component" for s in c if _local(s.tag) == "series"]
    if not series:
        raise ValueError("no <component><series> (the rhythm waveforms)")
    fs, leads = None, {}
    # series/component/sequenceSet/component/sequence: the rhythm itself, not series/derivation/derivedSeries
    # (median beats), which iter() would also reach
    sequences = [seq for comp in series[0] if _local(comp.tag) == "component"
                 for seq_set in comp if _local(seq_set.tag) == "sequenceSet"
                 for comp2 in seq_set if _local(comp2.tag) == "component"
                 for seq in comp2 if _local(seq.tag) == "sequence"]
    for seq in sequences:
        code = next(c for c in seq if _local(c.tag) == "code").get("code", "")
        value = next(c for c in seq if _local(c.tag) == "value")
        parts = {_local(c.tag): c for c in value}
        if code.startswith("TIME_"):
            step = parts["increment"]
            fs = 1.0 / (float(step.get("value")) * _AECG_SECONDS[step.get("unit", "s")])
        elif code.startswith("MDC_ECG_LEAD_"):
            origin, scale = parts["origin"], parts["scale"]
            digits = np.array(parts["digits"].text.split(), dtype=np.float64)
            # physical = origin + scale * digit, each in its own unit
            leads[code[len("MDC_ECG_LEAD_"):]] = (float(origin.get("value")) * _AECG_UNITS[origin.get("unit", "uV")]
                                                  + digits * float(scale.get("value"))
                                                  * _AECG_UNITS[scale.get("unit", "uV")])
    if fs is None:
        raise ValueError("no TIME_ABSOLUTE / TIME_RELATIVE sequence gives the sampling interval")
    statements = []
    for ann in root.iter():
        if _local(ann.tag) == "annotation":
            code = next((c.get("code", "") for c in ann if _local(c.tag) == "code"), "")
            text = next((c.text for c in ann if _local(c.tag) == "value" and c.text and c.text.strip()), None)
            if "INTERPRETATION" in code and text:
                statements.append(text.strip())
    return leads, fs, {"statements": statements, "device": "HL7 aECG"}


def _sierra(data: bytes, root):
    import sierraecg

    with tempfile.NamedTemporaryFile(suffix=".xml", delete=False) as f:  # sierraecg reads a file name
        f.write(data)
    try:
        ecg = sierraecg.read_file(f.name)
    finally:
        os.unlink(f.name)
    resolution = float((_texts(root, "dataacquisition", "signalcharacteristics", "signalresolution") or ["5"])[0])
    leads = {lead.label: lead.samples.astype(np.float64) * resolution * 1e-3 for lead in ecg.leads}  # uV/LSB -> mV
    statements = []
    for interp in (e for e in root.iter() if _local(e.tag) == "interpretation"):
        statements += _texts(interp, "severity")
        for st in (c for c in interp.iter() if _local(c.tag) == "statement"):
            left, right = _texts(st, "leftstatement"), _texts(st, "rightstatement")
            statements += [" ".join(left) + (f" ({right[0]})" if right else "")] if left else []
    return leads, float(ecg.leads[0].sampling_freq), {"statements": statements,
                                                      "device": f"Philips {ecg.doc_type} {ecg.doc_ver}"}
