"""ecg.clinical on real exports that public packages ship (tests/real_ecgs.py), an HL7 aECG written after the
standard's published example from a real recording, and bad files: each named, none fatal to a folder."""

from __future__ import annotations

import numpy as np
import pytest

from ecg import clinical
from ecg.readers import ECGReadError

MORTARA = "pydicom-3.0.2/waveform_ecg.dcm"
MUSE = "ecg2dcm-1.3.1/guangxi_teaching_sinus_rhythm.xml"
MUSE_DICOM = "ecg2dcm-1.3.1/guangxi_teaching_sinus_rhythm.dcm"
CARDIOSOFT = "ecgprocess-1.2.0/example-XML1.xml"
GE_DICOM_AF = "ecgprocess-1.2.0/example-DICOM2.dcm"
GE_DICOM = "ecgprocess-1.2.0/example-DICOM1.dcm"
SIERRA = "SPxml-1.1/129DYPRG.XML"

# (file, format, fs Hz, samples, derived leads, first statements)
REAL = [
    (MORTARA, "dicom", 1000.0, 10000, [], ["RITMO SINUSALE", "ECG NORMALE"]),
    (GE_DICOM_AF, "dicom", 500.0, 5000, [], ["ATRIAL FIBRILLATION", "Q WAVES IN INFERIOR LEADS"]),
    (GE_DICOM, "dicom", 500.0, 5000, [], []),
    (MUSE_DICOM, "dicom", 500.0, 5000, [], []),
    (MUSE, "muse", 500.0, 5000, ["III", "aVR", "aVL", "aVF"], ["窦性心律", "ST段抬高（提示心室早期复极）"]),
    (CARDIOSOFT, "cardiosoft", 500.0, 5000, [], ["Sinus bradycardia", "Otherwise normal ECG"]),
    (SIERRA, "sierra", 500.0, 5264, [], ["- ABNORMAL ECG -", "Sinus bradycardia (rate< 50)"]),  # gap, 1 mV pulse, padding cut
]


@pytest.mark.parametrize("name, kind, fs, n, derived, statements", REAL)
def test_real_exports(real_ecgs, name, kind, fs, n, derived, statements):
    rec = clinical.read_clinical(str(real_ecgs / name))
    assert rec.meta["format"] == kind and rec.fs == fs and rec.signal.shape == (12, n)
    assert rec.leads[:3] == ("I", "II", "III") and rec.meta["derived_leads"] == derived
    assert rec.meta["statements"][:len(statements)] == statements
    # a real QRS: lead II peaks between 0.3 and 5 mV (units right: not V, not µV)
    peak = np.percentile(np.abs(rec.signal[1] - np.median(rec.signal[1])), 99.5)
    assert 0.2 < peak < 5.0, (name, peak)
    # Einthoven's law holds on every export: III = II - I (stored or derived), to the devices' 5 µV steps
    assert np.abs(rec.signal[2] - (rec.signal[1] - rec.signal[0])).max() < 0.02


def test_muse_xml_equals_the_dicom_made_of_it(real_ecgs):
    """ecg2dcm converted its MUSE XML to DICOM: the two read the same (derived limb leads within 2.5 µV)."""
    xml = clinical.read_clinical(str(real_ecgs / MUSE))
    dcm = clinical.read_clinical(str(real_ecgs / MUSE_DICOM))
    np.testing.assert_allclose(xml.signal, dcm.signal, atol=0.0025)


def aecg_xml(signal_uv: np.ndarray, fs: float, statements=()) -> bytes:
    """An HL7 v3 annotated ECG in the shape of the standard's published example (a rhythm series, a time sequence
    and one SLIST_PQ sequence per lead, a derived representative beat, interpretation annotations), holding
    ``signal_uv`` (leads, samples) µV."""
    codes = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    leads = "".join(
        f'<component><sequence><code code="MDC_ECG_LEAD_{c}" codeSystem="2.16.840.1.113883.6.24"/>'
        f'<value xsi:type="SLIST_PQ"><origin value="0" unit="uV"/><scale value="2.5" unit="uV"/>'
        f'<digits>{" ".join(str(int(round(v / 2.5))) for v in row)}</digits></value></sequence></component>'
        for c, row in zip(codes, signal_uv))
    notes = "".join(
        f'<component><annotation><code code="MDC_ECG_INTERPRETATION_STATEMENT" codeSystem=""/>'
        f'<value xsi:type="ST">{s}</value></annotation></component>' for s in statements)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<AnnotatedECG xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        '<id root="61d1a24f-b47e-41aa-ae95-f8ac302f4eeb"/><code code="93000" codeSystem="2.16.840.1.113883.6.12"/>'
        '<effectiveTime><low value="20021122091000"/><high value="20021122091010"/></effectiveTime>'
        '<component><series><id root="20021122091000"/><code code="RHYTHM" codeSystem="2.16.840.1.113883.5.4"/>'
        '<effectiveTime><low value="20021122091000"/><high value="20021122091010"/></effectiveTime>'
        '<component><sequenceSet><component><sequence><code code="TIME_ABSOLUTE" codeSystem="2.16.840.1.113883.5.4"/>'
        f'<value xsi:type="GLIST_TS"><head value="20021122091000.000"/><increment value="{1 / fs:g}" unit="s"/>'
        f'</value></sequence></component>{leads}</sequenceSet></component>'
        '<derivation><derivedSeries><code code="REPRESENTATIVE_BEAT" codeSystem="2.16.840.1.113883.5.4"/>'
        '<component><sequenceSet><component><sequence><code code="TIME_RELATIVE" codeSystem="2.16.840.1.113883.5.4"/>'
        '<value xsi:type="GLIST_PQ"><head value="0" unit="s"/><increment value="0.004" unit="s"/></value></sequence>'
        '</component><component><sequence><code code="MDC_ECG_LEAD_I" codeSystem="2.16.840.1.113883.6.24"/>'
        '<value xsi:type="SLIST_PQ"><origin value="0" unit="uV"/><scale value="5" unit="uV"/><digits>1 2 3</digits>'
        '</value></sequence></component></sequenceSet></component></derivedSeries></derivation>'
        '<subjectOf><annotationSet><activityTime value="20021122091010"/>'
        f'<component><annotation><code code="MDC_ECG_INTERPRETATION" codeSystem=""/>{notes}</annotation></component>'
        '</annotationSet></subjectOf></series></component></AnnotatedECG>').encode()


