"""Answer parsers for both protocols, vectorised over pandas Series of text.

``ecgbench``: the published rules, byte for byte (case-sensitive substring search, the code15 ``Answer:``
and NORM/ABNORMAL rules, the reference's choice-letter extraction, ECG-QA candidates from ``Options:``).
``strict``: case-insensitive whole-token matching with the task's synonyms, and no guessing.

ECG-QA (set match) under each protocol, for a question "... Options: yes, no, None ..." and gold ``["none"]``:
``ecgbench`` looks for each candidate *as written* in the *lower-cased* answer, so "None" (capital N) is never
found and this record can never pass; "normal" counts as "no" (a substring). ``strict`` lower-cases both
sides, needs whole tokens ("normal" names no option), ignores empty candidates and compares the gold
lower-cased and stripped: "None." passes it.

A gold answer may be a list of texts (ECG-QA's ``conversations[1].value``): the ``answer`` column holds it as
JSON text (``gold_text``) and the scorer reads it back as the list (``gold_items``).

Texts are parsed once per distinct string (``pandas.factorize``): model outputs repeat a lot, and the
reduction over millions of rows relies on it.

Example::

    task = get_task("code15")
    ecgbench_labels(task, pd.Series(["ST segment normal"]))   # [[... ST=True ...]]   (the published trap)
    strict_labels(task, pd.Series(["ST segment normal"]))     # ST=False, NORM=True
"""

from __future__ import annotations

import ast
import json
import re
from functools import lru_cache

import numpy as np
import pandas as pd

from ecgtasks.gold import LETTERS8, gold_letter, gold_text, multilabel_gold_row, reference_letter  # noqa: F401
from ecgtasks.registry import Task

_QA_TAIL = "Only answer based on the given Options without any explanation."


def as_text(values) -> pd.Series:
    """A Series of str: None/NaN become "" (an empty answer), anything else ``str(value)``."""
    s = pd.Series(values, copy=False, dtype=object)
    return s.map(lambda v: v if isinstance(v, str) else ("" if v is None or v != v else str(v)))


def gold_column(values) -> pd.Series:
    """``values`` with every list-valued gold turned into its JSON text (``gold_text``); texts untouched."""
    s = pd.Series(values, copy=False)
    if pd.api.types.infer_dtype(s, skipna=True) in ("string", "empty"):
        return s
    return s.map(gold_text)


def json_items(text: str) -> list[str] | None:
    """The items of a gold stored as a JSON list of texts (``gold_text``), as given; None for any other text.
    A Python list literal (``str(list)``, as rows prepared before lists were kept as JSON hold) reads too.

    >>> json_items('["yes"]'), json_items("['not sure']"), json_items("yes")
    (['yes'], ['not sure'], None)
    """
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
    return value if isinstance(value, list) and all(isinstance(x, str) for x in value) else None


def gold_items(text: str) -> list[str]:
    """The gold set of a set-match answer: the items of a JSON list exactly as given (not stripped, not
    lower-cased: the reference compares ``set(gold)`` as is); a plain text (our own rows' form; ECGBench's
    golds are lists) is read as comma-separated items, each stripped.

    >>> gold_items('["sinus rhythm", "None"]'), gold_items("sinus rhythm, none")
    (['sinus rhythm', 'None'], ['sinus rhythm', 'none'])
    """
    items = json_items(text)
    return items if items is not None else [g.strip() for g in text.split(",")]


def gold_display(text: str) -> str:
    """The gold as an answer a model would write (for ANLS): a JSON list's items joined by ", "."""
    items = json_items(text)
    return text if items is None else ", ".join(items)


def distinct(texts) -> tuple[np.ndarray, list[str]]:
    """``(codes (n,), distinct texts)`` with ``texts[i] == distinct[codes[i]]``; None/NaN become ""."""
    # factorize Arrow-backed strings as they are: converting a million of them to objects costs seconds
    series = texts if isinstance(texts, pd.Series) else pd.Series(list(texts), dtype=object)
    codes, uniques = pd.factorize(series, sort=False)
    out = [u if isinstance(u, str) else str(u) for u in uniques.tolist()]
    if (codes < 0).any():
        codes = np.where(codes < 0, len(out), codes)
        out.append("")
    return codes, out


