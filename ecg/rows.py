"""The data contracts between the jobs: sample rows and prediction rows (Arrow schemas).

Sample row (written by ``prepare``, read by ``train``, ``evaluate`` and ``score``)::

    {"id": "synth-000017", "task": "code15", "image": b"\\x89PNG...", "question": "<the task's question>",
     "answer": "SB; 1dAVb", "labels": ["SB", "1dAVb"], "source": "synthetic", "meta": '{"split": "test"}'}

Prediction row (written by ``evaluate``, read by ``score``)::

    {"id": "synth-000017", "task": "code15", "question": "...", "answer": "SB; 1dAVb",
     "prediction": "SB; 1dAVb", "label_scores": '{"SB": 0.93, "AF": 0.02, ...}',
     "model": "tiny", "error": None, "latency_ms": 41.7, "prompt_tokens": 1139, "truncated": False,
     "page_score": 0.97, "is_page": True}

``label_scores`` is a JSON object (label -> probability) or null; ``error`` is null unless the
record failed, in which case ``prediction`` is empty and the record still counts. ``truncated`` is true when
generation ended at the token budget without a stop token (an endpoint's ``finish_reason == "length"``); shards
written before the column existed read it as null. ``page_score`` and ``is_page`` are the ECG page gate's verdict
on the row's image (``ecg.pagegate``, ``evaluate --page-gate``); null where the gate was off, the image did not
decode, or the shard was written before the gate existed.
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
        pa.field("truncated", pa.bool_()),  # the answer filled its token budget (no stop token); null: unknown
        pa.field("page_score", pa.float64()),  # the page gate's score in [0, 1] (ecg.pagegate); null: not checked
        pa.field("is_page", pa.bool_()),  # the page gate's verdict: false = not an ECG page; null: not checked
    ]
)

# written by the page gate (ecg.pagegate.gate_rows), not by a predictor
PAGE_COLUMNS = ("page_score", "is_page")

# Extra columns of rows from an endpoint (vlm.remote): summed by the driver into run.json, not stored per row.
# sent_*: tokens of the requests sent in this run (0 for an answer from the cache)
USAGE_COLUMNS = ("requests", "retries", "cache_hit", "sent_prompt_tokens", "sent_completion_tokens")

SAMPLE_COLUMNS = tuple(SAMPLE_SCHEMA.names)
# the columns a predictor writes (vlm.predict_rows, vlm.remote.EndpointStage): the schema less the page gate's
PREDICTION_COLUMNS = tuple(n for n in PREDICTION_SCHEMA.names if n not in PAGE_COLUMNS)


def require_columns(columns, needed, where: str) -> None:
    """Raise a ``KeyError`` naming every column of ``needed`` missing from ``columns``."""
    missing = [c for c in needed if c not in set(columns)]
    if missing:
        raise KeyError(f"{where}: missing column(s) {missing}; have {sorted(columns)}")


def add_usage(totals: dict, batch) -> dict:
    """Add a pyarrow batch's USAGE_COLUMNS into ``totals`` (``cache_hit`` as ``cache_hits``, ``sent_*`` without the
    prefix); a batch without them (an in-process model) adds nothing. Example: ``add_usage({}, table)["requests"]``."""
    import pyarrow.compute as pc

    for col in USAGE_COLUMNS:
        if col in batch.column_names:
            key = "cache_hits" if col == "cache_hit" else col.removeprefix("sent_")
            totals[key] = int(totals.get(key, 0)) + int(pc.sum(pc.cast(batch.column(col), "int64")).as_py() or 0)
    return totals


def cost_usd(totals: dict, price_input_per_mtok: float | None, price_output_per_mtok: float | None) -> float | None:
    """Estimated USD of the tokens sent, from prices per million prompt / completion tokens (None: no price).
    Example: ``cost_usd({"prompt_tokens": 2000, "completion_tokens": 0}, 2.5, 10.0) == 0.005``."""
    if price_input_per_mtok is None and price_output_per_mtok is None:
        return None
    return round((totals.get("prompt_tokens", 0) * (price_input_per_mtok or 0)
                  + totals.get("completion_tokens", 0) * (price_output_per_mtok or 0)) / 1e6, 6)


def one_per_id(frame):
    """``(frame with one row per id, rows dropped)``: the one rule for duplicate prediction ids, used by every
    reader (``ecg.shards.read_predictions``, ``metrics.inputs.join``).

    Of the rows of one id, the first without an ``error`` is kept; an id whose rows all failed keeps its
    first. An error row is no answer (the model failed on it, say out of memory), so when another run did
    answer, the answer is scored; otherwise the first, as the reference output's readers keep it. Row order
    is kept. Example: rows ``[("a", error), ("a", ok), ("b", ok), ("b", ok2)]`` -> ``[("a", ok), ("b", ok)]``.
    """
    failed = frame["error"].notna().to_numpy() if "error" in frame else None
    if failed is None or not failed.any():
        keep = ~frame["id"].duplicated().to_numpy()
    else:
        order = frame.assign(_failed=failed, _pos=range(len(frame))).sort_values(["_failed", "_pos"], kind="stable")
        keep = frame.index.isin(order.index[~order["id"].duplicated().to_numpy()])
    return frame[keep], int((~keep).sum())
