"""Gold answers by the published ECGBench rules, in plain Python: the prepare stage labels rows with them and
the scorer (``metrics.parsing``) reads golds with the same functions, so the two cannot disagree.

Example::

    gold_labels(get_task("code15"), "SB; 1dAVb")      # ["1dAVb", "SB"]
    gold_text(["sinus rhythm", "None"])               # '["sinus rhythm", "None"]'
"""

from __future__ import annotations

import json

LETTERS8 = tuple("ABCDEFGH")


def gold_text(value) -> str | None:
    """The ``answer`` column's text for a gold answer as given: a text as it is, a list of texts (ECG-QA's
    gold) as JSON text, so that a string column keeps it losslessly; None stays None; a number becomes text.

    >>> gold_text(["sinus rhythm", "None"]), gold_text("SB; 1dAVb")
    ('["sinus rhythm", "None"]', 'SB; 1dAVb')
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and value != value:  # NaN: no gold
        return None
    if isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and getattr(value, "ndim", 0) == 1):
        items = value.tolist() if hasattr(value, "tolist") else list(value)  # a Parquet list cell: an ndarray
        bad = [x for x in items if not isinstance(x, str)]
        if bad:
            raise ValueError(f"a gold answer list must hold texts only; it holds {type(bad[0]).__name__} {bad[0]!r}")
        return json.dumps(items, ensure_ascii=False)
    return str(value)


def multilabel_gold_row(task, text: str) -> list[bool]:
    """(L,) over ``task.labels``: each label found as a case-sensitive substring (the reference's
    ``label in text``); an answer that is exactly a whole answer (code15's ``NORM`` / ``ABNORMAL``) is that
    label alone."""
    if text in task.whole_answers:
        return [label == text for label in task.labels]
    return [label not in task.whole_answers and label in text for label in task.labels]


def gold_letter(task, text: str) -> str:
    """The gold a choice task's reference compares with: ``value[0]`` (csn, g12) or the whole value (mmmu)."""
    return text[:1] if task.gold_rule == "first_char" else text


def gold_labels(task, answer: str) -> list[str]:
    """Gold labels of an answer by the ECGBench protocol: multi-label, the labels of ``multilabel_gold_row``;
    choice, the gold letter when it is one of the task's; other kinds, none.

    >>> from ecgtasks import get_task
    >>> gold_labels(get_task("code15"), "SB; 1dAVb"), gold_labels(get_task("csn"), "B. sinus rhythm")
    (['1dAVb', 'SB'], ['B'])
    """
    answer = (answer or "").strip()
    if task.kind == "multilabel":
        return [label for label, hit in zip(task.labels, multilabel_gold_row(task, answer)) if hit]
    if task.kind == "choice" and answer:
        letter = gold_letter(task, answer)
        return [letter] if letter in task.labels else []
    return []


def reference_letter(text: str) -> str | None:
    """The reference's choice-letter extraction; None where it would draw a random letter.

    >>> reference_letter("B"), reference_letter("I think C. is right"), reference_letter("Answer: (D)")
    ('B', 'C', 'D')
    """
    if text in LETTERS8:
        return text
    for letter in LETTERS8:  # the first "X." scanning A. .. H., wherever it is in the text
        if letter + "." in text:
            return letter
    if "The correct option is " in text:
        tail = text.split("The correct option is ")[-1]
        return tail[0] if tail[:1] in LETTERS8 else None  # the reference crashes on an empty tail
    if "Answer:" in text:
        answer = text.split("Answer:")[-1].strip()
        for letter in LETTERS8:
            if letter in answer:
                return letter
    return None
