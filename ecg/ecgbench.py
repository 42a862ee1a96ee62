"""ECGBench / ECGInstruct records -> sample rows. No Ray, no torch.

The published form (facts in ../shared/ECGBENCH.md)::

    {"id": "code15-123-0", "image": "images/code15-123-0.png",
     "conversations": [{"from": "human", "value": "<image>\\nWhich of the following ..."},
                       {"from": "gpt", "value": "SB; 1dAVb"}]}

as a JSON list or JSON Lines file (``image`` relative to the file), or Parquet with ``id``, ``image`` (a struct
with ``bytes``, or plain bytes) and ``conversations``. The task comes from ``--task`` or from the file / folder
name (``code15-test.json``, ``ptb-test/test-00000.parquet``).

Example::

    refs = json_references("bench/code15-test.json")   # [{"id":..., "image_uri":..., "question":..., ...}]
    table = ecgbench_batch(pandas.DataFrame(refs), task="code15", splits={"test": 1.0})
"""

from __future__ import annotations

import json
import os
import posixpath

import pyarrow as pa

from ecg import storage
from ecg.samples import _columns, _guard, assign_split, parse_splits, sample_row, to_table


def resolve_task(task: str | None, path: str):
    """The registered task for an ECGBench file: ``task`` if given, else the file or folder name's alias."""
    from ecgtasks import all_tasks, get_task

    if task and task != "auto":
        return get_task(task)
    parts = [p for p in str(path).replace("\\", "/").rstrip("/").split("/") if p][::-1]
    for part in parts[:3]:
        stem = part.split(".")[0]
        for candidate in (stem, stem.rsplit("-", 1)[0]):
            try:
                return get_task(candidate)
            except KeyError:
                pass
    names = sorted({t.name for t in all_tasks()})
    raise ValueError(f"{path}: cannot tell the task from the file name; pass --task (one of {names})")


def gold_labels(task, answer: str) -> list[str]:
    """Gold labels of an answer by the ECGBench protocol (``ecgtasks.gold``: the scorer's own rules).
    Example: ``gold_labels(get_task("code15"), "SB; 1dAVb") == ["1dAVb", "SB"]``."""
    from ecgtasks.gold import gold_labels as labels

    return labels(task, answer)


def conversation(value) -> tuple[str, str]:
    """``(question, answer)``: the first human turn and the first answer after it (``from`` gpt/assistant).

    An answer given as a list of texts (ECG-QA's gold) is kept as its JSON text, which the scorer reads back
    as the list (``ecgtasks.gold.gold_text`` / ``metrics.parsing.gold_items``): ``'["sinus rhythm", "none"]'``."""
    from ecgtasks.gold import gold_text

    if isinstance(value, (str, bytes)):
        value = json.loads(value)
    turns = [dict(t) for t in list(value)]
    human = next((i for i, t in enumerate(turns) if t.get("from") in ("human", "user")), None)
    if human is None:
        raise ValueError("conversations: no human turn")
    gpt = next((t for t in turns[human + 1:] if t.get("from") in ("gpt", "assistant")), None)
    if gpt is None:
        raise ValueError("conversations: no answer turn after the question")
    return str(turns[human]["value"]), gold_text(gpt["value"]) or ""


def check_image(data: bytes, where: str) -> bytes:
    """``data`` if it decodes as an image (``ecg.images.decode_image``); else ``ValueError`` naming ``where``."""
    from ecg.images import decode_image

    decode_image(data, where, mode=None)
    return data


def _image_value(value) -> tuple[bytes | None, str | None]:
    """``(bytes, path)`` from a Parquet image cell: bytes, or a struct ``{"bytes": ..., "path": ...}``."""
    if value is None:
        return None, None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    if isinstance(value, dict):
        return value.get("bytes"), value.get("path")
    if isinstance(value, str):
        return None, value
    raise ValueError(f"image cell of type {type(value).__name__}")


def read_records(path: str) -> list[dict]:
    """The records of a JSON list or JSONL file; a JSONL line that is not JSON becomes
    ``{"id": "<file>:<line>", "_error": "bad JSON line: ..."}`` so a caller can count it or refuse it."""
    text = storage.read_text(path)
    stripped = text.lstrip()
    if stripped.startswith("["):
        return json.loads(text)
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                out.append({"id": f"{posixpath.basename(path)}:{lineno}", "_error": f"bad JSON line: {exc}"})
    return out


def _join(base: str, rel: str) -> str:
    if storage.is_s3(rel) or os.path.isabs(rel):
        return rel
    return storage.join(base, rel) if storage.is_s3(base) else os.path.join(base, rel)


def json_references(path: str) -> list[dict]:
    """References (no image bytes yet) for a JSON / JSONL file: ``id``, ``image_uri``, ``conversations``."""
    base = posixpath.dirname(path) if storage.is_s3(path) else os.path.dirname(os.path.abspath(path))
    refs = []
    for k, rec in enumerate(read_records(path)):
        rid = str(rec.get("id", f"{posixpath.basename(path)}#{k}"))
        image = rec.get("image") or rec.get("image_path") or ""
        if isinstance(image, list):  # ECGInstruct: a list of images; the first is the ECG
            image = image[0] if image else ""
        refs.append({"id": rid, "image_uri": _join(base, str(image)) if image else "",
                     "conversations": json.dumps(rec.get("conversations", [])), "error": rec.get("_error", "")})
    return refs


def ecgbench_batch(batch, *, task, splits=None, seed: int = 0, source: str = "ecgbench") -> pa.Table:
    """Load, check and convert ECGBench references or Parquet rows to sample rows.

    ``batch`` columns: ``id``, ``conversations`` (list or JSON) and either ``image_uri`` (a file to read) or
    ``image`` (bytes / struct). An unreadable image or a broken conversation is a failure row naming the id.
    """
    from ecgtasks import get_task

    task_ = get_task(task) if isinstance(task, str) else task
    splits = parse_splits(splits or {"test": 1.0})
    cols = _columns(batch)
    n = len(cols["id"])
    rows = []
    for i in range(n):
        rid = str(cols["id"][i])

        def make(i=i, rid=rid):
            if cols.get("error") and cols["error"][i]:
                raise ValueError(cols["error"][i])
            question, answer = conversation(cols["conversations"][i])
            data, where = None, f"record {rid!r}"
            if cols.get("image_uri") is not None:
                uri = cols["image_uri"][i]
                if not uri:
                    raise ValueError(f"record {rid!r}: no image")
                where = f"record {rid!r} image {uri}"
                try:
                    data = storage.read_bytes(uri)
                except (OSError, FileNotFoundError) as exc:
                    raise ValueError(f"{where}: cannot read ({exc})") from None
            else:
                data, path = _image_value(cols["image"][i])
                where = f"record {rid!r}" + (f" image {path}" if path else "")
            split = assign_split(rid, splits, seed)  # no patients in ECGBench: the record is the unit
            return sample_row(id=rid, task=task_.name, image=check_image(data, where), question=question,
                              answer=answer, labels=gold_labels(task_, answer), source=source,
                              split=split, meta={"split": split})

        rows.append(_guard(rid, make, task=task_.name, source=source))
    return to_table(rows)
