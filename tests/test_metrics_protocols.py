"""Both protocols by hand, the parsing traps of ECGBENCH.md, and the ecgbench protocol against scikit-learn."""

import json
import math
import random
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score, hamming_loss, roc_auc_score
from sklearn.preprocessing import MultiLabelBinarizer

from metrics import parsing, score_frame
from ecgtasks import get_task

CODE15 = get_task("code15")


def frame(gold, pred, **extra):
    return pd.DataFrame({"id": [f"r{i}" for i in range(len(gold))], "answer": gold, "prediction": pred, **extra})


def labels_of(matrix_row, task=CODE15):
    return {label for label, hit in zip(task.labels, matrix_row) if hit}


# ---- hand-computed -----------------------------------------------------------------------------------------
def test_multilabel_by_hand_both_protocols():
    r = score_frame("code15", frame(["SB", "NORM", "SB; ST", "AF"],
                                    ["SB", "ST", "Answer: SB, sinus tachycardia", "AFib"]))
    # ecgbench: classes AF, NORM, SB, ST; F1 1, 0, 1, 0; AUC 1, .5, 1, 1/3; 3 wrong cells of 16
    assert r["ecgbench"]["classes"] == ["AF", "NORM", "SB", "ST"]
    assert (r["f1"], r["auc"], r["hamming_loss"]) == (50.0, 70.8, 18.8)
    assert r["ecgbench"]["raw"]["auc"] == pytest.approx((1 + 0.5 + 1 + 1 / 3) / 4)
    s = r["strict"]  # "sinus tachycardia" is ST: SB 2/2, ST tp1 fp1, AF 1/1, NORM missed
    assert s["f1_macro"] == pytest.approx(100 * (1 + 2 / 3 + 1 + 0) / 4, abs=0.01)
    assert s["f1_micro"] == 80.0 and s["hamming_loss"] == 6.25 and s["exact_match"] == 75.0
    st_row = next(c for c in s["per_class"] if c["label"] == "ST")
    assert (st_row["precision"], st_row["recall"], st_row["support"], st_row["predicted"]) == (50.0, 100.0, 1, 2)
    assert set(s["auc_undefined"]) == {"1dAVb", "RBBB", "LBBB", "ABNORMAL"}
    assert r["n"] == 4 and r["errors"] == 0


def test_auc_nan_in_ecgbench_never_in_strict():
    r = score_frame("code15", frame(["SB", "SB; AF", "SB"], ["SB", "SB", "AF"]))
    assert r["auc"] is None  # SB has one gold value: the reference's mean is NaN
    assert r["ecgbench"]["per_class"]["SB"]["auc"] is None and r["ecgbench"]["notes"]
    assert r["strict"]["auc"] == 25.0 and "SB" in r["strict"]["auc_undefined"]  # AF: TPR 0, TNR .5
    json.dumps(r, allow_nan=False)  # no NaN leaks into the JSON


def test_strict_auc_from_label_scores():
    scores = [{"AF": 0.9, "SB": 0.1}, {"AF": 0.2}, {"AF": 0.6}, None]  # the last row gives no scores: 0
    r = score_frame("code15", frame(["AF", "SB", "AF", "SB"], ["AF", "SB", "SB", "SB"],
                                    label_scores=[json.dumps(s) if s else None for s in scores]))
    af = next(c for c in r["strict"]["per_class"] if c["label"] == "AF")
    assert af["auc"] == 100.0  # positives 0.9, 0.6 above negatives 0.2, 0.0 ...
    assert r["ecgbench"]["per_class"]["AF"]["auc"] == 75.0  # ... while 0/1 predictions give (.5 + 1) / 2
    assert r["strict"]["auc_source"] == "label_scores" and "AF" in r["strict"]["roc"]


def test_error_rows_are_wrong_and_reported():
    r = score_frame("code15", frame(["SB", "AF"], ["SB", "AF"], error=[None, "corrupt image"]))
    assert r["errors"] == 1 and r["n"] == 2 and any("error" in w for w in r["warnings"])
    assert r["ecgbench"]["per_class"]["AF"]["f1"] == 0.0  # its text is ignored: an empty answer


def test_choice_by_hand():
    gold, pred = ["A", "B. Sinus rhythm", "C", "D"], ["A", "xyz", "The answer is C", "D. yes"]
    r = score_frame("csn", frame(gold, pred))
    rng = random.Random(42)  # the reference draws for the 2 unparsable answers, in row order
    lucky = (rng.choice("ABCDEFGH") == "B") + (rng.choice("ABCDEFGH") == "C")
    assert r["ecgbench"]["random_letters"] == 2
    assert r["accuracy"] == round((2 + lucky) / 4 * 100, 1)
    assert r["strict"]["accuracy"] == 75.0 and r["strict"]["unparsed"] == 1  # never guessed


def test_mmmu_compares_the_whole_gold_and_options_a_to_d():
    r = score_frame("mmmu", frame(["A", "B"], ["A", "E"]))
    assert r["ecgbench"]["random_letters"] == 0 and r["accuracy"] == 50.0
    assert r["strict"]["out_of_range"] == 1 and r["strict"]["accuracy"] == 50.0


