"""The LLM judge of the free-text tasks, one rubric per judged task: the prompt, reading the judge's reply, the
summary. No network here: ``vlm.remote.judge_rows`` sends the prompts to an OpenAI-compatible endpoint.

Both rubrics are PULSE's (facts in ../shared/ECGBENCH.md): three integer scores from 0 to 10 at temperature 0 with
a JSON response format; a record's score is their mean times 10, the task's score the mean over records.

- ``ptbxl-report`` (:data:`REPORT`): the model's report against the reference report; Diagnosis, Waveform, Rhythm.
  One judged record per report.
- ``arena`` (:data:`ARENA`): a multi-turn dialogue about one ECG; Accuracy, Completeness, Instruction Adherence.
  As PULSE judges it, one judged record per dialogue: the judge reads every turn in order (its question, the
  ground-truth answer and the model's response), so each answer is judged with the dialogue before it, and gives
  one set of scores for the record. Turn rows are grouped by ``meta["record_id"]`` (else the id before ``#t``).

The prompt texts are ours; each rubric has its own version (``prompt_version``, kept in every result so that scores
from different prompts are never mixed up).

Example::

    messages = judge_messages(question, reference="sinus rhythm, normal ECG", answer="Sinus rhythm. Normal ECG.")
    parse_reply('{"Diagnosis": 9, "Waveform": 8, "Rhythm": 10}')    # {"diagnosis": 9, "waveform": 8, "rhythm": 10}
    record_score({"diagnosis": 9, "waveform": 8, "rhythm": 10})      # 90.0
    ARENA.parse('{"Accuracy": {"score": 7, "explanation": "..."}, "Completeness": 6, "Instruction Adherence": 8}')
    # {"accuracy": 7.0, "completeness": 6.0, "instruction_adherence": 8.0}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

PROMPT_VERSION = "ecgvlm-report-rubric-1"
ARENA_PROMPT_VERSION = "ecgvlm-arena-rubric-1"
CRITERIA = ("diagnosis", "waveform", "rhythm")
ARENA_CRITERIA = ("accuracy", "completeness", "instruction_adherence")
NO_RESPONSE = "(no response)"

SYSTEM = (
    "You are a cardiologist grading an ECG report written by a model against the reference report of the same "
    "12-lead ECG. Score three aspects, each an integer from 0 (wrong or missing) to 10 (fully consistent with the "
    "reference):\n"
    "Diagnosis: the diagnostic statements (e.g. myocardial infarction, hypertrophy, bundle branch block, normal ECG).\n"
    "Waveform: the waveform findings (P waves, PR, QRS, ST segments, T waves, intervals, axis, voltages).\n"
    "Rhythm: the rhythm and rate (sinus rhythm, atrial fibrillation, bradycardia, tachycardia, ectopic beats).\n"
    "Judge content, not wording; a finding the reference does not support lowers the score. "
    'Answer with one JSON object only: {"Diagnosis": <0-10>, "Waveform": <0-10>, "Rhythm": <0-10>}.'
)

ARENA_SYSTEM = (
    "You are a cardiologist grading a model's answers in a dialogue about one 12-lead ECG. For every turn you get "
    "the user's question, the ground-truth answer and the model's response; earlier turns are the context of later "
    "ones. Compare the model's responses with the ground truth and score three aspects over the whole dialogue, "
    "each an integer from 0 to 10:\n"
    "Accuracy: do the responses agree with the ground truth in ECG interpretation and diagnosis (waveforms, "
    "intervals, rhythm, clinical diagnoses, correct terminology)? 10 all correct, 5 partly correct with clear "
    "errors or omissions, 0 mostly wrong or misleading.\n"
    "Completeness: do the responses cover the essential points of interpretation that the ground truth mentions "
    "(rhythm, axis, waveforms, clinical causes)? 10 every key point, 5 important points missing, 0 the critical "
    "information missing.\n"
    "Instruction Adherence: does each response do what its question asks (list features, suggest a diagnosis, "
    "explain a next step), whether or not its content is correct? 10 fully, 5 with deviations, 0 ignores the "
    "question or is irrelevant.\n"
    "Be precise about medical terms. The length of a response must not change any score. "
    'Answer with one JSON object only: {"Accuracy": {"score": <0-10>, "explanation": "<one sentence>"}, '
    '"Completeness": {"score": <0-10>, "explanation": "..."}, '
    '"Instruction Adherence": {"score": <0-10>, "explanation": "..."}}.'
)


@dataclass(frozen=True)
class Item:
    """One record to judge: its id, the messages to send (None: nothing to judge, every criterion 0) and the
    columns it adds to its result row (the arena's number of turns)."""

    id: str
    messages: list[dict] | None
    extra: dict


@dataclass(frozen=True)
class Rubric:
    """A judged task's rubric: criteria (result keys) and the names the judge writes, its prompt and version,
    how rows become judged records (``items``) and the reply's ``max_tokens``."""

    task: str
    version: str
    criteria: tuple[str, ...]
    names: tuple[str, ...]
    items: Callable[[list[dict]], list[Item]]
    max_tokens: int = 200
    per_record: bool = False  # the summary lists every record's scores

    def parse(self, content: str) -> dict[str, float]:
        return parse_reply(content, self.criteria, self.names)

    def score(self, scores: dict[str, float]) -> float:
        return record_score(scores, self.criteria)


def _text(value) -> str:
    return value if isinstance(value, str) else ""


def _failed(row: dict) -> bool:
    return isinstance(row.get("error"), str) and bool(row["error"])  # null or NaN: no error


def _answered(row: dict) -> bool:
    return not _failed(row) and bool(_text(row.get("prediction")).strip())


def judge_messages(question: str, *, reference: str, answer: str) -> list[dict]:
    """The chat messages asking the judge to score report ``answer`` against ``reference`` (text only, no image)."""
    task = (question or "").replace("<image>", "").strip()
    user = (f"Instruction given to the model:\n{task}\n\nReference report:\n{reference or ''}\n\n"
            f"Model report:\n{answer or ''}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def report_items(rows: list[dict]) -> list[Item]:
    """One judged record per report row; an errored or empty prediction is not sent (an empty report matches
    nothing: every criterion 0)."""
    return [Item(str(r["id"]), judge_messages(_text(r.get("question")), reference=_text(r.get("answer")),
                                              answer=r["prediction"]) if _answered(r) else None, {}) for r in rows]


def _meta(row: dict) -> dict:
    meta = row.get("meta")
    if isinstance(meta, (str, bytes)) and meta:
        try:
            meta = json.loads(meta)
        except ValueError:
            meta = None
    return meta if isinstance(meta, dict) else {}


def _place(row: dict) -> tuple[str, int]:
    """(record id, turn) of a turn row: from ``meta`` (``ecgvlm prepare`` writes both), else from the id."""
    meta, rid = _meta(row), str(row["id"])
    base, sep, k = rid.rpartition("#t")
    record = meta.get("record_id") or (base if sep and k.isdigit() else rid)
    turn = meta.get("turn")
    return str(record), int(turn) if isinstance(turn, int) else (int(k) if sep and k.isdigit() else 0)


def arena_dialogues(rows: list[dict]) -> list[dict]:
    """Turn rows -> one dialogue per record, in first-seen order: ``{"id", "turns": [{"question", "reference",
    "response", "row"}]}`` sorted by turn. An earlier turn without a row of its own comes from a later row's
    ``meta["history"]`` (its question and ground truth; no response: it was not predicted).

    Example: rows ``a`` (turn 0) and ``a#t1`` -> ``[{"id": "a", "turns": [<turn 0>, <turn 1>]}]``.
    """
    records: dict[str, dict[int, dict]] = {}
    history: dict[str, list] = {}
    for row in rows:
        record, turn = _place(row)
        records.setdefault(record, {})[turn] = {
            "question": _text(row.get("question")), "reference": _text(row.get("answer")),
            "response": row["prediction"] if _answered(row) else None, "row": str(row["id"])}
        past = _meta(row).get("history") or []
        if len(past) > len(history.get(record, [])):
            history[record] = past
    out = []
    for record, turns in records.items():
        past = history.get(record, [])
        for k in range(len(past) // 2):  # history: user, assistant, user, assistant, ...
            if k not in turns:
                turns[k] = {"question": _text(past[2 * k].get("text")), "reference": _text(past[2 * k + 1].get("text")),
                            "response": None, "row": None}
        out.append({"id": record, "turns": [turns[k] for k in sorted(turns)]})
    return out


def arena_messages(turns: list[dict]) -> list[dict]:
    """The chat messages asking the judge to score one arena dialogue (``arena_dialogues``'s turns, in order)."""
    parts = []
    for k, t in enumerate(turns, 1):
        question = t["question"].replace("<image>", "").strip()
        response = t["response"] if t["response"] is not None else NO_RESPONSE
        parts.append(f"Turn {k}\nQuestion:\n{question}\n\nGround-truth answer:\n{t['reference']}\n\n"
                     f"Model's response:\n{response}")
    return [{"role": "system", "content": ARENA_SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def arena_items(rows: list[dict]) -> list[Item]:
    """One judged record per arena dialogue; a dialogue with no answered turn is not sent (every criterion 0)."""
    items = []
    for d in arena_dialogues(rows):
        answered = any(t["response"] is not None for t in d["turns"])
        items.append(Item(d["id"], arena_messages(d["turns"]) if answered else None,
                          {"turns": len(d["turns"]), "answered_turns": sum(t["response"] is not None
                                                                           for t in d["turns"])}))
    return items


def parse_reply(content: str, criteria: tuple[str, ...] = CRITERIA, names: tuple[str, ...] | None = None
                ) -> dict[str, float]:
    """The rubric's scores from the judge's JSON: ``{criterion: 0-10}``. Keys in any case, with spaces or
    underscores; a score is a number or an object with a ``score`` field. ValueError naming what is wrong otherwise."""
    try:
        doc = json.loads(content)
    except (TypeError, ValueError):
        raise ValueError(f"judge reply is not JSON: {str(content)[:120]!r}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"judge reply is not a JSON object: {str(content)[:120]!r}")
    lower = {str(k).strip().lower().replace(" ", "_").replace("-", "_"): v for k, v in doc.items()}
    names = names or tuple(c.capitalize() for c in criteria)
    out = {}
    for name, label in zip(criteria, names):
        value = lower.get(name)
        if isinstance(value, dict):
            value = {str(k).strip().lower(): v for k, v in value.items()}.get("score")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 10:
            raise ValueError(f"judge reply has no 0-10 score for {label}: {str(content)[:120]!r}")
        out[name] = float(value)
    return out


def record_score(scores: dict[str, float], criteria: tuple[str, ...] = CRITERIA) -> float:
    """One record's score: the mean of its rubric scores times 10 (0-100)."""
    return sum(scores[c] for c in criteria) / len(criteria) * 10


REPORT = Rubric("ptbxl-report", PROMPT_VERSION, CRITERIA, ("Diagnosis", "Waveform", "Rhythm"), report_items)
ARENA = Rubric("arena", ARENA_PROMPT_VERSION, ARENA_CRITERIA, ("Accuracy", "Completeness", "Instruction Adherence"),
               arena_items, max_tokens=400, per_record=True)
RUBRICS = {r.task: r for r in (REPORT, ARENA)}
JUDGED_TASKS = tuple(RUBRICS)


def rubric(task: str) -> Rubric:
    """The rubric of a judged task (a registered name or alias); ValueError naming the judged tasks otherwise."""
    from ecgtasks import get_task

    name = get_task(task).name
    if name not in RUBRICS:
        raise ValueError(f"--judge scores {list(JUDGED_TASKS)} only (each has its own rubric), not {name}")
    return RUBRICS[name]


def summarize(rows, *, model: str, api_base: str, rubric: Rubric = REPORT) -> dict:
    """The ``judge`` section of a result from per-record rows (dicts with the criteria, ``score``, ``error``):
    means over the records judged, x10 for ``score``, one decimal; failed records are counted, never scored 0.
    With an arena rubric, ``records`` lists every record's scores (null where its judging failed)."""
    rows = list(rows)
    good = [r for r in rows if not _failed(r)]
    mean = lambda key: round(sum(r[key] for r in good) / len(good), 2) if good else None  # noqa: E731
    out = {"model": model, "api_base": api_base, "prompt_version": rubric.version, "task": rubric.task,
           "criteria": dict(zip(rubric.criteria, rubric.names)), "n": len(rows),
           "judged": len(good), "failed": len(rows) - len(good),
           "score": round(sum(r["score"] for r in good) / len(good), 1) if good else None,
           **{c: mean(c) for c in rubric.criteria}}
    out["errors"] = [r["error"] for r in rows if _failed(r)][:5]
    if rubric.per_record:
        keys = ("score", *rubric.criteria)
        out["records"] = [{"id": r["id"], **{k: (None if _failed(r) else round(float(r[k]), 1)) for k in keys},
                           **{k: r[k] for k in ("turns", "answered_turns") if k in r},
                           "error": r["error"] if _failed(r) else None} for r in rows]
    return out
