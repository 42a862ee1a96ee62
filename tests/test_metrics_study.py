"""The ``smolvlm-study`` protocol (metrics/study.py) with values computed by hand from its rules."""

from __future__ import annotations

import pandas as pd
import pytest

from metrics import study
from metrics.reduce import batch_stats, merge
from metrics.report import protocol_rows, published_rows, rerun_of
from metrics.score import finalize, score_frame
from metrics.tasks import get_task


@pytest.mark.parametrize("text, labels", [
    ("RBBB, SB", ["RBBB", "SB"]),
    ("SB, RBBB", ["RBBB", "SB"]),                 # class order, not answer order
    ("1DAVB", ["1DAVB"]), ("1dAVb", ["1DAVB"]),   # upper-cased before matching: its prompt spells 1DAVB
    ("ST.", ["ST"]),                              # every character but A-Z, 0-9 and commas goes
    ("NORM,ABNORMAL", ["NORM", "ABNORMAL"]),
    ("AF, AF", ["AF"]),
    # no part is a class: the closest classes to the whole cleaned text, ratio >= 0.6.
    ("SB; 1dAVb", ["1DAVB"]),     # "SB1DAVB": 1DAVB 2*5/12 = 0.83; SB 2*2/9 = 0.44
    ("STT", ["ST"]),              # ST 2*2/5 = 0.8; SB 2*1/5 = 0.4
    ("SB; ST; AF", []),           # "SBSTAF": SB, ST, AF all 2*2/8 = 0.5 < 0.6
    ("atrial fibrillation", []),
    ("", []), ("  ", []), ("None", []), ("unknown", []),
])
def test_study_labels(text, labels):
    assert study.study_labels(text) == labels


def test_study_gold_is_a_case_insensitive_substring_search():
    assert study.study_gold("ABNORMAL") == ["NORM", "ABNORMAL"]   # NORM is inside ABNORMAL
    assert study.study_gold("SB; 1dAVb") == ["1DAVB", "SB"]
    assert study.study_gold("first degree") == ["ST"]            # fiRST: the substring rule's own fault
    assert study.study_gold("") == []


GOLD = ["ABNORMAL", "1dAVb; RBBB; LBBB", "SB; ST; AF", "NORM", "SB"]
TEXT = ["ABNORMAL", "1DAVB, RBBB", "SB; ST; AF", "NORM", "SB"]


def frame() -> pd.DataFrame:
    return pd.DataFrame({"id": list("abcde"), "answer": GOLD, "prediction": TEXT,
                         "error": [None, None, None, None, "record e: decode failed"]})


def test_score_by_hand():
    r = score_frame("code15", frame(), protocol="smolvlm-study")
    assert "ecgbench" not in r and "strict" not in r and "f1" not in r
    sv = r["smolvlm-study"]
    # gold: a {NORM, ABNORMAL}, b {1DAVB, RBBB, LBBB}, c {SB, ST, AF}, d {NORM}, e {SB}
    # predicted: a {ABNORMAL}, b {1DAVB, RBBB}, c {} (see above), d {NORM}, e {} (an errored row is empty)
    # per class (tp, fp, fn, tn): NORM (1,0,1,3) F1 2/3 AUC (1/2+1)/2; ABNORMAL, 1DAVB, RBBB (1,0,0,4) F1 1 AUC 1;
    # LBBB, ST, AF (0,0,1,4) and SB (0,0,2,3): F1 0, AUC 1/2
    assert sv["per_class"]["NORM"] == {"f1": 66.7, "auc": 75.0, "support": 2}
    assert sv["per_class"]["SB"] == {"f1": 0.0, "auc": 50.0, "support": 2}
    assert sv["f1"] == 45.8            # (2/3 + 3) / 8 = 0.4583
    assert sv["auc"] == 71.9           # (0.75 + 3 + 4 x 0.5) / 8 = 0.71875
    assert sv["hamming_loss"] == 15.0  # 6 wrong cells (NORM, LBBB, ST, AF once, SB twice) of 5 x 8
    # "ANLS" over printed lists: a "['norm', 'abnormal']" vs "['abnormal']" 2*12/32 = 0.75; b 25 vs 17 characters,
    # 17 in common: 34/42 = 0.810; c "['sb', 'st', 'af']" vs "[]" 4/20 = 0.2 -> 0; d 1; e "['sb']" vs "[]" 4/8 = 0.5
    assert sv["anls"] == round((0.75 + 34 / 42 + 0 + 1 + 0.5) / 5 * 100, 1) == 61.2
    assert sv["classes"] == list(study.LABELS) and sv["notes"] == []


