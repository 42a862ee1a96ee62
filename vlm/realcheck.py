"""How a model reads real ECGs: labelled real records drawn as pages (every preset), and pages other software drew,
predicted in-process and scored with the ECGBench protocol. The demo and ``benchmarks/sim2real.py`` share it.

A figure here names its data: ``"real <source>, <preset> pages (ecg.pages)"`` or ``"real <source>, drawn by
<program>"``; it is never a CODE-15 result.

Example::

    from vlm.realcheck import record_pages, score_pages
    pages = record_pages(records, "varied", seed=0)           # [(id, PNG bytes, labels), ...]
    score_pages("./demo-run/run/export", pages)["f1"]          # ECGBench-protocol F1 x100
"""

from __future__ import annotations

import pandas as pd

from ecgtasks import get_task


def record_pages(records, preset: str, *, seed: int = 0, task: str = "code15") -> list[tuple[str, bytes, tuple]]:
    """Each record drawn by ``ecg.pages`` in ``preset``: ``[(id, image bytes, labels in the task's space)]``."""
    from ecg.pages import page_bytes

    return [(f"{r.id}#{preset}", page_bytes(r, preset, seed=seed + k)[0], tuple(r.labels))
            for k, r in enumerate(records)]


PRESETS = ("clean", "varied", "photo")


def real_sets(found, *, pages_per_record: int = 1, shipped_limit: int | None = None) -> list[tuple[str, str, list]]:
    """The named real sets of ``found`` (an ``ecg.examples.RealExamples``): ``[(name, data, pages)]``.

    One set per page preset of the real recordings drawn by ``ecg.pages`` (``pages_per_record`` seeds each; a page
    that a seed does not change, as every ``clean`` page, is counted once), then the pages other software drew as their packages ship them (the first ``shipped_limit``). Empty sets are kept
    (``pages == []``) so a table can say what was not found.
    Example: ``[name for name, _, _ in real_sets(real_examples())]`` -> ``["real records, clean pages (ours)", ...]``.
    """
    sets = []
    for preset in PRESETS:
        drawn = [p for k in range(pages_per_record) for p in record_pages(found.records, preset, seed=1000 * k)]
        pages = list({(p[0], p[1]): p for p in drawn}.values())  # the same page twice would count one answer twice
        sets.append((f"real records, {preset} pages (ours)", f"{len(found.records)} real recordings, drawn by ecg.pages",
                     pages))
    sets.append(("pages other software drew", "pmecg's shipped pages of PTB-XL 1-5 (6 layouts)",
                 found.pages[:shipped_limit]))
    return sets


def sample_frame(pages: list[tuple[str, bytes, tuple]], task: str = "code15") -> pd.DataFrame:
    """Sample rows (``id``, ``task``, ``image``, ``question``, ``answer``) for labelled pages."""
    t = get_task(task)
    return pd.DataFrame({"id": [p[0] for p in pages], "task": t.name, "image": [p[1] for p in pages],
                         "question": t.question, "answer": [t.format_answer(p[2]) for p in pages]})


def predict_pages(predictor, pages, *, task: str = "code15", batch_size: int = 8) -> pd.DataFrame:
    """Prediction rows for labelled pages, ``batch_size`` at a time, with ``vlm.batch.predict_rows``."""
    from vlm.batch import predict_rows

    frame = sample_frame(pages, task)
    parts = [predict_rows(predictor, frame.iloc[i:i + batch_size].reset_index(drop=True))
             for i in range(0, len(frame), batch_size)]
    return pd.concat(parts, ignore_index=True) if parts else frame.assign(prediction="")


def score_pages(model, pages, *, task: str = "code15", batch_size: int = 8) -> dict:
    """The ECGBench-protocol result (``f1``, ``auc``, ``hamming_loss``, x100, ...) of ``model`` (a name, an export
    folder, or a ``vlm.Predictor``) on labelled pages, plus ``answers``: the most frequent predicted texts."""
    from metrics.score import score_frame
    from vlm.predict import Predictor

    predictor = model if isinstance(model, Predictor) else Predictor(model)
    out = predict_pages(predictor, pages, task=task, batch_size=batch_size)
    result = score_frame(task, out, protocol="ecgbench")
    result["answers"] = out["prediction"].value_counts().head(5).to_dict()
    return result


def counterfactual_pages(name: str, n: int, *, preset: str = "clean", seed: int = 0) -> tuple[list, list]:
    """``n`` counterfactual pairs of ``ecg.synth.COUNTERFACTUALS[name]`` drawn by :func:`record_pages` in ``preset``
    (both pages of a pair with the same page recipe): ``(before pages, after pages)``, each ``[(id, bytes, labels)]``."""
    from ecg.synth import counterfactual_pair

    pairs = [counterfactual_pair(name, i, seed) for i in range(n)]
    return tuple(record_pages([pair[k] for pair in pairs], preset, seed=seed * 100_003) for k in (0, 1))


def counterfactuals(model, *, n: int = 40, preset: str = "clean", seed: int = 0,
                    task: str = "code15") -> list[dict]:
    """What a model reads, on synthetic counterfactual pairs (``ecg.synth.COUNTERFACTUALS``): per pair kind, how
    often the finding is answered on the page before the change and on the page after it, and how often the answer
    changes at all. A model that reads the physiology answers the finding after and not before (and keeps its answer
    when the change defines no finding); a model that learned a shortcut (the rate for 1dAVb) does not.

    Example: ``counterfactuals("./demo-run/run/export", n=20)[0]`` ->
    ``{"change": "PR 160 -> 280 ms", "finding": "1dAVb", "before": 10.0, "after": 85.0, "changed": 80.0, ...}``.
    """
    import numpy as np

    from ecg.synth import COUNTERFACTUALS
    from metrics.parsing import ecgbench_labels
    from vlm.predict import Predictor

    predictor = model if isinstance(model, Predictor) else Predictor(model)
    t = get_task(task)
    rows = []
    for name, (_, _, _, _, finding) in COUNTERFACTUALS.items():
        before, after = counterfactual_pages(name, n, preset=preset, seed=seed)
        # each answer as the benchmark reads it (metrics.parsing.ecgbench_labels): a set of the task's labels
        answers = [[frozenset(np.asarray(t.labels)[row]) for row in
                    ecgbench_labels(t, predict_pages(predictor, pages, task=task)["prediction"])]
                   for pages in (before, after)]
        pct = lambda k: round(100.0 * k / n, 1)  # noqa: E731
        rows.append({"change": name, "finding": finding, "n": n, "preset": preset,
                     "before": None if finding is None else pct(sum(finding in a for a in answers[0])),
                     "after": None if finding is None else pct(sum(finding in a for a in answers[1])),
                     "changed": pct(sum(a != b for a, b in zip(*answers)))})
    return rows
