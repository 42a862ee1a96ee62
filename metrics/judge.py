"""The LLM judge of free-text ECG reports (``ptbxl-report``): the rubric, its prompt, reading the judge's reply, and
the summary. No network here: ``vlm.remote.judge_rows`` sends the prompts to an OpenAI-compatible endpoint.

The rubric is PULSE's (facts in ../shared/ECGBENCH.md): the judge compares the model's report with the reference
report and gives three integer scores from 0 to 10, Diagnosis, Waveform and Rhythm, at temperature 0 with a JSON
response format; a record's score is their mean times 10, the task's score the mean over records. The prompt text is
ours (``PROMPT_VERSION``, kept in every result so that scores from different prompts are never mixed up).

Example::

    messages = judge_messages(question, reference="sinus rhythm, normal ECG", answer="Sinus rhythm. Normal ECG.")
    parse_reply('{"Diagnosis": 9, "Waveform": 8, "Rhythm": 10}')    # {"diagnosis": 9, "waveform": 8, "rhythm": 10}
    record_score({"diagnosis": 9, "waveform": 8, "rhythm": 10})      # 90.0
"""

from __future__ import annotations

import json

PROMPT_VERSION = "ecgvlm-report-rubric-1"
CRITERIA = ("diagnosis", "waveform", "rhythm")
JUDGED_TASKS = ("ptbxl-report",)

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


def judge_messages(question: str, *, reference: str, answer: str) -> list[dict]:
    """The chat messages asking the judge to score ``answer`` against ``reference`` (text only, no image)."""
    task = (question or "").replace("<image>", "").strip()
    user = (f"Instruction given to the model:\n{task}\n\nReference report:\n{reference or ''}\n\n"
            f"Model report:\n{answer or ''}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_reply(content: str) -> dict[str, float]:
    """``{"diagnosis", "waveform", "rhythm"}`` from the judge's JSON (keys in any case, numbers 0-10); ValueError
    naming what is wrong otherwise."""
    try:
        doc = json.loads(content)
    except (TypeError, ValueError):
        raise ValueError(f"judge reply is not JSON: {str(content)[:120]!r}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"judge reply is not a JSON object: {str(content)[:120]!r}")
    lower = {str(k).strip().lower(): v for k, v in doc.items()}
    out = {}
    for name in CRITERIA:
        value = lower.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 10:
            raise ValueError(f"judge reply has no 0-10 score for {name.capitalize()}: {str(content)[:120]!r}")
        out[name] = float(value)
    return out


def record_score(scores: dict[str, float]) -> float:
    """One record's score: the mean of the three rubric scores times 10 (0-100)."""
    return sum(scores[c] for c in CRITERIA) / len(CRITERIA) * 10


def summarize(rows, *, model: str, api_base: str) -> dict:
    """The ``judge`` section of a result from per-record rows (dicts with the criteria, ``score``, ``error``):
    means over the records judged, x10 for ``score``, one decimal; failed records are counted, never scored 0."""
    rows = list(rows)
    failed = lambda r: isinstance(r.get("error"), str) and bool(r["error"])  # noqa: E731 - null/NaN: no error
    good = [r for r in rows if not failed(r)]
    mean = lambda key: round(sum(r[key] for r in good) / len(good), 2) if good else None  # noqa: E731
    out = {"model": model, "api_base": api_base, "prompt_version": PROMPT_VERSION, "n": len(rows),
           "judged": len(good), "failed": len(rows) - len(good),
           "score": round(sum(r["score"] for r in good) / len(good), 1) if good else None,
           **{c: mean(c) for c in CRITERIA}}
    out["errors"] = [r["error"] for r in rows if failed(r)][:5]
    return out