def test_setmatch_by_hand():
    q = "<image>\nWhich? Options: no, yes, none. Only answer based on the given Options without any explanation."
    r = score_frame("ecgqa", frame(["yes", "no", "no"], ["Yes.", "normal", "No"], question=[q] * 3))
    # ecgbench (lower-cased substrings): "yes." -> {yes}; "normal" contains "no" -> {no}; "No" -> {no}: all pass
    assert r["accuracy"] == 100.0
    assert r["strict"]["accuracy"] == pytest.approx(66.67, abs=0.01)  # "normal" names no option


def test_freetext_has_anls_only():
    r = score_frame("ptbxl-report", frame(["sinus rhythm. normal ecg."], ["Sinus rhythm, normal ECG"]))
    assert r["anls"] > 80 and "f1" not in r and "accuracy" not in r
    assert r["ecgbench"]["notes"]


# ---- the parsing traps of ECGBENCH.md ----------------------------------------------------------------------
TRAPS = [  # text, labels by the published rules, labels by strict
    ("ST segment normal", {"ST"}, {"NORM"}),
    ("AFib", {"AF"}, {"AF"}),
    ("atrial flutter (AFL)", {"AF"}, set()),
    ("sinus tachycardia", set(), {"ST"}),
    ("sb; af", set(), {"SB", "AF"}),
    ("1st degree AV block", set(), {"1dAVb"}),
    ("first-degree AV block; right bundle branch block", set(), {"1dAVb", "RBBB"}),
    ("ABNORMAL", {"ABNORMAL"}, {"ABNORMAL"}),
    ("ST-T changes, STTC", {"ST"}, set()),
    ("I think AF. Answer: NORM", {"NORM"}, {"NORM"}),
    ("incomplete right bundle branch block", set(), set()),
]


@pytest.mark.parametrize("text,published,strict", TRAPS)
def test_parsing_traps_both_protocols(text, published, strict):
    assert labels_of(parsing.ecgbench_labels(CODE15, [text])[0]) == published
    assert labels_of(parsing.strict_labels(CODE15, [text])[0]) == strict


def test_gold_rules():
    gold = parsing.ecgbench_gold(CODE15, ["NORM", "ABNORMAL", "SB; ST", "AF"])
    assert [labels_of(g) for g in gold] == [{"NORM"}, {"ABNORMAL"}, {"SB", "ST"}, {"AF"}]
    assert list(parsing.ecgbench_gold_letter(get_task("csn"), ["B. Sinus", "C"])) == ["B", "C"]


@pytest.mark.parametrize("text,reference,strict", [
    ("B", "B", "B"), ("b", None, "B"), ("C. Sinus rhythm", "C", "C"), ("The correct option is D", "D", "D"),
    ("Answer: (E)", "E", "E"), ("BBB", None, None), ("I think a", None, None), ("see A.", "A", None),
])
def test_choice_letter_traps(text, reference, strict):
    assert parsing.reference_letter(text) == reference
    assert parsing.strict_letter(text) == strict


# ---- property: the ecgbench protocol is scikit-learn on the binarised labels --------------------------------
ANSWERS = st.one_of(st.just("NORM"), st.just("ABNORMAL"),
                    st.lists(st.sampled_from(CODE15.labels[:6]), min_size=0, max_size=3, unique=True)
                    .map("; ".join))
NOISE = st.sampled_from(["", "Answer: ", "The ECG shows ", "ST segment ", "abnormal "])


def reference_gold(value):
    return [value] if value in ("NORM", "ABNORMAL") else [x for x in CODE15.labels[:6] if x in value]


def reference_pred(text):
    text = text.split("Answer:")[-1]
    head = ["NORM"] if "NORM" in text and "ABNORMAL" not in text else ["ABNORMAL"] if "ABNORMAL" in text else []
    return head + [x for x in CODE15.labels[:6] if x in text]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(ANSWERS, NOISE, ANSWERS), min_size=1, max_size=30))
def test_ecgbench_equals_sklearn(rows):
    gold = [g for g, _, _ in rows]
    pred = [n + p for _, n, p in rows]
    mlb = MultiLabelBinarizer()
    y = mlb.fit_transform([reference_gold(g) for g in gold])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MultiLabelBinarizer warns about labels never seen in gold: dropped
        p = mlb.transform([reference_pred(t) for t in pred])
    raw = score_frame("code15", frame(gold, pred), protocol="ecgbench")["ecgbench"].get("raw", {})
    if y.shape[1] == 0:
        return
    assert raw["f1"] == pytest.approx(np.mean(f1_score(y, p, average=None, zero_division=0)), abs=1e-12)
    assert raw["hamming_loss"] == pytest.approx(hamming_loss(y, p), abs=1e-12)
    aucs = []
    for i in range(y.shape[1]):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # one gold value: sklearn warns, then the reference's NaN
                aucs.append(roc_auc_score(y[:, i], p[:, i]))
        except ValueError:
            aucs.append(math.nan)
    if math.isnan(np.mean(aucs)):
        assert raw["auc"] is None
    else:
        assert raw["auc"] == pytest.approx(np.mean(aucs), abs=1e-12)

