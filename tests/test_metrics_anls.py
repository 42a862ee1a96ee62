"""ANLS (tau 0.5) by hand."""

import pytest

from metrics.anls import anls_rows, anls_score, levenshtein


def test_levenshtein_by_hand():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3 and levenshtein("abc", "abc") == 0


def test_anls_by_hand():
    assert anls_score("Sinus  Bradycardia ", "sinus bradycardia") == 1.0  # case and whitespace normalised
    assert anls_score("abc", "abd") == pytest.approx(1 - 1 / 3)
    assert anls_score("SB", "ST") == 0.0  # distance 1/2 is not below tau
    assert anls_score("abcd", "abcx") == pytest.approx(0.75)
    assert anls_score("", "x") == 0.0 and anls_score("", "") == 1.0
    assert anls_score("abc", ["xyz", "abd"]) == pytest.approx(2 / 3)  # the best acceptable answer


def test_anls_rows_repeats_and_missing():
    got = anls_rows(["a", None, "abc", "a"], ["a", "b", "abd", "a"])
    assert got.tolist() == pytest.approx([1.0, 0.0, 2 / 3, 1.0])
