"""ECGBench / ECGInstruct records -> sample rows: one row per (human, gpt) turn, each with its own task.

The published form (facts in ../shared/ECGBENCH.md)::

    {"id": "code15-123", "image": "images/code15-123-0.png",     # or a list: the first image is the ECG
     "conversations": [{"from": "human", "value": "<image>\\nWhich of the following ..."},
                       {"from": "gpt", "value": "SB; 1dAVb"}, ...more (human, gpt) pairs...]}

as a JSON array or JSON Lines (``ecg.jsonrecords`` streams them; ``image`` relative to the dataset's root),
or Parquet with ``id``, ``image`` (a struct with ``bytes``, or plain bytes) and ``conversations``.

Turn ``k`` of a record is the sample row ``<id>`` (k = 0: ECGBench ids stay as published) or ``<id>#t<k>``
(k >= 1), with that turn's question and answer and the earlier turns in ``meta["history"]`` as
``[{"role": "user" | "assistant", "text": str}, ...]`` (the image belongs to the first user turn). Training
puts its loss on one answer per row and evaluation scores one answer per row, so both read the same rows.

Example::

    infer_task("x-1", "<image>\\nWhich diagnostic superclasses ... Options: NORM, MI, STTC, CD, HYP ...")
    # "ptbxl-super"
    table = ecgbench_batch(refs, task="auto", splits={"train": 0.99, "val": 0.01}, source="ecginstruct")
"""

from __future__ import annotations

import os
import posixpath
import re

import pyarrow as pa

from ecg import storage
from ecg.jsonrecords import read_records  # noqa: F401 - the one JSON / JSONL reader, also used by scoring
from ecg.samples import (ABSOLUTE_PATH, BAD_CONVERSATION, IMAGE_NOT_FOUND, NO_IMAGE, OUTSIDE_ROOT, UNREADABLE_IMAGE,
                         RecordError, _columns, _guard, assign_split, parse_splits, sample_row, to_table)

AUTO = "auto"
FREETEXT_TASK = "freetext"  # the registered task of a row that fits no other


def file_task(path: str) -> str | None:
    """The task an ECGBench file or folder name names (``code15-test.json``, ``ptb-test/test-0.parquet``), or None.

    The file's own name and its two parent folders are tried, each whole and without its last ``-part``.
    Example: ``file_task("ECGBench/cpsc-test/test-00000.parquet") == "cpsc"``; ``file_task("ECGInstruct.json")``
    is None.
    """
    from ecgtasks import get_task

    parts = [p for p in str(path).replace("\\", "/").rstrip("/").split("/") if p][::-1]
    for part in parts[:3]:
        stem = part.split(".")[0]
        for candidate in (stem, stem.rsplit("-", 1)[0]):
            try:
                return get_task(candidate).name
            except KeyError:
                pass
    return None


def resolve_task(task: str | None, path: str = ""):
    """The registered task ``--task`` names, or for ``auto`` / None the one the file name names (else None)."""
    from ecgtasks import get_task

    if task and task != AUTO:
        return get_task(task)
    name = file_task(path)
    return get_task(name) if name else None


# ---- the task of a row --------------------------------------------------------------------------------------

_NOT_IN_TOKEN = r"A-Za-z0-9\-"  # a label is a whole token: "ST" is not found in "ST-segment" or "STTC"
_LETTERED = re.compile(r"(?:^|[\s(])([A-H])[.)]\s")  # "A. Sinus rhythm", "(B) Atrial flutter"
_REPORT = re.compile(r"\b(?:write|generate|provide|produce|give|draft|compose|create)\b.*\breport\b", re.S)
_CHOICE_SOURCES = {"csn": ("csn", "chapman", "ningbo", "shaoxing"), "g12": ("g12", "g12ec", "georgia"),
                   "mmmu": ("mmmu",)}


def _tokens(*texts: str) -> set[str]:
    return {t for text in texts for t in re.split(r"[^a-z0-9]+", str(text or "").lower()) if t}


def _has_label(question: str, label: str) -> bool:
    return re.search(rf"(?<![{_NOT_IN_TOKEN}]){re.escape(label)}(?![{_NOT_IN_TOKEN}])", question) is not None


def _listed_multilabel(question: str) -> str | None:
    """The multi-label task whose whole label space (less its stand-alone answers) the question lists."""
    from ecgtasks import MULTILABEL, all_tasks

    best, size = None, 0
    for task in all_tasks():
        required = [label for label in task.labels if label not in task.whole_answers]
        if task.kind == MULTILABEL and len(required) > size and all(_has_label(question, x) for x in required):
            best, size = task.name, len(required)
    return best


def _offered_letters(question: str) -> list[str]:
    """The option letters a question offers as ``A. ...``/``(A) ...``, when they run from A without a gap."""
    found = sorted(set(_LETTERED.findall(question)))
    return found if len(found) >= 2 and found == list("ABCDEFGH"[:len(found)]) else []


