"""The data contracts between the jobs: sample rows and prediction rows (Arrow schemas).

Sample row (written by ``prepare``, read by ``train``, ``evaluate`` and ``score``)::

    {"id": "synth-000017", "task": "code15", "image": b"\\x89PNG...", "question": "<the task's question>",
     "answer": "SB; 1dAVb", "labels": ["SB", "1dAVb"], "source": "synthetic", "meta": '{"split": "test"}'}

Prediction row (written by ``evaluate``, read by ``score``)::

    {"id": "synth-000017", "task": "code15", "question": "...", "answer": "SB; 1dAVb",
     "prediction": "SB; 1dAVb", "label_scores": '{"SB": 0.93, "AF": 0.02, ...}',
     "model": "tiny", "error": None, "latency_ms": 41.7, "prompt_tokens": 1139}

``label_scores`` is a JSON object (label -> probability) or null; ``error`` is null unless the
record failed, in which case ``prediction`` is empty and the record still counts.
"""

from __future__ import annotations

import pyarrow as pa

SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("task", pa.string()),
        pa.field("image", pa.binary()),  # PNG or JPEG bytes
        pa.field("question", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("labels", pa.list_(pa.string())),
        pa.field("source", pa.string()),
        pa.field("meta", pa.string()),  # JSON object
    ]
)

PREDICTION_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("task", pa.string()),
        pa.field("question", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("prediction", pa.string()),
        pa.field("label_scores", pa.string()),  # JSON object label -> probability, or null
        pa.field("model", pa.string()),
        pa.field("error", pa.string()),  # null unless the record failed
        pa.field("latency_ms", pa.float64()),
        pa.field("prompt_tokens", pa.int64()),  # tokens of the prompt the model read (image tokens included)
    ]
)

SAMPLE_COLUMNS = tuple(SAMPLE_SCHEMA.names)
PREDICTION_COLUMNS = tuple(PREDICTION_SCHEMA.names)


def require_columns(columns, needed, where: str) -> None:
    """Raise a ``KeyError`` naming every column of ``needed`` missing from ``columns``."""
    missing = [c for c in needed if c not in set(columns)]
    if missing:
        raise KeyError(f"{where}: missing column(s) {missing}; have {sorted(columns)}")