def test_undefined_auc_is_null_with_a_note_and_other_tasks_are_not_scored():
    r = score_frame("code15", frame().iloc[:1], protocol="smolvlm-study")["smolvlm-study"]
    assert r["auc"] is None and "have one gold value" in r["notes"][0]
    assert r["f1"] == 12.5  # a: NORM missed (F1 0), ABNORMAL right (F1 1), six classes never seen (F1 0): 1/8
    other = score_frame("ptbxl-super", pd.DataFrame({"id": ["x"], "answer": ["MI"], "prediction": ["MI"]}),
                        protocol="all")
    assert "CODE-15 only" in other["smolvlm-study"]["notes"][0] and other["f1"] == 100.0


def test_counts_merge_across_batches():
    task, f = get_task("code15"), frame()
    whole = finalize(task, batch_stats(task, f), protocol="smolvlm-study")
    parts = finalize(task, merge(batch_stats(task, f.iloc[:2]), batch_stats(task, f.iloc[2:])),
                     protocol="smolvlm-study")
    assert whole["smolvlm-study"] == parts["smolvlm-study"]


def test_report_sets_the_protocols_side_by_side():
    r = {"code15": score_frame("code15", frame(), protocol="all")}
    rows = {row[0]: row for row in protocol_rows(r)}
    assert set(rows) == {"ecgbench", "smolvlm-study", "strict (macro)"}
    assert rows["smolvlm-study"][1:5] == ["45.8", "71.9", "15.0", "61.2"]
    assert rows["ecgbench"][1] == str(r["code15"]["f1"])
    table = published_rows(r, model="tiny")
    assert table[-2][0] == "tiny, this run" and table[-1][0] == "tiny, this run (smolvlm-study protocol)"
    assert all("not rerun here" in row[-1] for row in table[:-2])
    # a run of a published model sits right below its published row, which is marked as rerun
    table = published_rows(r, model="openai:gpt-4o-2024-08-06")
    names = [row[0] for row in table]
    at = names.index("GPT-4o")
    assert names[at + 1] == "openai:gpt-4o-2024-08-06, this run" and "rerun below" in table[at][-1]
    assert rerun_of("openai:claude-3-5-sonnet-20241022") == "Claude 3.5 Sonnet" and rerun_of("tiny") is None


def test_earlier_runs_join_the_table_marked_as_earlier(tmp_path):
    import json

    from metrics.report import earlier_runs

    r = {"code15": score_frame("code15", frame(), protocol="all")}
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "run.json").write_text(json.dumps({"model": "openai:gpt-4o"}))
    (tmp_path / "gpt" / "metrics.json").write_text(json.dumps(r))
    earlier = earlier_runs(str(tmp_path / "gpt"))
    table = published_rows(r, model="tiny", earlier=earlier)
    names = [row[0] for row in table]
    at = names.index("GPT-4o")
    assert names[at + 1] == "openai:gpt-4o, earlier run" and f"run earlier: {tmp_path / 'gpt'}" in table[at + 1][-1]
    assert "published, rerun below" in table[at][-1] and names[-2] == "tiny, this run"
    with pytest.raises(FileNotFoundError, match="not an evaluate output folder"):
        earlier_runs(str(tmp_path / "missing"))
