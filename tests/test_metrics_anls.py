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


def test_rapidfuzz_matches_the_reference_on_random_strings():
    import random

    from metrics.anls import anls_rows_reference, levenshtein_reference

    rng = random.Random(0)
    alphabet = "abc AB\t-;"  # few letters: many near matches; case and whitespace exercise normalise
    def text():
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
    preds, golds = [text() for _ in range(3000)], [text() for _ in range(3000)]
    preds[:200] = golds[:200]  # identical pairs too
    for p, g in zip(preds[:500], golds[:500]):
        assert levenshtein(p, g) == levenshtein_reference(p, g)
        for limit in (0, 2, 5):
            assert (levenshtein(p, g, limit) > limit) == (levenshtein_reference(p, g, limit) > limit)
    got, want = anls_rows(preds, golds), anls_rows_reference(preds, golds)
    assert got.tolist() == pytest.approx(want.tolist(), abs=1e-12)
    assert 0 < (want == 0).mean() < 1 and 0 < (want == 1).mean() < 1  # the cases are mixed
    assert [anls_score(p, [g, "x"]) for p, g in zip(preds[:300], golds[:300])] == pytest.approx(
        [max(a, b) for a, b in zip(want[:300], anls_rows_reference(preds[:300], ["x"] * 300))])
