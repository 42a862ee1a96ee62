"""Bootstrap intervals contain their point estimates, or are reported as undefined (None)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from metrics.score import score_frame

LABELS = ("1dAVb", "RBBB", "LBBB", "SB", "ST", "AF")


ANSWERS = ("SB", "ST", "AF", "SB; AF", "ST; AF")


def _frame(rng: np.random.Generator, n: int, scores: bool) -> pd.DataFrame:
    """``n`` rows of random gold and predicted answers (a mediocre model), with close label scores or none."""
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(n)],
                          "answer": [ANSWERS[i] for i in rng.integers(0, len(ANSWERS), n)],
                          "prediction": [ANSWERS[i] for i in rng.integers(0, len(ANSWERS), n)]})
    if scores:
        # close scores: the interval's coarse per-bucket histogram ties them where the estimate's does not
        frame["label_scores"] = [{lab: float(rng.uniform(0.4, 0.6)) for lab in LABELS} for _ in range(n)]
    return frame


def test_intervals_contain_their_estimates_or_are_undefined():
    rng = np.random.default_rng(0)
    checked = undefined = 0
    for n in (3, 4, 6, 10, 40):
        for trial in range(30 if n < 6 else 4):
            result = score_frame("code15", _frame(rng, n, scores=n < 10 or trial % 2 == 0), protocol="strict")
            strict = result["strict"]
            for key, interval in strict["intervals"].items():
                point = strict.get(key)
                if interval is None or point is None:
                    undefined += interval is None
                    continue
                checked += 1
                assert interval[0] <= point <= interval[1], (n, trial, key, point, interval)
    assert checked > 50 and undefined > 0  # both cases happen: small samples give undefined intervals
