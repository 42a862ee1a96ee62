"""ANLS: Average Normalized Levenshtein Similarity (Biten et al., ICCV 2019), tau = 0.5.

Per record ``s = 1 - lev(p, g) / max(len(p), len(g))`` after lower-casing and collapsing whitespace;
``s`` counts only when the normalised distance is below tau, else 0; the max over acceptable gold answers;
the mean over records, x100 by the caller. Edit distances come from ``rapidfuzz`` (C++, bit-parallel, with a
cutoff); ``levenshtein_reference`` is the textbook dynamic programme it is tested and benchmarked against.

Example::

    anls_score("Sinus  bradycardia", "sinus bradycardia")   # 1.0
    anls_score("SB", "ST")                                  # 0.5 -> distance 0.5 is not below tau -> 0.0
"""

from __future__ import annotations

import numpy as np
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cpdist

TAU = 0.5


def normalise(text: str) -> str:
    """Lower-case, whitespace runs collapsed to one space, stripped."""
    return " ".join(str(text).lower().split())


def levenshtein(a: str, b: str, limit: int | None = None) -> int:
    """Edit distance (insert, delete, substitute: cost 1); past ``limit``, any value above it (``limit + 1``)."""
    return Levenshtein.distance(a, b, score_cutoff=limit)


def levenshtein_reference(a: str, b: str, limit: int | None = None) -> int:
    """The same distance by the textbook dynamic programme, in Python (stops once every path exceeds ``limit``)."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        if limit is not None and min(cur) > limit:
            return min(cur)  # a lower bound already past the limit: the caller only needs "too far"
        prev = cur
    return prev[-1]


def _similarity(p: str, g: str, tau: float, distance) -> float:
    longest = max(len(p), len(g))
    if longest == 0:
        return 1.0  # both empty: identical
    if abs(len(p) - len(g)) / longest >= tau:  # the distance is at least the length difference
        return 0.0
    d = distance(p, g, int(tau * longest)) / longest
    return 1.0 - d if d < tau else 0.0


def anls_score(prediction: str, gold, tau: float = TAU, *, distance=levenshtein) -> float:
    """Similarity in [0, 1] of one prediction to one gold answer or a list of acceptable answers."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    p = normalise(prediction or "")
    return max((_similarity(p, normalise(g or ""), tau, distance) for g in golds), default=0.0)


def anls_codes(p_codes: np.ndarray, p_texts: list[str], g_codes: np.ndarray, g_texts: list[str],
               tau: float = TAU) -> np.ndarray:
    """(n,) float64 per-row scores from factorised texts (``text[i] = p_texts[p_codes[i]]``), computed once
    per distinct (prediction, gold) pair: model answers repeat, and a million rows stay fast."""
    if len(p_codes) == 0:
        return np.zeros(0)
    width = max(len(g_texts), 1)
    pairs, inverse = np.unique(p_codes.astype(np.int64) * width + g_codes, return_inverse=True)
    p_norm, g_norm = [normalise(t) for t in p_texts], [normalise(t) for t in g_texts]
    ps, gs = [p_norm[k // width] for k in pairs.tolist()], [g_norm[k % width] for k in pairs.tolist()]
    longest = np.array([max(len(p), len(g)) for p, g in zip(ps, gs)], dtype=np.float64)  # (u,)
    dist = cpdist(ps, gs, scorer=Levenshtein.distance, dtype=np.int64).astype(np.float64)  # (u,) element-wise
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(longest > 0, dist / longest, 0.0)  # both empty: distance 0, similarity 1
    scores = np.where(d < tau, 1.0 - d, 0.0)
    return scores[inverse.reshape(-1)]


def anls_rows(predictions, golds, tau: float = TAU) -> np.ndarray:
    """(n,) float64 per-row scores of predictions against gold answers (None counts as "")."""
    from metrics.parsing import distinct

    return anls_codes(*distinct(predictions), *distinct(golds), tau=tau)


def anls_rows_reference(predictions, golds, tau: float = TAU) -> np.ndarray:
    """``anls_rows`` one pair at a time with ``levenshtein_reference``: the baseline of tests and benchmarks."""
    return np.array([anls_score(p if isinstance(p, str) else "", g if isinstance(g, str) else "", tau,
                                distance=levenshtein_reference) for p, g in zip(predictions, golds)])
