"""ECGBench / ECGInstruct JSON (a JSON array) or JSON Lines, read as a stream of records and reference chunks.

ECGInstruct's JSON is over a GB: nothing here holds more than one chunk of records. A JSON array is parsed
incrementally with ``ijson`` (the field's streaming JSON parser); JSON Lines are split line by line from
1 MiB reads. Local paths and ``s3://`` URIs are read through the same pyarrow filesystem. No Ray, no torch.

A reference is the cheap part of a record (no image bytes): ``id``, ``image`` (the relative path as
published), ``root`` (the dataset root it is relative to), ``conversations`` (JSON text), ``hint`` (the
file's name, for task inference) and, when the record is already known to be bad, ``error`` and
``error_kind``.

Example::

    for refs in reference_chunks("data/ECGInstruct.json", chunk=100):   # dict of columns, <= 100 rows each
        refs["id"][:2], refs["image"][:2]     # ["mimic-1-0", "code15-7-0"], ["images/a.png", "images/b.png"]
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterator

from ecg import storage
from ecg.samples import BAD_JSON, NO_IMAGE

READ_BYTES = 1 << 20  # bytes per read from the file (JSON Lines) and per ijson buffer
REFERENCE_COLUMNS = ("id", "image", "root", "conversations", "hint", "error", "error_kind")


class _Prefixed:
    """A binary stream whose first bytes were already read (to sniff the format) and are served again."""

    def __init__(self, prefix: bytes, stream):
        self.prefix, self.stream = prefix, stream

    def read(self, n: int = -1) -> bytes:
        if self.prefix:
            head, self.prefix = (self.prefix, b"") if n < 0 or n >= len(self.prefix) else \
                (self.prefix[:n], self.prefix[n:])
            return head if n < 0 or len(head) == n else head + self.stream.read(n - len(head))
        return self.stream.read(n)


def iter_records(stream, name: str) -> Iterator[dict]:
    """Records of a JSON array or JSON Lines binary ``stream`` (``name`` labels errors), one at a time.

    A JSON Lines line that is not a JSON object becomes ``{"id": "<name>:<line>", "_error": ...}``; the
    rest go on. A JSON array that breaks off yields one such error record (at the byte offset where
    parsing stopped) and ends: what follows cannot be located without a parser.
    Example: ``next(iter_records(io.BytesIO(b'[{"id": "a"}]'), "x.json")) == {"id": "a"}``.
    """
    head = b""
    while not head.strip():
        block = stream.read(4096)
        if not block:
            return
        head += block
    stream = _Prefixed(head, stream)
    if head.lstrip()[:1] == b"[":
        yield from _array_records(stream, name)
    else:
        yield from _line_records(stream, name)


def _array_records(stream, name: str) -> Iterator[dict]:
    import ijson

    k = 0
    try:
        for k, record in enumerate(ijson.items(stream, "item", use_float=True, buf_size=READ_BYTES)):
            yield record if isinstance(record, dict) else \
                {"id": f"{name}#{k}", "_error": f"bad JSON record: a {type(record).__name__}, not an object"}
    except ijson.JSONError as exc:
        yield {"id": f"{name}#{k + 1}", "_error": f"bad JSON after record {k}: {exc}; the rest of the file is unread"}


def _line_records(stream, name: str) -> Iterator[dict]:
    lineno, rest = 0, b""
    while True:
        block = stream.read(READ_BYTES)
        lines = (rest + block).split(b"\n")
        rest = lines.pop() if block else b""  # the last piece may be a line still being read
        for line in lines:
            lineno += 1
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"a {type(record).__name__}, not an object")
                yield record
            except ValueError as exc:  # json.JSONDecodeError is a ValueError
                yield {"id": f"{name}:{lineno}", "_error": f"bad JSON line {lineno}: {exc}"}
        if not block:
            return


def read_records(uri: str) -> list[dict]:
    """All records of a JSON array or JSON Lines file (local or ``s3://``), for small files such as a
    benchmark's references; bad lines become ``{"id": "<file>:<line>", "_error": ...}`` (:func:`iter_records`).
    Example: ``read_records("bench/code15-test.json")[0]["id"]``."""
    fs, path = storage.resolve(uri)
    with fs.open_input_stream(path) as stream:
        return list(iter_records(stream, posixpath.basename(str(uri).rstrip("/"))))


def reference(record: dict, k: int, *, name: str, root: str, hint: str = "") -> dict:
    """The reference of record ``k`` of file ``name``: id, first image path, conversations as JSON text.

    ``image`` may be a string or a list (ECGInstruct: the first image is the ECG). A record read as bad JSON
    keeps its error (``error_kind`` ``bad_json``); one with no image gets ``no_image``.
    Example: ``reference({"id": "a", "image": ["x.png"], "conversations": []}, 0, name="f.json", root="/d")``
    has ``image == "x.png"`` and ``root == "/d"``.
    """
    rid = str(record.get("id", f"{name}#{k}"))
    ref = {"id": rid, "image": "", "root": root, "conversations": "[]", "hint": hint, "error": "", "error_kind": ""}
    if "_error" in record:
        return {**ref, "error": f"{rid}: {record['_error']}", "error_kind": BAD_JSON}
    image = record.get("image", record.get("image_path"))
    if isinstance(image, list):
        image = image[0] if image else None
    try:
        ref["conversations"] = json.dumps(record.get("conversations"))
    except (TypeError, ValueError) as exc:
        ref["conversations"] = json.dumps(str(exc))  # not a list: the conversation check names it
    if not isinstance(image, str) or not image.strip():
        return {**ref, "error": f"record {rid!r}: no image", "error_kind": NO_IMAGE}
    return {**ref, "image": image}


def reference_chunks(uri: str, *, chunk: int = 100, file_hint: bool = True,
                     image_root: str | None = None) -> Iterator[dict[str, list]]:
    """References of the JSON / JSONL file ``uri`` in column chunks of at most ``chunk`` rows, streamed.

    ``file_hint``: pass the file's path on as each row's ``hint`` (ECGBench files are named after their
    task); ECGInstruct mixes tasks in one file, so its rows get none. Image paths are relative to
    ``image_root``, by default the file's folder.
    """
    name = posixpath.basename(str(uri).rstrip("/"))
    root = image_root or (posixpath.dirname(uri) if storage.is_s3(uri) else os.path.dirname(storage.absolute(uri)))
    fs, path = storage.resolve(uri)
    rows: list[dict] = []
    with fs.open_input_stream(path) as stream:
        for k, record in enumerate(iter_records(stream, name)):
            rows.append(reference(record, k, name=name, root=root, hint=str(uri) if file_hint else ""))
            if len(rows) == chunk:
                yield _to_columns(rows)
                rows = []
    if rows:
        yield _to_columns(rows)


def _to_columns(rows: list[dict]) -> dict[str, list]:
    return {c: [r[c] for r in rows] for c in REFERENCE_COLUMNS}


def reference_batches(batch, *, chunk: int = 100, file_hint: bool = True,
                      image_root: str | None = None) -> Iterator[dict[str, list]]:
    """A Ray Data generator stage: each row ``{"path": uri}`` of ``batch`` -> its reference chunks.

    Run with ``map_batches(batch_size=1)``: the JSON is parsed inside a Ray task, block by block, so the
    driver never reads it and Ray's streaming backpressure bounds how far the parser runs ahead.
    """
    for uri in list(batch["path"]):
        yield from reference_chunks(str(uri), chunk=chunk, file_hint=file_hint, image_root=image_root)