def _per_unique(texts, fn) -> np.ndarray:
    """Apply ``fn(list_of_distinct_texts) -> ndarray (u, ...)`` once per distinct text; rows in input order."""
    codes, uniques = distinct(texts)
    return fn(uniques)[codes]


# ---- ecgbench (reference rules) --------------------------------------------------------------------------
def _scan(texts: list[str], labels) -> np.ndarray:
    # (u, L) bool: case-sensitive substring search, as the reference's `label in text`
    return np.array([[label in t for label in labels] for t in texts], dtype=bool).reshape(len(texts), len(labels))


def ecgbench_gold(task: Task, gold) -> np.ndarray:
    """(n, L) bool gold matrix over ``task.labels``: substring scan; code15's exact NORM / ABNORMAL answers."""
    return _per_unique(gold, lambda texts: ecgbench_gold_u(task, texts))


def ecgbench_gold_u(task: Task, texts: list[str]) -> np.ndarray:
    """``ecgbench_gold`` over a list of distinct texts (``ecgtasks.gold.multilabel_gold_row``: the prepare
    stage's rule)."""
    rows = [multilabel_gold_row(task, t) for t in texts]
    return np.array(rows, dtype=bool).reshape(len(texts), len(task.labels))


def ecgbench_labels(task: Task, text) -> np.ndarray:
    """(n, L) bool predicted matrix over ``task.labels`` by the reference rules."""
    return _per_unique(text, lambda texts: ecgbench_labels_u(task, texts))


def ecgbench_labels_u(task: Task, texts: list[str]) -> np.ndarray:
    """``ecgbench_labels`` over a list of distinct texts."""
    labels = task.labels
    if not task.whole_answers:
        return _scan(texts, labels)
    scan = [i for i, label in enumerate(labels) if label not in task.whole_answers]
    norm, abnormal = labels.index("NORM"), labels.index("ABNORMAL")
    texts = [t.split("Answer:")[-1] for t in texts]  # code15: only the part after the last "Answer:" counts
    m = np.zeros((len(texts), len(labels)), dtype=bool)
    m[:, scan] = _scan(texts, [labels[i] for i in scan])
    for i, t in enumerate(texts):
        if "ABNORMAL" in t:
            m[i, abnormal] = True
        elif "NORM" in t:  # NORM only when ABNORMAL (which contains it) is absent
            m[i, norm] = True
    return m


def ecgbench_gold_letter(task: Task, gold) -> np.ndarray:
    """(n,) object: the gold the reference compares with (``value[0]`` for csn/g12, the whole value for mmmu)."""
    return np.array([gold_letter(task, g) for g in as_text(gold)], dtype=object)


def ecgbench_letters(text) -> np.ndarray:
    """(n,) object: the reference letter per row, None where unparsable."""
    return _per_unique(text, lambda texts: np.array([reference_letter(t) for t in texts], dtype=object))


def qa_candidates(question: str) -> list[str]:
    """ECG-QA options, the reference's rule: the text after the last "Options:", the closing "Only answer ..."
    sentence removed, split on commas, each part stripped (empty parts and trailing periods kept).

    >>> qa_candidates("Which? Options: yes, no, None\\n\\n" + _QA_TAIL)
    ['yes', 'no', 'None']
    """
    return [c.strip() for c in question.split("Options:")[-1].replace(_QA_TAIL, "").split(",")]


def ecgbench_qa_found(question: str, text: str) -> set[str]:
    """The candidates the reference finds: each one *as written* occurring in the *lower-cased* text, so a
    candidate with a capital letter is never found (and an empty one always is).

    >>> sorted(ecgbench_qa_found("Options: yes, no, None", "None, not yes"))
    ['no', 'yes']
    """
    low = text.lower()
    return {c for c in qa_candidates(question) if c in low}


