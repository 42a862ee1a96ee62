"""ANLS over 10,000 free-text report pairs (PTB-XL-report style): ours (``metrics.anls.anls_rows``: rapidfuzz's
C++ edit distance, element-wise over the distinct pairs) against the Python dynamic programme it replaced
(``anls_rows_reference``), in the same run, on the same pairs.

    .venv/bin/python benchmarks/anls.py                  # 10,000 pairs
    .venv/bin/python benchmarks/anls.py --pairs 2000

Prints each one's seconds and pairs/s, the ratio, and the largest difference between their scores (0).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PHRASES = ("sinus rhythm", "sinus bradycardia", "sinus tachycardia", "atrial fibrillation", "left axis deviation",
           "first degree av block", "incomplete right bundle branch block", "left bundle branch block",
           "st segment depression in leads v4-v6", "t wave inversion in lead iii", "poor r wave progression",
           "left ventricular hypertrophy", "inferior myocardial infarction, age undetermined", "normal ecg",
           "premature ventricular contractions", "low qrs voltages in the frontal leads", "borderline ecg")


def report(rng: random.Random) -> str:
    return ". ".join(rng.sample(PHRASES, rng.randint(2, 6))) + "."


def pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Gold reports and predictions: a third copied with typos, a third partly right, a third unrelated."""
    rng = random.Random(seed)
    golds, preds = [report(rng) for _ in range(n)], []
    for g in golds:
        kind = rng.random()
        if kind < 1 / 3:
            chars = list(g)
            for _ in range(rng.randint(0, 6)):
                chars[rng.randrange(len(chars))] = rng.choice("abcdefghij ")
            preds.append("".join(chars))
        elif kind < 2 / 3:
            preds.append(g.split(". ")[0] + ". " + report(rng))
        else:
            preds.append(report(rng))
    return preds, golds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=10_000)
    args = p.parse_args(argv)
    from metrics.anls import anls_rows, anls_rows_reference

    preds, golds = pairs(args.pairs)
    mean_len = sum(map(len, golds)) / len(golds)
    t = time.perf_counter()
    ours = anls_rows(preds, golds)
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    base = anls_rows_reference(preds, golds)
    base_s = time.perf_counter() - t
    print(f"ANLS over {args.pairs:,} report pairs (gold {mean_len:.0f} chars on average), mean ANLS "
          f"{100 * ours.mean():.2f}")
    print(f"  ours (rapidfuzz)          {ours_s:8.3f} s  {args.pairs / ours_s:12,.0f} pairs/s")
    print(f"  baseline (Python DP)      {base_s:8.3f} s  {args.pairs / base_s:12,.0f} pairs/s")
    print(f"  speed-up {base_s / ours_s:.0f}x; largest score difference {abs(ours - base).max():.2e}")
    return 0 if abs(ours - base).max() < 1e-12 else 1


if __name__ == "__main__":
    sys.exit(main())
