"""Sample rows -> prediction rows: the pure stage that batch evaluation and serving both call.

Reads columns ``id``, ``task``, ``image`` (PNG/JPEG bytes), ``question``, ``answer`` and, when present, ``meta``
(``meta["history"]``: the earlier turns of a multi-turn record, put before the question); writes the
ecg/rows.py PREDICTION_SCHEMA columns. A row whose image does not decode or whose prompt is too long gets
``error`` (naming the id) and an empty ``prediction``; the other rows of the batch proceed. ``truncated`` says
whether the answer ended at its token budget (``budgets``: task name -> max new tokens; default the task's own).
``num_beams`` > 1 searches beams one row at a time (``vlm.beam``; label scores are then those of the beam's
answer); ``questions`` (task -> question) asks a task's rows another question than their own, which their
``question`` column then shows (``ecgtasks.registry.decoding_options`` gives both for a ``--decoding``).

Example::

    out = predict_rows(Predictor("tiny"), samples_df)
    out[["id", "prediction", "error", "latency_ms"]]
"""

from __future__ import annotations

import json
import time

import pandas as pd
from PIL import Image

from ecg.images import decode_image
from ecg.rows import PREDICTION_COLUMNS, require_columns
from ecgtasks import MULTILABEL, get_task
from vlm.prompt import row_history

NEEDED = ("id", "task", "image", "question", "answer")


def _decode(row_id: str, data) -> Image.Image:
    return decode_image(data, f"record {row_id}")


def predict_rows(predictor, batch: pd.DataFrame, *, budgets: dict[str, int] | None = None, num_beams: int = 1,
                 questions: dict[str, str] | None = None) -> pd.DataFrame:
    """Prediction rows for a batch of sample rows; one forward batch per task present in ``batch``."""
    require_columns(batch.columns, NEEDED, "predict_rows")
    out = pd.DataFrame(
        {
            "id": batch["id"].astype(str).to_numpy(),
            "task": batch["task"].to_numpy(),
            "question": batch["question"].to_numpy(),
            "answer": batch["answer"].to_numpy(),
        }
    )
    out["prediction"], out["label_scores"], out["error"] = "", None, None
    out["model"], out["latency_ms"], out["truncated"] = predictor.name, 0.0, None
    out["prompt_tokens"] = pd.array([None] * len(out), dtype="Int64")
    for task_name, positions in out.groupby("task", sort=False).indices.items():
        _predict_task(predictor, batch, out, task_name, list(positions), budgets or {}, num_beams, questions or {})
    return out[list(PREDICTION_COLUMNS)]


def _predict_task(predictor, batch: pd.DataFrame, out: pd.DataFrame, task_name: str, positions: list[int],
                  budgets: dict[str, int], num_beams: int, questions: dict[str, str]) -> None:
    start = time.perf_counter()
    try:
        task = get_task(task_name)
        budget = int(budgets.get(task.name, task.max_new_tokens))
    except KeyError as exc:
        for pos in positions:
            out.at[pos, "error"] = f"record {out.at[pos, 'id']}: {exc.args[0]}"
        return
    good, encoded = [], []
    for pos in positions:  # decode and encode first; only the good rows go to the model, in one batch
        row_id = out.at[pos, "id"]
        try:
            image = _decode(row_id, batch["image"].iat[pos])
            history = row_history(batch["meta"].iat[pos]) if "meta" in batch else None
            question = questions.get(task.name, batch["question"].iat[pos])
            out.at[pos, "question"] = question
            encoded.append(predictor.encode_one(image, question, max_new_tokens=budget, history=history))
            out.at[pos, "prompt_tokens"] = predictor.prompt_tokens(encoded[-1])
            good.append(pos)
        except Exception as exc:
            msg = str(exc) if row_id in str(exc) else f"record {row_id}: {exc}"
            out.at[pos, "error"] = msg
    if good:
        _run_model(predictor, task, budget, out, good, encoded, num_beams)
    per_row = (time.perf_counter() - start) * 1000.0 / len(positions)  # ms: batch time shared by its rows
    for pos in positions:
        out.at[pos, "latency_ms"] = per_row


def _run_model(predictor, task, budget: int, out: pd.DataFrame, positions: list[int], encoded: list[dict],
               num_beams: int = 1) -> None:
    """Generate (and score labels) for the good rows in one batch; if the batch fails, retry row by row so
    only the row that breaks the model (e.g. out of memory on a huge page) gets the error."""
    try:
        results = _answers_and_scores(predictor, task, budget, encoded, num_beams)
    except Exception as exc:
        if len(positions) > 1:
            for pos, enc in zip(positions, encoded):
                _run_model(predictor, task, budget, out, [pos], [enc], num_beams)
        else:
            out.at[positions[0], "error"] = f"record {out.at[positions[0], 'id']}: model failed: {exc}"
        return
    for pos, (answer, scores, cut) in zip(positions, results):
        out.at[pos, "prediction"], out.at[pos, "truncated"] = answer, cut
        if scores is not None:
            out.at[pos, "label_scores"] = json.dumps({k: round(v, 6) for k, v in scores.items()})


def _answers_and_scores(predictor, task, budget: int, encoded: list[dict], num_beams: int = 1
                        ) -> list[tuple[str, dict | None, bool]]:
    scored = task.kind == MULTILABEL and task.labels and getattr(predictor, "label_scores", True)
    labels = list(task.labels) if scored else None
    if num_beams > 1:  # beam search, one row at a time; label scores on the beam's answers
        from vlm.beam import beam_answers

        answers, cut = beam_answers(predictor, encoded, num_beams=num_beams, max_new_tokens=budget)
        scores = (predictor.run_encoded(encoded, max_new_tokens=budget, labels=labels, answers=answers)[1]
                  if labels else None)
        return list(zip(answers, scores or [None] * len(answers), cut))
    # one call: the vision tower and the prompt run once per row, for the answer and the label scores alike
    answers, scores = predictor.run_encoded(encoded, max_new_tokens=budget, labels=labels)
    cut = list(getattr(predictor, "last_cut", None) or [None] * len(answers))  # set by run_encoded
    return list(zip(answers, scores or [None] * len(answers), cut))
