"""One task's score from its files: references (ECGBench records or sample rows) joined with predictions (the
reference output JSONL or our prediction rows), scored by the protocols asked for. ``cfg`` holds ``ecgvlm score``'s
fields (``task``, ``references``, ``predictions``, ``protocol``, ``seed``, ``random_order``, ``drawn_before``).

Example::

    result = score_files(cfg)          # {"task": "code15", "n": 1200, "ecgbench": {...}, "strict": {...}, ...}
"""

from __future__ import annotations


def score_files(cfg, *, judge=None) -> dict:
    """The result dict of one task: ``metrics.score_frame`` on the joined rows (strict: one per reference id)
    and on the prediction lines (ecgbench: as the reference code counts them), plus the join's counts; ``judge``
    (``judge(cfg, frame) -> dict``), when given, adds the ``judge`` section. The joined rows are under
    ``_samples`` (for the report)."""
    from metrics.inputs import join, only_task, prediction_lines, read_predictions, read_references
    from metrics.score import letter_stream, score_frame
    from metrics.tasks import get_task

    rng = letter_stream(cfg.task, order=cfg.random_order, drawn_before=cfg.drawn_before)
    # rows of other tasks (a mixed ECGInstruct split, a whole evaluation's predictions) are not this task's;
    # a multi-turn task (the arena) scores every turn: turn k of record r is the row r#t<k>, as prepare writes it
    multi = get_task(cfg.task).name == "arena"
    refs, other_refs = only_task(read_references(cfg.references, all_turns=multi) if cfg.references else None,
                                 cfg.task)
    preds, other_preds = only_task(read_predictions(cfg.predictions), cfg.task)
    frame, counts = join(refs, preds)
    counts.update(other_task_references=other_refs, other_task_predictions=other_preds)
    lines, line_counts = prediction_lines(refs, preds)
    result = score_frame(cfg.task, frame, protocol=cfg.protocol, seed=cfg.seed, ecgbench_rows=lines,
                         line_counts=line_counts, rng=rng)
    if "ecgbench" in result:
        result["ecgbench"].update(random_order=cfg.random_order, drawn_before=cfg.drawn_before)
    result["warnings"] = counts.pop("warnings") + result["warnings"]
    result["input"] = counts
    if judge is not None:
        result["judge"] = judge(cfg, frame)
    result["_samples"] = frame
    return result
