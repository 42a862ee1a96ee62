"""Model answer -> the labels it names, for the online response (pure; the batch job scores with the same parsers)."""

from __future__ import annotations

import re

from metrics import parsing
from ecgtasks import CHOICE, MULTILABEL, SETMATCH, get_task


def parse_labels(task_name: str, question: str, text: str) -> list[str]:
    """What an answer names, by the strict protocol of ``metrics.parsing``, per task kind.

    multilabel: the task's labels named (in label order); choice: the one letter stated, if any; setmatch:
    the question's options named; freetext: nothing. Example: ``parse_labels("code15", q, "SB; 1dAVb")``
    -> ``["1dAVb", "SB"]``.
    """
    task, text = get_task(task_name), text or ""
    if task.kind == MULTILABEL and task.labels:
        row = parsing.strict_labels(task, [text])[0]  # (labels,) bool
        return [label for label, hit in zip(task.labels, row) if hit]
    if task.kind == CHOICE:
        letter = parsing.strict_letter(text)
        return [letter] if letter else []
    if task.kind == SETMATCH:
        low = text.lower()
        return [c for c in parsing.qa_candidates(question)
                if c and re.search(r"(?<![a-z0-9])" + re.escape(c.lower()) + r"(?![a-z0-9])", low)]
    return []
