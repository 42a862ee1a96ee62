"""Scoring: task registry, answer parsers (ecgbench and strict), metrics, reduction, report.

Example::

    from metrics import score_frame
    score_frame("code15", frame)        # frame: id, answer, prediction[, label_scores, error]
"""

from __future__ import annotations


def __getattr__(name):
    # lazy, so that `import metrics.anls` does not pull in pandas and every scorer
    if name in ("score_frame", "finalize"):
        from metrics import score

        return getattr(score, name)
    if name in ("batch_stats", "merge"):
        from metrics import reduce

        return getattr(reduce, name)
    raise AttributeError(f"module 'metrics' has no attribute {name!r}")


__all__ = ["score_frame", "finalize", "batch_stats", "merge"]
