"""The task registry: every ECGBench config resolves, every entry carries what scoring needs."""

import pytest

from ecgtasks import CHOICE, CODE15, CODE15_QUESTION, FREETEXT, MULTILABEL, SETMATCH, all_tasks, get_task

ALIASES = {"code15-test": "code15", "ptb-test": "ptbxl-super", "cpsc-test": "cpsc", "csn-test-no-cot": "csn",
           "g12-test-no-cot": "g12", "mmmu-ecg": "mmmu", "ecgqa-test": "ecgqa", "ptb-test-report": "ptbxl-report"}


@pytest.mark.parametrize("alias,name", sorted(ALIASES.items()))
def test_ecgbench_config_names_are_aliases(alias, name):
    assert get_task(alias) is get_task(name)


def test_kinds_label_spaces_and_fields():
    kinds = {t.name: t.kind for t in all_tasks()}
    assert kinds == {"code15": MULTILABEL, "ptbxl-super": MULTILABEL, "cpsc": MULTILABEL, "csn": CHOICE,
                     "g12": CHOICE, "mmmu": CHOICE, "ecgqa": SETMATCH, "ptbxl-report": FREETEXT, "arena": FREETEXT,
                     "freetext": FREETEXT}
    assert get_task("ptbxl-super").labels == ("NORM", "MI", "STTC", "CD", "HYP")
    assert get_task("cpsc").labels == ("NORM", "AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC", "STD", "STE")
    assert get_task("csn").labels == tuple("ABCDEFGH") and get_task("mmmu").labels == tuple("ABCD")
    assert get_task("csn").gold_rule == "first_char" and get_task("mmmu").gold_rule == "whole"
    for t in all_tasks():
        assert t.version and t.max_new_tokens > 0 and "anls" in t.metrics
        assert all(label in t.labels for label, _ in t.synonyms)


def test_code15_seed_is_kept():
    assert CODE15.question == CODE15_QUESTION and CODE15.whole_answers == ("NORM", "ABNORMAL")
    assert CODE15.format_answer(["SB", "1dAVb"]) == "1dAVb; SB"
    assert CODE15.format_answer(["NORM"]) == "NORM"


def test_unknown_task_names_the_known_ones():
    with pytest.raises(KeyError, match="code15"):
        get_task("nope")