def test_aecg_holds_the_recording_it_was_written_from(real_ecgs, tmp_path):
    mortara = clinical.read_clinical(str(real_ecgs / MORTARA))
    path = tmp_path / "subject1.xml"
    path.write_bytes(aecg_xml(mortara.signal[:, ::2] * 1000, 500.0, ["Sinus rhythm", "Normal ECG"]))
    rec = clinical.read_clinical(str(path))
    assert rec.meta["format"] == "aecg" and rec.fs == 500.0 and rec.signal.shape == (12, 5000)
    assert rec.meta["statements"] == ["Sinus rhythm", "Normal ECG"]
    np.testing.assert_allclose(rec.signal, mortara.signal[:, ::2], atol=0.00126)  # 2.5 µV steps


def _bad_files(real_ecgs):
    dicom = (real_ecgs / MORTARA).read_bytes()
    sierra = (real_ecgs / SIERRA).read_bytes()
    return {
        "truncated.dcm": dicom[: len(dicom) // 4],
        "notes.txt": b"patient called back on Tuesday\n",
        "other.xml": b"<?xml version='1.0'?><Invoice><Total>3</Total></Invoice>",
        "bomb.xml": (b'<?xml version="1.0"?><!DOCTYPE RestingECG [<!ENTITY a "aaaaaaaaaa">'
                     b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><RestingECG>&b;</RestingECG>'),
        "empty_muse.xml": b"<RestingECG><MuseInfo/></RestingECG>",
        "broken_sierra.xml": sierra.replace(b"<parsedwaveforms", b"<parsedwaveformz").replace(
            b"</parsedwaveforms>", b"</parsedwaveformz>"),
    }


@pytest.mark.parametrize("name, message", [
    ("truncated.dcm", "cannot read dicom export"),
    ("notes.txt", "neither a DICOM waveform"),
    ("other.xml", "XML root <Invoice> is none of"),
    ("bomb.xml", "not well-formed or unsafe XML: EntitiesForbidden"),
    ("empty_muse.xml", "no <Waveform> of type Rhythm"),
    ("broken_sierra.xml", "cannot read sierra export"),
])
def test_bad_files_are_named(real_ecgs, name, message):
    data = _bad_files(real_ecgs)[name]
    stem = name.rsplit(".", 1)[0]
    with pytest.raises(ECGReadError, match=f"^{stem}: .*{message}"):
        clinical.read_clinical_bytes(data, stem)


def test_complete_leads_derives_the_limb_leads():
    rng = np.random.default_rng(0)
    i, ii = rng.normal(size=100), rng.normal(size=100)
    stored = {"I": i, "II": ii, **{f"V{k}": rng.normal(size=100) for k in range(1, 7)}}
    signal, leads, derived = clinical.complete_leads(stored)
    assert derived == ["III", "aVR", "aVL", "aVF"] and signal.shape == (12, 100)
    np.testing.assert_allclose(signal[3] + signal[4] + signal[5], 0, atol=1e-12)  # aVR + aVL + aVF = 0
    with pytest.raises(ValueError, match=r"leads \['V6'\] missing"):
        clinical.complete_leads({k: v for k, v in stored.items() if k != "V6"})


def test_examples_find_every_labelled_file_the_fetch_brings(real_ecgs):
    """ecg.examples (ecg/data/real_ecgs.csv) and tests/real_ecgs.py agree on the cache's layout: nothing missing."""
    from ecg.examples import real_examples

    found = real_examples(str(real_ecgs))
    assert not found.failed and len(found.records) == 27 and len(found.pages) == 30
    assert {r.id: r.labels for r in found.records}[GE_DICOM_AF] == ("AF",)
