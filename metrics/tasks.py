"""The task registry: a benchmark task is data (label space, question, parser, metric set, version).

Example::

    task = get_task("code15-test")          # an ECGBench config name is an alias
    task.name, task.kind, task.labels       # ("code15", "multilabel", ("1dAVb", "RBBB", ...))
    task.format_answer(["SB", "1dAVb"])     # "SB; 1dAVb"
"""

from __future__ import annotations

from dataclasses import dataclass, field

MULTILABEL, CHOICE, SETMATCH, FREETEXT = "multilabel", "choice", "setmatch", "freetext"


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # one of MULTILABEL, CHOICE, SETMATCH, FREETEXT
    labels: tuple[str, ...] = ()  # label space (multi-label) or option letters (choice)
    question: str = ""  # the default question a sample of this task asks (ECGBench form)
    max_new_tokens: int = 32  # generation budget per answer
    aliases: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    version: str = "1"
    whole_answers: tuple[str, ...] = field(default=())  # answers that stand alone (code15: NORM, ABNORMAL)

    def format_answer(self, labels) -> str:
        """The gold answer text for a set of labels, in the benchmark's form (labels joined by "; ")."""
        labels = list(labels)
        for whole in self.whole_answers:
            if labels == [whole]:
                return whole
        order = {label: i for i, label in enumerate(self.labels)}
        return "; ".join(sorted(labels, key=lambda label: order.get(label, len(order))))


CODE15_LABELS = ("1dAVb", "RBBB", "LBBB", "SB", "ST", "AF")

CODE15_QUESTION = (
    "<image>\nWhich of the following diagnoses fit this 12-lead ECG? Options: "
    "1dAVb (1st degree AV block), RBBB (right bundle branch block), LBBB (left bundle branch block), "
    "SB (sinus bradycardia), ST (sinus tachycardia), AF (atrial fibrillation). "
    "List every option that applies, separated by semicolons. If the ECG is normal answer NORM; "
    "if it is abnormal but none of the options apply answer ABNORMAL. "
    "Answer only with the options, without explanation."
)

_REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
    for key in (task.name, *task.aliases):
        if key in _REGISTRY and _REGISTRY[key] is not task:
            raise ValueError(f"task name or alias {key!r} is already registered")
        _REGISTRY[key] = task
    return task


def get_task(name: str) -> Task:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {sorted({t.name for t in _REGISTRY.values()})}") from None


def all_tasks() -> list[Task]:
    return sorted({t.name: t for t in _REGISTRY.values()}.values(), key=lambda t: t.name)


CODE15 = register(
    Task(
        name="code15",
        kind=MULTILABEL,
        labels=CODE15_LABELS + ("NORM", "ABNORMAL"),
        question=CODE15_QUESTION,
        max_new_tokens=24,
        aliases=("code15-test",),
        metrics=("f1", "auc", "hamming_loss", "anls"),
        whole_answers=("NORM", "ABNORMAL"),
    )
)
