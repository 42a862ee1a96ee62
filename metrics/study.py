"""The ``smolvlm-study`` protocol: the prior SmolVLM-256M study's own CODE-15 evaluator, reproduced so that its
27.5 / 65.3 / 16.5 / 68.7 (F1 / AUC / HL / "ANLS") can be recomputed from predictions and set beside the ECGBench
figures for the same predictions. Its rules (facts in ../shared/ECGBENCH.md, read against the study's code):

- Classes: a fixed eight, in its prompt's order and spelling: NORM, ABNORMAL, 1DAVB, RBBB, LBBB, SB, ST, AF;
  binarised over all eight, not over the classes seen in gold.
- Gold: every class whose name occurs in the upper-cased gold text (so a gold ``ABNORMAL`` is also NORM).
- Prediction: an empty answer (or "unknown" / "none") has no labels. Otherwise the upper-cased text loses every
  character but A-Z, 0-9 and commas and is split on commas; the classes equal to a part are predicted. If none is,
  the closest classes to the whole cleaned text by difflib (``get_close_matches``, n=3, cutoff 0.6) are.
  So "SB; 1dAVb" (our answers' separator) becomes "SB1DAVB" and predicts 1DAVB alone.
- F1: per-class binary F1 (0 where undefined), plain mean over the eight. AUC: per-class ROC AUC of the 0/1
  predictions, plain mean (undefined when a class has one gold value: the study's code stops there; null here).
  HL: Hamming loss over the eight. All x100, one decimal.
- "ANLS": difflib's SequenceMatcher ratio between the lower-cased printed label lists (``"['sb', 'st']"``), counted
  when at least 0.5 (else 0), averaged; a pair with an empty side is skipped, which never happens for printed lists.

Reproducing the study end to end (its prompt, its decoding, its scorer)::

    ecgvlm prepare  --source ecgbench --path ECGBench/code15-test --out data/code15
    ecgvlm evaluate --model MODEL --data data/code15 --out eval/study --decoding smolvlm-study
    ecgvlm score    --task code15 --predictions eval/study/predictions --protocol smolvlm-study

``--decoding smolvlm-study`` is the study's generation (``ecgtasks.registry.decoding_options``): beam search with
4 beams and 32 new tokens, one row at a time (``vlm.beam``), and each CODE-15 page asked the study's prompt
(``ecgtasks.registry.STUDY_QUESTION``: its eight classes in its order and spelling, answered comma-separated; the
wording is ours) instead of ECGBench's question. ``ecgvlm evaluate`` scores the same predictions by the three
protocols, so the study's figures and the ECGBench ones for one model stand side by side.

Example::

    study_labels("RBBB, SB")        # ['RBBB', 'SB']
    study_gold("ABNORMAL")          # ['NORM', 'ABNORMAL']
    score_frame("code15", frame, protocol="smolvlm-study")["smolvlm-study"]["f1"]
"""

from __future__ import annotations

import difflib
import re

import numpy as np

from metrics.rates import binary_auc, f1_from, pct1

NAME = "smolvlm-study"
LABELS = ("NORM", "ABNORMAL", "1DAVB", "RBBB", "LBBB", "SB", "ST", "AF")
TASKS = ("code15",)  # the study's evaluator scores CODE-15 only
ANLS_MIN = 0.5
_NOT_KEPT = re.compile(r"[^A-Z0-9,]")


def study_gold(text: str) -> list[str]:
    """Gold classes: each of the eight whose name is a substring of the upper-cased gold text, in class order."""
    upper = str(text or "").upper()
    return [label for label in LABELS if label in upper]


def study_labels(text: str) -> list[str]:
    """Predicted classes of a model answer by the study's rules (module docstring), in class order."""
    text = str(text or "")
    if text.strip().lower() in ("", "unknown", "none"):
        return []
    clean = _NOT_KEPT.sub("", text.upper())
    parts = clean.split(",")
    exact = [label for label in LABELS if label in parts]
    if exact:
        return exact
    close = difflib.get_close_matches(clean, LABELS, n=3, cutoff=0.6)
    return [label for label in LABELS if label in close]


def _printed(labels: list[str]) -> str:
    return str(list(labels)).strip().lower()  # the study compares Python's printed lists, lower-cased


def anls_pair(gold: list[str], predicted: list[str]) -> float | None:
    """The study's per-record "ANLS": SequenceMatcher ratio of the printed lists if >= 0.5, else 0; None: skipped."""
    t, p = _printed(gold), _printed(predicted)
    if not t or not p:
        return None
    ratio = difflib.SequenceMatcher(None, t, p).ratio()
    return ratio if ratio >= ANLS_MIN else 0.0


def batch_stats(task, gold, text) -> dict:
    """Mergeable counts of one batch: ``sv_counts`` (8, 4) tp, fp, fn, tn per class, ``sv_anls`` (sum, records).

    ``gold`` and ``text`` are ``(codes, distinct texts)`` as ``metrics.parsing.distinct`` gives them (errored rows
    already mapped to an empty text). Tasks other than CODE-15 get no counts.
    """
    if task.name not in TASKS:
        return {}
    (gc, gu), (tc, tu) = gold, text
    g_sets = [study_gold(g) for g in gu]
    p_sets = [study_labels(t) for t in tu]
    y = np.array([[lab in s for lab in LABELS] for s in g_sets], dtype=bool).reshape(len(gu), len(LABELS))[gc]
    p = np.array([[lab in s for lab in LABELS] for s in p_sets], dtype=bool).reshape(len(tu), len(LABELS))[tc]
    counts = np.stack([(y & p).sum(0), (~y & p).sum(0), (y & ~p).sum(0), (~y & ~p).sum(0)], 1)  # (8, 4)
    width = max(len(tu), 1)
    pairs, times = np.unique(gc.astype(np.int64) * width + tc, return_counts=True)  # once per distinct pair
    total = n = 0.0
    for pair, k in zip(pairs.tolist(), times.tolist()):
        s = anls_pair(g_sets[pair // width], p_sets[pair % width])
        if s is not None:
            total, n = total + s * k, n + k
    return {"sv_counts": counts.astype(np.int64), "sv_anls": np.array([total, n])}


def finalize(task, st: dict) -> dict:
    """The protocol's section of a result: F1 / AUC / HL / ANLS x100 (one decimal), per class, notes."""
    if task.name not in TASKS or "sv_counts" not in st:
        return {"notes": [f"the {NAME} protocol scores CODE-15 only (its evaluator's one task)"]}
    c = st["sv_counts"]  # (8, 4)
    f1, auc = f1_from(c), binary_auc(c)
    cells = c.sum()
    anls_sum, anls_n = st["sv_anls"]
    out = {"f1": pct1(float(f1.mean())), "auc": pct1(float(auc.mean())),
           "hamming_loss": pct1(float((c[:, 1] + c[:, 2]).sum() / cells)) if cells else None,
           "anls": round(anls_sum / anls_n * 100, 1) if anls_n else 0.0,
           "classes": list(LABELS),
           "per_class": {lab: {"f1": pct1(f), "auc": pct1(a), "support": int(k[0] + k[2])}
                         for lab, f, a, k in zip(LABELS, f1, auc, c)}}
    undefined = [lab for lab, a in zip(LABELS, auc) if np.isnan(a)]
    out["notes"] = ([f"class(es) {undefined} have one gold value: AUC undefined (the study's code raises there)"]
                    if undefined else [])
    return out
