"""Rates from counts: percentages as the reference prints them, F1 and AUC from confusion counts (tp, fp, fn, tn)
and from score histograms, ROC points for plotting. Shared by the ``ecgbench``/``strict`` protocols
(``metrics.score``) and the study's protocol (``metrics.study``), so neither imports the other.

Example::

    f1_from(np.array([[8, 2, 2, 88]]))      # array([0.8])
    pct1(0.8)                                # 80.0
"""

from __future__ import annotations

import math

import numpy as np


def pct1(x: float) -> float | None:
    """x100 with one decimal, as the reference prints (``round(x * 100, 1)``); NaN -> None."""
    return None if x is None or math.isnan(x) else round(float(x) * 100, 1)


def pct2(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x) * 100, 2)


def _div(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.full(np.broadcast(a, b).shape, np.nan), where=b > 0)


def hist_auc(neg: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """ROC AUC from score histograms (..., bins) of negatives and positives; ties count one half; NaN if
    either side is empty. With two bins (0/1 predictions) it is (sensitivity + specificity) / 2."""
    below = np.cumsum(neg, -1) - neg
    num = (pos * (below + 0.5 * neg)).sum(-1)
    return _div(num, pos.sum(-1) * neg.sum(-1))


def roc_points(hist: np.ndarray, labels, points: int = 101) -> dict:
    """ROC curves per label from score histograms (L, 2, bins): ``{label: {"fpr": [...], "tpr": [...]}}``,
    thresholds every bins/(points-1) bins, for plotting. Labels with one gold value are left out."""
    out = {}
    step = max(1, (hist.shape[-1] - 1) // (points - 1))
    for label, (neg, pos) in zip(labels, hist):
        if neg.sum() == 0 or pos.sum() == 0:
            continue
        # rate of scores at or above each threshold, from the top bin down
        tpr = np.cumsum(pos[::-1])[::-1][::step] / pos.sum()
        fpr = np.cumsum(neg[::-1])[::-1][::step] / neg.sum()
        out[label] = {"fpr": np.round(np.append(fpr, 0.0), 4).tolist(), "tpr": np.round(np.append(tpr, 0.0), 4).tolist()}
    return out


def binary_auc(c: np.ndarray) -> np.ndarray:
    """AUC of 0/1 predictions from counts (..., 4) = tp, fp, fn, tn: (TPR + TNR) / 2; NaN if undefined."""
    tp, fp, fn, tn = np.moveaxis(c, -1, 0)
    return (_div(tp, tp + fn) + _div(tn, tn + fp)) / 2


def f1_from(c: np.ndarray) -> np.ndarray:
    """Per-class F1 from counts (..., 4): 2tp / (2tp + fp + fn), 0 where undefined (sklearn's default)."""
    tp, fp, fn, _ = np.moveaxis(c, -1, 0)
    return np.nan_to_num(_div(2 * tp, 2 * tp + fp + fn), nan=0.0)