def ecgbench_setmatch(question, gold, text) -> np.ndarray:
    """(n,) bool: the set of candidates found (``ecgbench_qa_found``) equals the set of gold items as given."""
    out = [ecgbench_qa_found(q, t) == set(gold_items(a))
           for q, a, t in zip(as_text(question), as_text(gold), as_text(text))]
    return np.array(out, dtype=bool)


# ---- strict (corrected) -----------------------------------------------------------------------------------
# Only the bare "st" needs a guard: "ST segment", "ST elevation", "ST-T" name a segment, not sinus tachycardia.
_AFTER = {"st": r"(?![\s/-]*(?:segments?|elevations?|depressions?|changes?|waves?|intervals?|abnormal\w*|t\b))"}


@lru_cache(maxsize=None)
def _label_pattern(label: str, synonyms: tuple[str, ...]) -> re.Pattern:
    """Whole-token, lower-case pattern naming ``label`` (its own name or any synonym)."""
    alts = [re.escape(label.lower()) + _AFTER.get(label.lower(), "")] + list(synonyms)
    return re.compile(r"(?<![a-z0-9])(?:" + "|".join(alts) + r")(?![a-z0-9])")


def strict_labels(task: Task, text) -> np.ndarray:
    """(n, L) bool: labels named as whole tokens or synonyms, case-insensitive (code15: after the last "answer:")."""
    return _per_unique(text, lambda texts: strict_labels_u(task, texts))


def strict_labels_u(task: Task, texts: list[str]) -> np.ndarray:
    """``strict_labels`` over a list of distinct texts."""
    synonyms = dict(task.synonyms)
    patterns = [_label_pattern(label, tuple(synonyms.get(label, ()))) for label in task.labels]
    whole = bool(task.whole_answers)
    m = np.zeros((len(texts), len(patterns)), dtype=bool)
    for i, t in enumerate(texts):
        t = t.lower()
        if whole:
            t = t.split("answer:")[-1]
        m[i] = [p.search(t) is not None for p in patterns]
    if whole:  # NORM and ABNORMAL exclude each other: "abnormal" wins, as in the reference
        norm, abnormal = task.labels.index("NORM"), task.labels.index("ABNORMAL")
        m[m[:, abnormal], norm] = False
    return m


_LETTER_ALONE = re.compile(r"\(?([A-Ha-h])[.):]?")
_LETTER_LEAD = re.compile(r"\(?([A-H])[.):](?:\s|$)")
_LETTER_SAID = re.compile(
    r"(?i:correct (?:option|answer|choice) is|answer is|answer:|option|choice)\s*\(?((?-i:[A-H]))(?![A-Za-z0-9])"
)


def strict_letter(text: str) -> str | None:
    """A choice letter stated unambiguously, or None (counted wrong, never guessed).

    >>> strict_letter("b"), strict_letter("C. Sinus rhythm"), strict_letter("The answer is D"), strict_letter("BBB")
    ('B', 'C', 'D', None)
    """
    t = text.strip()
    m = _LETTER_ALONE.fullmatch(t) or _LETTER_LEAD.match(t) or _LETTER_SAID.search(t)
    return m.group(1).upper() if m else None


def strict_letters(text) -> np.ndarray:
    """(n,) object: the strict letter per row, None where unparsable."""
    return _per_unique(text, lambda texts: np.array([strict_letter(t) for t in texts], dtype=object))


def strict_qa_found(question: str, text: str) -> set[str]:
    """The candidates (lower-cased) named in the text as whole tokens, case-insensitive; empty ones ignored.

    >>> sorted(strict_qa_found("Options: yes, no, None", "None, normal otherwise"))
    ['none']
    """
    low = text.lower()
    return {c.lower() for c in qa_candidates(question)
            if c and re.search(r"(?<![a-z0-9])" + re.escape(c.lower()) + r"(?![a-z0-9])", low)}


def strict_setmatch(question, gold, text) -> np.ndarray:
    """(n,) bool: the candidates named (``strict_qa_found``) equal the gold items, lower-cased and stripped."""
    out = [strict_qa_found(q, t) == {g.strip().lower() for g in gold_items(a) if g.strip()}
           for q, a, t in zip(as_text(question), as_text(gold), as_text(text))]
    return np.array(out, dtype=bool)