def infer_task(record_id: str, question: str, answer: str = "", file_hint: str = "") -> str:
    """The registered task of one (question, answer) turn, from the question's form and the id / file name.

    The rules, first match wins:

    1. ``file_hint`` (the file or folder name) names a task: ECGBench files hold one task each
       (``code15-test.json`` -> ``code15``, ``ptb-test-report/...`` -> ``ptbxl-report``).
    2. The id or file name names the arena (a token ``arena``) -> ``arena``.
    3. The question lists the whole label space of a multi-label task as options, each label a whole token
       (less stand-alone answers such as code15's NORM / ABNORMAL): the largest such space wins, so CPSC's
       nine (NORM, AF, I-AVB, LBBB, RBBB, PAC, PVC, STD, STE) before CODE-15's six (1dAVb, RBBB, LBBB, SB,
       ST, AF) before PTB-XL's five superclasses (NORM, MI, STTC, CD, HYP).
    4. The question offers lettered options (``A. ... B. ...``) and the answer's letter is one of them: the
       choice task the id or file names (``csn``/``chapman``, ``g12``/``georgia``, ``mmmu``). A multiple-choice
       question from any other source fits no registered choice task and goes on to rule 7.
    5. The question lists ``Options:`` (comma-separated, ECG-QA's form) -> ``ecgqa``.
    6. The question asks to write / generate a report: ``ptbxl-report`` when the id or file names PTB-XL
       (a token starting ``ptb``); a report from another source (MIMIC-IV-ECG) -> ``freetext``.
    7. Anything else (open-ended, fill-in, follow-up turns) -> ``freetext``: kept, scored by ANLS.

    Example: ``infer_task("csn-77", "<image>\\nWhich rhythm? A. Sinus B. AF", "B")`` is ``"csn"``;
    ``infer_task("mimic-9", "<image>\\nWrite a report for this ECG.")`` is ``"freetext"``.
    """
    from ecgtasks.gold import reference_letter

    named = file_task(file_hint) if file_hint else None
    if named:
        return named
    tokens = _tokens(record_id, *str(file_hint).replace("\\", "/").split("/")[-2:])  # the file and its folder
    if "arena" in tokens:
        return "arena"
    question, answer = str(question or ""), str(answer or "").strip()
    listed = _listed_multilabel(question)
    if listed:
        return listed
    letters = _offered_letters(question)
    if letters:
        letter = reference_letter(answer) if answer else None
        for name, words in _CHOICE_SOURCES.items():
            if tokens & set(words) and (letter in letters or answer[:1] in letters):
                return name
    if "Options:" in question:
        return "ecgqa"
    if _REPORT.search(question.lower()) and any(t.startswith("ptb") for t in tokens):
        return "ptbxl-report"
    return FREETEXT_TASK


def gold_labels(task, answer: str) -> list[str]:
    """Gold labels of an answer by the ECGBench protocol (``ecgtasks.gold``: the scorer's own rules).
    Example: ``gold_labels(get_task("code15"), "SB; 1dAVb") == ["1dAVb", "SB"]``."""
    from ecgtasks.gold import gold_labels as labels

    return labels(task, answer)


# ---- conversations and images -----------------------------------------------------------------------------

def turn_pairs(value, *, record: str | None = None) -> list[tuple[str, str]]:
    """Every ``(question, answer)`` pair of a conversation, in order (``ecgtasks.conversation.turn_pairs``).

    ``value``: a list of ``{"from": "human" | "gpt", "value": str}`` (``user`` / ``assistant`` also accepted)
    or its JSON text. The turns must alternate, human first, and end with an answer; otherwise a
    :class:`RecordError` (kind ``bad_conversation``) names the record and the first turn out of place. An answer
    given as a list of texts (ECG-QA's gold) is kept as its JSON text, which the scorer reads back as the list
    (``ecgtasks.gold.gold_text``): ``'["sinus rhythm", "none"]'``.
    Example: ``turn_pairs([{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]) == [("q", "a")]``.
    """
    from ecgtasks.conversation import ConversationError
    from ecgtasks.conversation import turn_pairs as pairs

    try:
        return pairs(value, record=record)
    except ConversationError as err:
        raise RecordError(str(err), BAD_CONVERSATION) from None


def image_location(root: str, path: str) -> str:
    """The URI of image ``path`` under the dataset's ``root``, refusing paths that leave the root.

    An absolute path or URI (kind ``absolute_path``) and a path that climbs out with ``..`` or, on local
    disk, through a symlink (kind ``path_outside_root``) raise :class:`RecordError` naming the path.
    Example: ``image_location("/data/ecginstruct", "images/a.png") == "/data/ecginstruct/images/a.png"``.
    """
    path = str(path)
    if "://" in path or path.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:[\\/]", path):
        raise RecordError(f"image path {path!r} is absolute; paths must be relative to the dataset root {root}",
                          ABSOLUTE_PATH)
    norm = posixpath.normpath(path.replace("\\", "/"))
    if norm == ".." or norm.startswith("../"):
        raise RecordError(f"image path {path!r} leaves the dataset root {root}", OUTSIDE_ROOT)
    uri = storage.join(root, norm)
    if not storage.is_s3(uri):
        real, real_root = os.path.realpath(uri), os.path.realpath(root)
        if os.path.commonpath([real, real_root]) != real_root:
            raise RecordError(f"image path {path!r} resolves to {real}, outside the dataset root {root}",
                              OUTSIDE_ROOT)
    return uri


