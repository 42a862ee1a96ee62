"""ANLS: Average Normalized Levenshtein Similarity (Biten et al., ICCV 2019), tau = 0.5.

Per record ``s = 1 - lev(p, g) / max(len(p), len(g))`` after lower-casing and collapsing whitespace;
``s`` counts only when the normalised distance is below tau, else 0; the max over acceptable gold answers;
the mean over records, x100 by the caller.

Example::

    anls_score("Sinus  bradycardia", "sinus bradycardia")   # 1.0
    anls_score("SB", "ST")                                  # 0.5 -> distance 0.5 is not below tau -> 0.0
"""

from __future__ import annotations

import numpy as np

TAU = 0.5


def normalise(text: str) -> str:
    """Lower-case, whitespace runs collapsed to one space, stripped."""
    return " ".join(str(text).lower().split())


def levenshtein(a: str, b: str, limit: int | None = None) -> int:
    """Edit distance (insert, delete, substitute: cost 1); stops early once every path exceeds ``limit``."""
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


def anls_score(prediction: str, gold, tau: float = TAU) -> float:
    """Similarity in [0, 1] of one prediction to one gold answer or a list of acceptable answers."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    p = normalise(prediction or "")
    best = 0.0
    for g in golds:
        g = normalise(g or "")
        longest = max(len(p), len(g))
        if longest == 0:
            return 1.0  # both empty: identical
        if abs(len(p) - len(g)) / longest >= tau:  # the distance is at least the length difference
            continue
        d = levenshtein(p, g, limit=int(tau * longest)) / longest
        if d < tau:
            best = max(best, 1.0 - d)
    return best


def anls_codes(p_codes: np.ndarray, p_texts: list[str], g_codes: np.ndarray, g_texts: list[str],
               tau: float = TAU) -> np.ndarray:
    """(n,) float64 per-row scores from factorised texts (``text[i] = p_texts[p_codes[i]]``), computed once
    per distinct (prediction, gold) pair: model answers repeat, and a million rows stay fast."""
    if len(p_codes) == 0:
        return np.zeros(0)
    pair = p_codes.astype(np.int64) * max(len(g_texts), 1) + g_codes
    pairs, inverse = np.unique(pair, return_inverse=True)
    width = max(len(g_texts), 1)
    scores = np.array([anls_score(p_texts[k // width], g_texts[k % width], tau) for k in pairs.tolist()])
    return scores[inverse.reshape(-1)]


def anls_rows(predictions, golds, tau: float = TAU) -> np.ndarray:
    """(n,) float64 per-row scores of predictions against gold answers (None counts as "")."""
    from metrics.parsing import distinct

    return anls_codes(*distinct(predictions), *distinct(golds), tau=tau)
