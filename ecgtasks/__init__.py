"""The bottom layer: the benchmark task registry and the gold-answer rules every layer shares.

It imports nothing of ours (``ecg``, ``vlm``, ``metrics`` and ``serving`` all import it), and nothing heavier than
the standard library, so a process that only needs a task's label space pays for no numpy, pandas or torch.

Example::

    from ecgtasks import get_task
    task = get_task("code15-test")          # an ECGBench config name is an alias
    task.name, task.kind, task.labels       # ("code15", "multilabel", ("1dAVb", "RBBB", ...))
"""

from ecgtasks.registry import (  # noqa: F401
    CHOICE,
    CODE15,
    CODE15_LABELS,
    CODE15_QUESTION,
    ECGQA,
    FREETEXT,
    FREETEXT_TASK,
    MULTILABEL,
    PTBXL_REPORT,
    PTBXL_SUPER,
    SETMATCH,
    Task,
    all_tasks,
    get_task,
    register,
)