def check_image(data: bytes | None, where: str) -> bytes:
    """``data`` if it decodes as an image (``ecg.images.decode_image``); else :class:`RecordError`
    (``unreadable_image``) naming ``where``."""
    from ecg.images import ImageError, decode_image

    try:
        decode_image(data, where, mode=None)
    except ImageError as err:
        raise RecordError(str(err), UNREADABLE_IMAGE) from None
    return bytes(data)


def _image_value(value) -> tuple[bytes | None, str | None]:
    """``(bytes, path)`` from an image cell: bytes, a struct ``{"bytes": ..., "path": ...}`` or a path."""
    if value is None:
        return None, None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    if isinstance(value, dict):
        return value.get("bytes"), value.get("path")
    if isinstance(value, str):
        return None, value
    raise RecordError(f"image cell of type {type(value).__name__}", UNREADABLE_IMAGE)


def load_image(rid: str, cell, root: str | None) -> tuple[bytes, str]:
    """``(image bytes, relative path or "")`` of record ``rid``: bytes in the cell, or the file under ``root``."""
    data, path = _image_value(cell)
    if data:
        return check_image(data, f"record {rid!r}" + (f" image {path}" if path else "")), path or ""
    if not path:
        raise RecordError(f"record {rid!r}: no image", NO_IMAGE)
    if root is None:
        raise RecordError(f"record {rid!r}: image {path!r} has no bytes and no dataset root to find it in", NO_IMAGE)
    uri = image_location(root, path)
    try:
        data = storage.read_bytes(uri)
    except OSError as exc:  # FileNotFoundError included
        raise RecordError(f"record {rid!r} image {uri}: cannot read ({exc})", IMAGE_NOT_FOUND) from None
    return check_image(data, f"record {rid!r} image {uri}"), posixpath.normpath(path.replace("\\", "/"))


# ---- the stage ------------------------------------------------------------------------------------------------


def record_rows(rid: str, conversations, image: bytes, *, image_path: str, task: str, hint: str, splits: dict,
                seed: int, source: str) -> list[dict]:
    """The sample rows of one record: turn ``k`` -> id ``rid`` (k = 0) or ``rid#t<k>``, earlier turns as history.

    All turns of a record, and all records showing the same image file, go to the same split (the split
    is drawn from the image path, else the id), so no ECG is seen in training and held out at once.
    """
    from ecgtasks import get_task

    split = assign_split(image_path or rid, splits, seed)
    rows, history = [], []
    for k, (question, answer) in enumerate(turn_pairs(conversations, record=rid)):
        name = infer_task(rid, question, answer, hint) if task == AUTO else task
        meta = {"split": split, "record_id": rid, "turn": k, "history": list(history), "image_path": image_path}
        rows.append(sample_row(id=rid if k == 0 else f"{rid}#t{k}", task=name, image=image, question=question,
                               answer=answer, labels=gold_labels(get_task(name), answer), source=source,
                               split=split, meta=meta))
        history += [{"role": "user", "text": question}, {"role": "assistant", "text": answer}]
    return rows


def ecgbench_batch(batch, *, task: str = AUTO, splits=None, seed: int = 0, source: str = "ecgbench",
                   image_root: str | None = None) -> pa.Table:
    """Load, check and convert ECGBench / ECGInstruct references or Parquet rows to sample rows.

    ``batch`` columns: ``id``, ``conversations`` (list or JSON), ``image`` (bytes, a struct with ``bytes``,
    or a path under the record's ``root`` column / ``image_root``), optionally ``hint`` or ``path`` (the
    file name, for :func:`infer_task`), ``error`` / ``error_kind`` (a record already known to be bad).
    ``task``: ``auto`` (per row, :func:`infer_task`) or a registered task name forced on every row.
    A record that fails is one failure row naming its id, with the kind of failure.
    """
    from ecgtasks import get_task

    forced = task if task == AUTO else get_task(task).name
    splits = parse_splits(splits or {"test": 1.0})
    cols = _columns(batch)
    n = len(cols["id"])
    rows: list[dict] = []
    for i in range(n):
        rid = str(cols["id"][i])

        def make(i=i, rid=rid):
            if cols.get("error") and cols["error"][i]:
                raise RecordError(cols["error"][i], cols.get("error_kind", [""] * n)[i] or BAD_CONVERSATION)
            turn_pairs(cols["conversations"][i], record=rid)  # a broken conversation fails before any image is read
            root = cols["root"][i] if cols.get("root") else image_root
            data, image_path = load_image(rid, cols["image"][i], root)
            hint = str((cols.get("hint") or cols.get("path") or [""] * n)[i] or "")
            return record_rows(rid, cols["conversations"][i], data, image_path=image_path, task=forced, hint=hint,
                               splits=splits, seed=seed, source=source)

        made = _guard(rid, make, task="" if forced == AUTO else forced, source=source)
        rows.extend(made if isinstance(made, list) else [made])
    return to_table(rows)
